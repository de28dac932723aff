// The tiled "rows x bank" logit pass: a block takes kTileRows rows of queries Q [rows, d] and
// walks a range of a feature bank G [cols, d] in tiles of kTileCols, holding each tile of logits
// Q G^T * inv_tau in registers, with an online log-sum-exp per row (row_lse_pass). The backward
// recomputes the same tiles, turns them into dL/dlogits through a policy and multiplies them by
// the bank (grad_rows_pass). InfoNCE (img against bank txt and back) and cross entropy against a
// feature bank (per-row targets; CreamFL's clients stacked as rows against one bank) are both
// thin kernels around these two passes.
#pragma once

#include <math.h>

#include <cstddef>
#include <cstdint>

#include "common.cuh"
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

using detail::Access;  // float4 or scalar loads of the feature rows (common.cuh)

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
                                            float (*dst)[kPadded], Access load) {
  const int t = static_cast<int>(threadIdx.x);
  if (load == Access::kVector4) {
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
                                           float inv_tau, Access load, SliceSmem& smem,
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

// ---- Forward: per-row log-sum-exp over a range of the bank --------------------------------------

// Target policies of row_lse_pass: `int64_t operator()(int64_t row) const` names the bank column
// whose logit the pass also returns for that row (a cross-entropy target), or -1 for none.
struct NoTarget {
  __device__ __forceinline__ int64_t operator()(int64_t) const { return -1; }
};

// Shared memory of row_lse_pass: the logit slices, then (reusing the bytes) every thread's running
// log-sum-exp and target logit of each of its rows, for the per-row combination. A row of
// partials is padded by one entry so that the 64 combining threads read from different banks.
struct RowPartial {
  float max, sum, picked;
};
union RowLseSmem {
  SliceSmem slice;
  RowPartial partial[kTileRows][kThreadsX + 1];
};

// The block's query rows [row0, row0 + kTileRows) against bank columns [col_begin, col_end).
// Thread r < kTileRows of the block ends with row (row0 + r)'s running log-sum-exp over the range
// in `run`, and in `picked` the logit at column target(row) if that lies in the range, otherwise
// 0. The other threads' outputs are meaningless, as are those of rows past `rows`. The kThreadsX
// partials of a row are combined through shared memory in a fixed order: one barrier, where
// shuffles would take eight exchanges per row. All threads of the block call it (it holds
// barriers).
template <typename Target>
__device__ __forceinline__ void row_lse_pass(const float* __restrict__ q,  // [rows, d]
                                             int64_t rows,
                                             const float* __restrict__ g,  // [>= col_end, d]
                                             int64_t col_begin, int64_t col_end, int64_t d,
                                             int64_t row0, float inv_tau, Access load,
                                             const Target& target, RowLseSmem& smem,
                                             RunningLse& run, float& picked) {
  const int tx = thread_col();
  const int ty = thread_row();
  // Targets relative to this thread's first column of the current tile (-1: none in the range);
  // 32-bit because a range fits in an int, which keeps the register count of the pass down.
  int want[kMicro];
  RunningLse mine[kMicro];
  float mine_picked[kMicro];
#pragma unroll
  for (int i = 0; i < kMicro; ++i) {
    const int64_t row = row0 + ty * kMicro + i;
    const int64_t t = row < rows ? target(row) : -1;
    want[i] = t >= col_begin && t < col_end ? static_cast<int>(t - col_begin) - tx * kMicro : -1;
    mine[i] = lse_empty();
    mine_picked[i] = 0.0f;
  }
  for (int64_t col0 = col_begin; col0 < col_end; col0 += kTileCols) {
    float s[kMicro][kMicro];
    logit_tile(q, rows, g, col_end, d, row0, col0, inv_tau, load, smem.slice, s);
    lse_fold_tile(s, col0 + tx * kMicro, col_end, mine);
    const int tile = static_cast<int>(col0 - col_begin);
#pragma unroll
    for (int i = 0; i < kMicro; ++i) {
#pragma unroll
      for (int j = 0; j < kMicro; ++j) {
        if (tile + j == want[i]) mine_picked[i] = s[i][j];
      }
    }
  }
  // logit_tile ended with a barrier, so the slice bytes are free.
#pragma unroll
  for (int i = 0; i < kMicro; ++i)
    smem.partial[ty * kMicro + i][tx] = RowPartial{mine[i].max, mine[i].sum, mine_picked[i]};
  __syncthreads();
  if (threadIdx.x < kTileRows) {
    run = lse_empty();
    picked = 0.0f;
    for (int x = 0; x < kThreadsX; ++x) {
      const RowPartial p = smem.partial[threadIdx.x][x];
      run = lse_merge(run, RunningLse{p.max, p.sum});
      picked += p.picked;  // at most one thread of a row holds the target: the sum is exact
    }
  }
}

// ---- Backward: dL/dlogits times the bank, the logit tiles recomputed ----------------------------

// Where a block accumulates its kTileRows x d gradient rows: in dynamic shared memory when they
// fit beside the static tiles with two blocks per SM (d <= 256), otherwise directly in its output
// rows, which the block alone owns (read-modify-write through L2).
enum class AccumSpace : int { kShared, kGlobal };
constexpr int64_t kMaxSharedAccumBytes = 64 * 1024;

inline AccumSpace choose_accum_space(int64_t d) {
  return int64_t{kTileRows} * d * 4 <= kMaxSharedAccumBytes ? AccumSpace::kShared
                                                            : AccumSpace::kGlobal;
}

// The dynamic shared memory a grad_rows_pass kernel launch needs.
inline size_t accum_shared_bytes(AccumSpace space, int64_t d) {
  return space == AccumSpace::kShared ? static_cast<size_t>(kTileRows * d) * sizeof(float) : 0;
}

// The logit slices, then (reusing the same bytes) dL/dlogits of the tile transposed [col][row]
// and a 64 x 64 chunk of the bank rows.
struct alignas(16) ProductSmem {
  float p[kTileCols][kPaddedRows];
  float g[kTileCols][kPaddedCols];
};
union GradSmem {
  SliceSmem slice;
  ProductSmem product;
};

// dst[kk][c] = bank[col0 + kk][dc0 + c] for kk, c < 64; zero outside [cols, d).
__device__ __forceinline__ void stage_bank_chunk(const float* __restrict__ bank_rows,  // [cols, d]
                                                 int64_t cols, int64_t d, int64_t col0, int64_t dc0,
                                                 float (*dst)[kPaddedCols], Access load) {
  const int t = static_cast<int>(threadIdx.x);
  if (load == Access::kVector4) {
    constexpr int kVecPerRow = kTileCols / 4;
#pragma unroll
    for (int i = 0; i < kTileCols * kVecPerRow / kThreads; ++i) {
      const int idx = t + i * kThreads;
      const int kk = idx / kVecPerRow;
      const int cq = idx % kVecPerRow;
      const int64_t row = col0 + kk;
      const int64_t c = dc0 + 4 * cq;
      float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (row < cols && c < d) v = __ldg(reinterpret_cast<const float4*>(bank_rows + row * d + c));
      *reinterpret_cast<float4*>(&dst[kk][4 * cq]) = v;
    }
  } else {
#pragma unroll 4
    for (int i = 0; i < kTileCols * kTileCols / kThreads; ++i) {
      const int idx = t + i * kThreads;
      const int kk = idx / kTileCols;
      const int c = idx % kTileCols;
      const int64_t row = col0 + kk;
      const int64_t col = dc0 + c;
      dst[kk][c] = row < cols && col < d ? __ldg(bank_rows + row * d + col) : 0.0f;
    }
  }
}

// out[r - row0] = inv_tau * sum_{c in [col_begin, col_end)} ds(r, c) g_c for the block's rows
// r in [row0, row0 + kTileRows) that are < rows: the logit tiles <q_r, g_c> * inv_tau are
// recomputed and the policy `Ds` turns each into dL/dlogit[r, c]:
//   typename Ds::Row, Ds::Col   what it needs per row (loaded once) and per column (per tile)
//   Row row(int64_t r) const, Col col(int64_t c) const     called for r < rows, c < col_end only
//   float operator()(const Row&, const Col&, int64_t r, int64_t c, float logit) const
// `out` points at the block's first row ([.., d], 16-byte alignment not required). Each thread
// owns fixed accumulator elements (rows ty*4 + i, columns dc0 + tx*4 + j of every 64-wide chunk of
// d): it alone zeroes, updates and writes them, so the accumulator needs no barrier. All threads
// of the block call it.
template <typename Ds>
__device__ __forceinline__ void grad_rows_pass(const float* __restrict__ q,  // [rows, d]
                                               int64_t rows,
                                               const float* __restrict__ g,  // [>= col_end, d]
                                               int64_t col_begin, int64_t col_end, int64_t d,
                                               int64_t row0, float inv_tau, const Ds& ds,
                                               Access load, AccumSpace space, GradSmem& smem,
                                               float* shared_accum,        // [64, d] if kShared
                                               float* __restrict__ out) {  // [rows - row0, d]
  const int tx = thread_col();
  const int ty = thread_row();
  const int rows_here = rows - row0 < kTileRows ? static_cast<int>(rows - row0) : kTileRows;
  float* accum = space == AccumSpace::kShared ? shared_accum : out;  // [rows_here, d]
  // float4 read-modify-write needs d % 4 == 0 (what kVector4 means) and an aligned base.
  const bool vec_accum = load == Access::kVector4 && (space == AccumSpace::kShared ||
                                                      reinterpret_cast<uintptr_t>(out) % 16 == 0);

  typename Ds::Row rs[kMicro] = {};
#pragma unroll
  for (int i = 0; i < kMicro; ++i) {
    const int r = ty * kMicro + i;
    if (r < rows_here) {
      rs[i] = ds.row(row0 + r);
      for (int64_t c = tx * kMicro; c < d; c += kTileCols) {
#pragma unroll
        for (int j = 0; j < kMicro; ++j) {
          if (c + j < d) accum[r * d + c + j] = 0.0f;
        }
      }
    }
  }

  for (int64_t col0 = col_begin; col0 < col_end; col0 += kTileCols) {
    float s[kMicro][kMicro];
    logit_tile(q, rows, g, col_end, d, row0, col0, inv_tau, load, smem.slice, s);
    // dL/dlogits of the tile into shared memory, transposed: p[c][r]. Rows or columns out of
    // range get 0 so that they add nothing to the product.
#pragma unroll
    for (int j = 0; j < kMicro; ++j) {
      const int64_t col = col0 + tx * kMicro + j;
      typename Ds::Col cs = {};
      if (col < col_end) cs = ds.col(col);
      float pv[kMicro];
#pragma unroll
      for (int i = 0; i < kMicro; ++i) {
        const int64_t row = row0 + ty * kMicro + i;
        pv[i] = row < rows && col < col_end ? ds(rs[i], cs, row, col, s[i][j]) : 0.0f;
      }
      *reinterpret_cast<float4*>(&smem.product.p[tx * kMicro + j][ty * kMicro]) =
          make_float4(pv[0], pv[1], pv[2], pv[3]);
    }
    // accum[rows, :] += dS[rows, tile] * bank[tile, :], 64 columns of d at a time.
    for (int64_t dc0 = 0; dc0 < d; dc0 += kTileCols) {
      stage_bank_chunk(g, col_end, d, col0, dc0, smem.product.g, load);
      __syncthreads();  // also orders the dS stores above before the first chunk's reads
      float o[kMicro][kMicro] = {};
#pragma unroll 8
      for (int kk = 0; kk < kTileCols; ++kk) {
        const float4 a = *reinterpret_cast<const float4*>(&smem.product.p[kk][ty * kMicro]);
        const float4 b = *reinterpret_cast<const float4*>(&smem.product.g[kk][tx * kMicro]);
        const float av[kMicro] = {a.x, a.y, a.z, a.w};
        const float bv[kMicro] = {b.x, b.y, b.z, b.w};
#pragma unroll
        for (int i = 0; i < kMicro; ++i) {
#pragma unroll
          for (int j = 0; j < kMicro; ++j)
            o[i][j] += av[i] * bv[j];
        }
      }
      const int64_t c = dc0 + tx * kMicro;
#pragma unroll
      for (int i = 0; i < kMicro; ++i) {
        const int r = ty * kMicro + i;
        if (r >= rows_here || c >= d) continue;
        float* dst = accum + r * d + c;
        if (vec_accum) {
          float4 v = *reinterpret_cast<float4*>(dst);
          v.x += o[i][0];
          v.y += o[i][1];
          v.z += o[i][2];
          v.w += o[i][3];
          *reinterpret_cast<float4*>(dst) = v;
        } else {
#pragma unroll
          for (int j = 0; j < kMicro; ++j) {
            if (c + j < d) dst[j] += o[i][j];
          }
        }
      }
      __syncthreads();  // the next chunk (or tile) overwrites the shared buffers
    }
  }

#pragma unroll
  for (int i = 0; i < kMicro; ++i) {
    const int r = ty * kMicro + i;
    if (r >= rows_here) continue;
    for (int64_t c = tx * kMicro; c < d; c += kTileCols) {
#pragma unroll
      for (int j = 0; j < kMicro; ++j) {
        if (c + j < d) out[r * d + c + j] = accum[r * d + c + j] * inv_tau;
      }
    }
  }
}

}  // namespace mmfl::kernels::MMFL_KERNEL_NS::bank
