// The fast CPU kernels' threads come from LibTorch's intra-op pool (at::parallel_for), so a CPU
// run has one pool, sized by torch::set_num_threads / OMP_NUM_THREADS.
#pragma once

#include <ATen/Parallel.h>

#include "mmfl/kernels/cpu.h"

namespace mmfl::fusion::ops {

inline kernels::cpu::Context cpu_context() {
  kernels::cpu::Context ctx;
  ctx.parallel_for = [](int64_t num_tasks, const kernels::cpu::TaskBody& body) {
    // Grain 1: the kernels' tasks are already coarse (a tile row, a chunk).
    at::parallel_for(0, num_tasks, 1, [&](int64_t begin, int64_t end) { body(begin, end); });
  };
  return ctx;
}

}  // namespace mmfl::fusion::ops
