// The fast CPU kernels' threads come from LibTorch's intra-op pool (at::parallel_for), so a CPU
// run has one pool, sized by torch::set_num_threads / OMP_NUM_THREADS.
#pragma once

#include "mmfl/kernels/cpu.h"

namespace mmfl::fusion::ops {

// A cpu::Context whose parallel_for is at::parallel_for (grain 1: the kernels' tasks are already
// coarse, a tile row or a chunk).
kernels::cpu::Context cpu_context();

}  // namespace mmfl::fusion::ops
