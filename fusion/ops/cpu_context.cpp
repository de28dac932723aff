// Built with -fopenmp (fusion/CMakeLists.txt): LibTorch's CPU wheel parallelizes with OpenMP, and
// at::parallel_for is a header template that runs everything on the calling thread unless the
// file including it is compiled with OpenMP (_OPENMP defined).
#include "fusion/ops/cpu_context.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <climits>

#ifndef _OPENMP
#error "fusion/ops/cpu_context.cpp must be compiled with -fopenmp, or at::parallel_for is serial"
#endif

// LibTorch's x86-64 wheels link MKL into libtorch_cpu and export its BLAS and service functions.
// Weak references: where the BLAS is not MKL (or absent), both are null and the kernels keep their
// own tile GEMM. MKL's LP64 interface (32-bit sizes), as LibTorch calls it.
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
// mkl_service.h's C name behind its mkl_set_num_threads_local macro (the lower-case symbol is the
// Fortran interface, which takes a pointer).
int MKL_Set_Num_Threads_Local(int nt) __attribute__((weak));
}

namespace mmfl::fusion::ops {

namespace {

using kernels::cpu::Transpose;

bool fits_int(int64_t v) {
  return v >= 0 && v <= INT_MAX;
}

// kernels::cpu::Gemm through MKL on the calling thread. Row-major C = op(A) op(B) is column-major
// C^T = op(B)^T op(A)^T, so the operands swap and each keeps its own transpose flag. One thread
// (MKL_Set_Num_Threads_Local), or MKL would split a tile over its own threads, and the split (and
// with it the bits) would depend on the thread count.
void mkl_gemm(Transpose ta, Transpose tb, int64_t m, int64_t n, int64_t k, const float* a,
              int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {  // C = 0 (beta 0) or unchanged (beta 1); C is not read when beta is 0
    if (beta == 0.0f)
      for (int64_t i = 0; i < m; ++i)
        std::fill(c + i * ldc, c + i * ldc + n, 0.0f);
    return;
  }
  if (!(fits_int(m) && fits_int(n) && fits_int(k) && fits_int(lda) && fits_int(ldb) &&
        fits_int(ldc))) {
    kernels::cpu::sgemm(ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  const char op_b = tb == Transpose::kNo ? 'N' : 'T', op_a = ta == Transpose::kNo ? 'N' : 'T';
  const int M = static_cast<int>(n), N = static_cast<int>(m), K = static_cast<int>(k);
  const int LDB = static_cast<int>(ldb), LDA = static_cast<int>(lda), LDC = static_cast<int>(ldc);
  const float alpha = 1.0f;
  const int before = MKL_Set_Num_Threads_Local(1);
  sgemm_(&op_b, &op_a, &M, &N, &K, &alpha, b, &LDB, a, &LDA, &beta, c, &LDC);
  MKL_Set_Num_Threads_Local(before);
}

}  // namespace

kernels::cpu::Gemm library_gemm() {
  return sgemm_ != nullptr && MKL_Set_Num_Threads_Local != nullptr ? &mkl_gemm : nullptr;
}

kernels::cpu::Context cpu_context() {
  kernels::cpu::Context ctx;
  ctx.parallel_for = [](int64_t num_tasks, const kernels::cpu::TaskBody& body) {
    at::parallel_for(0, num_tasks, 1, [&](int64_t begin, int64_t end) { body(begin, end); });
  };
  ctx.gemm = library_gemm();
  return ctx;
}

}  // namespace mmfl::fusion::ops
