// Built with -fopenmp (fusion/CMakeLists.txt): LibTorch's CPU wheel parallelizes with OpenMP, and
// at::parallel_for is a header template that runs everything on the calling thread unless the
// file including it is compiled with OpenMP (_OPENMP defined).
#include "fusion/ops/cpu_context.h"

#include <ATen/Parallel.h>

#ifndef _OPENMP
#error "fusion/ops/cpu_context.cpp must be compiled with -fopenmp, or at::parallel_for is serial"
#endif

namespace mmfl::fusion::ops {

kernels::cpu::Context cpu_context() {
  kernels::cpu::Context ctx;
  ctx.parallel_for = [](int64_t num_tasks, const kernels::cpu::TaskBody& body) {
    at::parallel_for(0, num_tasks, 1, [&](int64_t begin, int64_t end) { body(begin, end); });
  };
  return ctx;
}

}  // namespace mmfl::fusion::ops
