// The tiled "rows x bank" logit pass: a block takes kTileRows rows of queries Q [rows, d] and
// walks a feature bank G [cols, d] in tiles of kTileCols, holding each tile of logits
// Q G^T * inv_tau in registers, with an online log-sum-exp per row. The InfoNCE forward runs it
// for the rows (img against bank txt) and the columns (txt against bank img), its backward
// recomputes the same tiles, and cross entropy of queries against a feature bank (per-row targets,
// several clients' queries stacked as rows against one bank) is the same pass.
#pragma once

#include <math.h>

#include <cstdint>

#include "mmfl/kernels/launch.h"

namespace mmfl::kernels::MMFL_KERNEL_NS::bank {

// A 64 x 64 logit tile per block of 256 threads, each thread a 4 x 4 register block (rows
// ty*4.., columns tx*4..): 16 FMAs per two float4 shared-memory loads. d is staged through shared
// memory 32 at a time (17 KiB), which leaves room for several blocks per SM.
constexpr int kTileRows = 64;
constexpr int kTileCols = 64;
constexpr int kTileDepth = 32;
constexpr int kThreadsX = 16;  // threads along bank columns
constexpr int kThreadsY = 16;  // threads along rows
constexpr int kThreads = kThreadsX * kThreadsY;
constexpr int kMicro = 4;  // rows (and columns) per thread
static_assert(kTileRows == kThreadsY * kMicro && kTileCols == kThreadsX * kMicro,
              "the tile is the thread grid times the register block");
// Rows of the transposed staging buffers are padded by 4 floats: keeps float4 alignment and
// spreads the transposing stores over more banks (4-way instead of 8- to 32-way conflicts).
constexpr int kPaddedRows = kTileRows + 4;
constexpr int kPaddedCols = kTileCols + 4;

// float4 global loads need d % 4 == 0 and 16-byte aligned bases; otherwise scalar loads.
enum class Load : int { kVector4, kScalar };

inline Load choose_load(const float* a, const float* b, int64_t d) {
  const bool aligned =
      reinterpret_cast<uintptr_t>(a) % 16 == 0 && reinterpret_cast<uintptr_t>(b) % 16 == 0;
  return aligned && d % 4 == 0 ? Load::kVector4 : Load::kScalar;
}

// One kTileDepth-wide slice of d for both operands, transposed ([k][row]) so that a thread reads
// the 4 rows (or columns) of its register block as one float4 (hence the 16-byte alignment).
struct alignas(16) SliceSmem {
  float q[kTileDepth][kPaddedRows];
  float g[kTileDepth][kPaddedCols];
};

__device__ __forceinline__ int thread_col() {
  return static_cast<int>(threadIdx.x) % kThreadsX;
}
__device__ __forceinline__ int thread_row() {
  return static_cast<int>(threadIdx.x) / kThreadsX;
}

// dst[k][r] = src[row0 + r][k0 + k] for r < 64, k < 32; zero outside [rows, d). Called by all
// kThreads threads of a one-dimensional block.
template <int kPadded>
__device__ __forceinline__ void stage_slice(const float* __restrict__ src,  // [rows, d]
                                            int64_t rows, int64_t d, int64_t row0, int64_t k0,
                                            float (*dst)[kPadded], Load load) {
  const int t = static_cast<int>(threadIdx.x);
  if (load == Load::kVector4) {
    // 64 rows x 8 float4: a warp reads 4 rows x 128 contiguous bytes.
    constexpr int kVecPerRow = kTileDepth / 4;
#pragma unroll
    for (int i = 0; i < kTileRows * kVecPerRow / kThreads; ++i) {
      const int idx = t + i * kThreads;
      const int r = idx / kVecPerRow;
      const int kq = idx % kVecPerRow;
      const int64_t row = row0 + r;
      const int64_t k = k0 + 4 * kq;
      float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (row < rows && k < d) v = __ldg(reinterpret_cast<const float4*>(src + row * d + k));
      dst[4 * kq + 0][r] = v.x;
      dst[4 * kq + 1][r] = v.y;
      dst[4 * kq + 2][r] = v.z;
      dst[4 * kq + 3][r] = v.w;
    }
  } else {
    // 64 rows x 32 floats: a warp reads 32 consecutive floats of one row.
#pragma unroll
    for (int i = 0; i < kTileRows * kTileDepth / kThreads; ++i) {
      const int idx = t + i * kThreads;
      const int r = idx / kTileDepth;
      const int kk = idx % kTileDepth;
      const int64_t row = row0 + r;
      const int64_t k = k0 + kk;
      dst[kk][r] = row < rows && k < d ? __ldg(src + row * d + k) : 0.0f;
    }
  }
}

// s[i][j] = inv_tau * <q[row0 + ty*4 + i], g[col0 + tx*4 + j]>; rows or columns out of range give
// 0 (callers mask them). All threads of the block call it; it ends with a barrier, so `smem` may
// be reused right after.
__device__ __forceinline__ void logit_tile(const float* __restrict__ q,  // [rows, d]
                                           int64_t rows,
                                           const float* __restrict__ g,  // [cols, d]
                                           int64_t cols, int64_t d, int64_t row0, int64_t col0,
                                           float inv_tau, Load load, SliceSmem& smem,
                                           float (&s)[kMicro][kMicro]) {
  const int tx = thread_col();
  const int ty = thread_row();
#pragma unroll
  for (int i = 0; i < kMicro; ++i) {
#pragma unroll
    for (int j = 0; j < kMicro; ++j)
      s[i][j] = 0.0f;
  }
  for (int64_t k0 = 0; k0 < d; k0 += kTileDepth) {
    stage_slice<kPaddedRows>(q, rows, d, row0, k0, smem.q, load);
    stage_slice<kPaddedCols>(g, cols, d, col0, k0, smem.g, load);
    __syncthreads();
#pragma unroll 8
    for (int k = 0; k < kTileDepth; ++k) {
      const float4 a = *reinterpret_cast<const float4*>(&smem.q[k][ty * kMicro]);
      const float4 b = *reinterpret_cast<const float4*>(&smem.g[k][tx * kMicro]);
      const float av[kMicro] = {a.x, a.y, a.z, a.w};
      const float bv[kMicro] = {b.x, b.y, b.z, b.w};
#pragma unroll
      for (int i = 0; i < kMicro; ++i) {
#pragma unroll
        for (int j = 0; j < kMicro; ++j)
          s[i][j] += av[i] * bv[j];
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < kMicro; ++i) {
#pragma unroll
    for (int j = 0; j < kMicro; ++j)
      s[i][j] *= inv_tau;
  }
}

// Online log-sum-exp: sum holds sum exp(x - max) over the values folded in; max = -inf and sum
// = 0 for none. Finite inputs never produce exp(-inf - -inf).
struct RunningLse {
  float max;
  float sum;
};

__device__ __forceinline__ RunningLse lse_empty() {
  return RunningLse{-INFINITY, 0.0f};
}

__device__ __forceinline__ RunningLse lse_merge(RunningLse a, RunningLse b) {
  if (b.max == -INFINITY) return a;
  if (a.max == -INFINITY) return b;
  const float m = fmaxf(a.max, b.max);
  return RunningLse{m, a.sum * expf(a.max - m) + b.sum * expf(b.max - m)};
}

// Folds the valid columns (global index < cols) of this thread's part of a logit tile into the
// running log-sum-exp of each of its rows. One rescale per row and tile, not per value.
__device__ __forceinline__ void lse_fold_tile(const float (&s)[kMicro][kMicro],
                                              int64_t first_col,  // col0 + tx*4
                                              int64_t cols, RunningLse (&run)[kMicro]) {
#pragma unroll
  for (int i = 0; i < kMicro; ++i) {
    float m = -INFINITY;
#pragma unroll
    for (int j = 0; j < kMicro; ++j) {
      if (first_col + j < cols) m = fmaxf(m, s[i][j]);
    }
    if (m == -INFINITY) continue;  // no valid column here
    const float new_max = fmaxf(run[i].max, m);
    float sum = run[i].sum * expf(run[i].max - new_max);
#pragma unroll
    for (int j = 0; j < kMicro; ++j) {
      if (first_col + j < cols) sum += expf(s[i][j] - new_max);
    }
    run[i] = RunningLse{new_max, sum};
  }
}

// Combines the running log-sum-exp of the kThreadsX threads that share a row (16 consecutive
// lanes); all 32 lanes call it and all lanes of a row end with the same bits.
__device__ __forceinline__ RunningLse lse_reduce_row(RunningLse r) {
#pragma unroll
  for (int offset = kThreadsX / 2; offset > 0; offset /= 2) {
    const RunningLse other{__shfl_xor_sync(0xffffffffu, r.max, offset),
                           __shfl_xor_sync(0xffffffffu, r.sum, offset)};
    r = lse_merge(r, other);
  }
  return r;
}

}  // namespace mmfl::kernels::MMFL_KERNEL_NS::bank
