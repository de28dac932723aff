// The fast CPU kernels' threads come from LibTorch's intra-op pool (at::parallel_for), so a CPU
// run has one pool, sized by torch::set_num_threads / OMP_NUM_THREADS; their library GEMM is
// LibTorch's BLAS (MKL) on one thread where the wheel has it.
#pragma once

#include "mmfl/kernels/cpu.h"

namespace mmfl::fusion::ops {

// MKL's sgemm on the calling thread as a kernels::cpu::Gemm, or null where LibTorch's BLAS is not
// MKL (the kernels then use their own tile GEMM).
kernels::cpu::Gemm library_gemm();

// A cpu::Context whose parallel_for is at::parallel_for (grain 1: the kernels' tasks are already
// coarse, a tile row or a chunk) and whose gemm is library_gemm().
kernels::cpu::Context cpu_context();

}  // namespace mmfl::fusion::ops
