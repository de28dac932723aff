// What the fast CPU path (namespace mmfl::kernels::cpu) needs from its caller: a way to run tasks
// on threads (the LibTorch adapter supplies one from LibTorch's pool, so there is no second pool),
// and the single-precision GEMM on tiles that every GEMM-shaped op is built from.
#pragma once

#include <cstdint>
#include <functional>

namespace mmfl::kernels::cpu {

// Runs body(begin, end) over sub-ranges covering [0, num_tasks) exactly once, on any threads and in
// any order, and returns when all have run. An empty ParallelFor runs everything on the caller.
// The ops split their work into tasks by the problem's shape alone and give every output one
// owning task, so their results are bit-identical whatever the number of threads.
using TaskBody = std::function<void(int64_t begin, int64_t end)>;
using ParallelFor = std::function<void(int64_t num_tasks, const TaskBody& body)>;

enum class Transpose { kNo, kYes };

// A row-major single-precision GEMM with sgemm's signature and contract (below), which must run on
// the calling thread only. The caller may supply a library's (the LibTorch adapter passes its BLAS
// pinned to one thread) for the ops whose GEMMs are plain products of large tiles (the MoE experts,
// the multi-adapter LoRA products); they call it once per tile from inside their tasks, so results
// stay bit-identical for any number of threads. Null: the tile GEMM below.
using Gemm = void (*)(Transpose trans_a, Transpose trans_b, int64_t m, int64_t n, int64_t k,
                      const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
                      float* c, int64_t ldc);

struct Context {
  ParallelFor parallel_for;  // empty: serial
  Gemm gemm = nullptr;       // null: sgemm
};

// C = op(A) op(B) + beta C for row-major matrices, beta 0 or 1 (0: C is not read, so it may hold
// NaN). op(A) is [m, k]: A itself ([m, k], row stride lda) or A^T (A is [k, m], row stride lda);
// likewise op(B) is [k, n]. Single-threaded: the ops call it from inside their tasks. Register
// blocked and vectorized for the best instruction set this CPU has (AVX-512, AVX2 + FMA, or the
// x86-64 baseline), chosen once at run time; the same machine always gets the same bits.
void sgemm(Transpose trans_a, Transpose trans_b, int64_t m, int64_t n, int64_t k, const float* a,
           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// ctx.gemm when the caller supplied one, else sgemm.
inline void gemm(const Context& ctx, Transpose trans_a, Transpose trans_b, int64_t m, int64_t n,
                 int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
                 float* c, int64_t ldc) {
  (ctx.gemm != nullptr ? ctx.gemm : sgemm)(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc);
}

// The instruction set sgemm and the vectorized loops run with: "avx512", "avx2" or "baseline".
const char* isa_name();

}  // namespace mmfl::kernels::cpu
