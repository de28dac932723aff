// The tiled "rows x bank" logit pass: a block takes kTileRows rows of queries Q [rows, d] and
// walks a range of a feature bank G [cols, d] in tiles of kTileCols, holding each tile of logits
// Q G^T * inv_tau in registers, with an online log-sum-exp per row (row_lse_pass). The backward
// recomputes the same tiles, turns them into dL/dlogits through a policy and multiplies them by
// the bank (grad_rows_pass). InfoNCE (img against bank txt and back) and cross entropy against a
// feature bank (per-row targets; CreamFL's clients stacked as rows against one bank) are both
// thin kernels around these two passes.
#pragma once

#include <cuda_bf16.h>
#include <math.h>
#include <mma.h>  // nvcuda::wmma (under the SIMT emulator: mmfl/simt/wmma.h, through the shim)

#include <cstddef>
#include <cstdint>

#include "common.cuh"
#include "mmfl/kernels/common.h"
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

// ---- Tensor cores (Precision::kTf32, kBf16)
// ------------------------------------------------------ The tensor-core paths keep the tiling, the
// staging and the log-sum-exp of the SIMT path and replace its two products (the logit tile,
// dL/dlogits x bank) with nvcuda::wmma: the block's 8 warps each own a 16 x 32 strip of the 64 x 64
// tile (two 16 x 16 fp32 accumulator fragments), and the finished tile goes through shared memory
// to the SIMT path's 4 x 4 register blocks, so everything after the product is shared code. tf32
// loads its fragments straight from the staged fp32 slices (rounded with __float_to_tf32); bf16
// converts 16-deep slices to a bf16 copy first. wmma wants 256-bit aligned fragment pointers and
// leading dimensions of whole 16-byte units: the padded rows (68 floats, 72 bf16) give both for
// every fragment offset used below.
namespace wmma = nvcuda::wmma;

constexpr int kBf16Depth = 16;          // one m16n16k16 step
constexpr int kBf16Ld = kTileRows + 8;  // 72 bf16 = 144 bytes a row
constexpr int kWarps = kThreads / 32;   // 8: a 4 x 2 grid of 16 x 32 strips
static_assert(kTileRows == 64 && kTileCols == 64 && kWarps == 8,
              "the tensor-core paths tile 64 x 64 with 8 warps");

struct alignas(32) Bf16Slice {
  __nv_bfloat16 a[kBf16Depth][kBf16Ld];  // a[k][r] = A(r, k): a column-major A
  __nv_bfloat16 b[kBf16Depth][kBf16Ld];  // b[k][c] = B(k, c): a row-major B
};

template <Precision P>
struct TensorCore;
template <>
struct TensorCore<Precision::kTf32> {
  static constexpr int kK = 8;
  using Operand = wmma::precision::tf32;
};
template <>
struct TensorCore<Precision::kBf16> {
  static constexpr int kK = 16;
  using Operand = __nv_bfloat16;
};
template <Precision P>
using Accumulator = wmma::fragment<wmma::accumulator, 16, 16, TensorCore<P>::kK, float>;

// The calling warp's strip of the tile: rows strip_row()..+16, columns strip_col()..+32.
__device__ __forceinline__ int strip_row() {
  return (static_cast<int>(threadIdx.x) / 32 / 2) * 16;
}
__device__ __forceinline__ int strip_col() {
  return (static_cast<int>(threadIdx.x) / 32 % 2) * 32;
}

// acc += A B over `depth` (a multiple of 16) for the calling warp's strip, where A [64, depth] is
// stored transposed (a_t[k][r], row stride lda) and B [depth, 64] as b[k][c] (row stride ldb), in
// shared memory. All threads of the block call it: the bf16 path converts through `scratch` with
// barriers; the tf32 path has none.
template <Precision P>
__device__ __forceinline__ void mma_strip(const float* a_t, int lda, const float* b, int ldb,
                                          int depth, Bf16Slice& scratch, Accumulator<P> (&acc)[2]) {
  using Tc = TensorCore<P>;
  const int wr = strip_row(), wc = strip_col();
  if constexpr (P == Precision::kTf32) {
    for (int k = 0; k < depth; k += Tc::kK) {
      wmma::fragment<wmma::matrix_a, 16, 16, Tc::kK, typename Tc::Operand, wmma::col_major> fa;
      wmma::load_matrix_sync(fa, a_t + k * lda + wr, lda);
#pragma unroll
      for (int e = 0; e < fa.num_elements; ++e)
        fa.x[e] = wmma::__float_to_tf32(fa.x[e]);
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        wmma::fragment<wmma::matrix_b, 16, 16, Tc::kK, typename Tc::Operand, wmma::row_major> fb;
        wmma::load_matrix_sync(fb, b + k * ldb + wc + 16 * j, ldb);
#pragma unroll
        for (int e = 0; e < fb.num_elements; ++e)
          fb.x[e] = wmma::__float_to_tf32(fb.x[e]);
        wmma::mma_sync(acc[j], fa, fb, acc[j]);
      }
    }
  } else {
    const int t = static_cast<int>(threadIdx.x);
    for (int k0 = 0; k0 < depth; k0 += kBf16Depth) {
      // 16 x 64 of each operand, 4 elements a thread each.
#pragma unroll
      for (int i = 0; i < kBf16Depth * kTileRows / kThreads; ++i) {
        const int idx = t + i * kThreads;
        const int k = idx / kTileRows, c = idx % kTileRows;
        scratch.a[k][c] = __float2bfloat16_rn(a_t[(k0 + k) * lda + c]);
        scratch.b[k][c] = __float2bfloat16_rn(b[(k0 + k) * ldb + c]);
      }
      __syncthreads();
      wmma::fragment<wmma::matrix_a, 16, 16, Tc::kK, typename Tc::Operand, wmma::col_major> fa;
      wmma::load_matrix_sync(fa, &scratch.a[0][wr], kBf16Ld);
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        wmma::fragment<wmma::matrix_b, 16, 16, Tc::kK, typename Tc::Operand, wmma::row_major> fb;
        wmma::load_matrix_sync(fb, &scratch.b[0][wc + 16 * j], kBf16Ld);
        wmma::mma_sync(acc[j], fa, fb, acc[j]);
      }
      __syncthreads();  // the next step overwrites the scratch
    }
  }
}

// The staged fp32 slices of both operands, transposed ([k][row]) so that a thread reads the 4 rows
// (or columns) of its register block as one float4 (hence the 16-byte alignment).
struct alignas(32) SliceOperands {
  float q[kTileDepth][kPaddedRows];
  float g[kTileDepth][kPaddedCols];
};
// One kTileDepth-wide slice of d for both operands; the tensor-core paths reuse its bytes for the
// finished logit tile and convert through `bf16`.
struct alignas(32) SliceSmem {
  union {
    SliceOperands op;
    float tile[kTileRows][kPaddedCols];
  };
  Bf16Slice bf16;
};
static_assert(sizeof(SliceOperands) == sizeof(float[kTileRows][kPaddedCols]),
              "the logit tile reuses exactly the slice bytes");

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

// The tensor-core logit tile (see logit_tile): the strips accumulate over all of d in fp32
// fragments, then pass through smem.tile into every thread's 4 x 4 block.
template <Precision P>
__device__ __forceinline__ void logit_tile_tc(const float* __restrict__ q,  // [rows, d]
                                              int64_t rows,
                                              const float* __restrict__ g,  // [cols, d]
                                              int64_t cols, int64_t d, int64_t row0, int64_t col0,
                                              float inv_tau, Access load, SliceSmem& smem,
                                              float (&s)[kMicro][kMicro]) {
  Accumulator<P> acc[2];
  wmma::fill_fragment(acc[0], 0.0f);
  wmma::fill_fragment(acc[1], 0.0f);
  for (int64_t k0 = 0; k0 < d; k0 += kTileDepth) {
    stage_slice<kPaddedRows>(q, rows, d, row0, k0, smem.op.q, load);
    stage_slice<kPaddedCols>(g, cols, d, col0, k0, smem.op.g, load);
    __syncthreads();
    mma_strip<P>(&smem.op.q[0][0], kPaddedRows, &smem.op.g[0][0], kPaddedCols, kTileDepth,
                 smem.bf16, acc);
    __syncthreads();  // every warp is done with the slices
  }
  const int wr = strip_row(), wc = strip_col();
  wmma::store_matrix_sync(&smem.tile[wr][wc], acc[0], kPaddedCols, wmma::mem_row_major);
  wmma::store_matrix_sync(&smem.tile[wr][wc + 16], acc[1], kPaddedCols, wmma::mem_row_major);
  __syncthreads();
  const int tx = thread_col();
  const int ty = thread_row();
#pragma unroll
  for (int i = 0; i < kMicro; ++i) {
    const float4 v = *reinterpret_cast<const float4*>(&smem.tile[ty * kMicro + i][tx * kMicro]);
    s[i][0] = v.x * inv_tau;
    s[i][1] = v.y * inv_tau;
    s[i][2] = v.z * inv_tau;
    s[i][3] = v.w * inv_tau;
  }
  __syncthreads();  // callers reuse smem right away
}

// s[i][j] = inv_tau * <q[row0 + ty*4 + i], g[col0 + tx*4 + j]>; rows or columns out of range give
// 0 (callers mask them). All threads of the block call it; it ends with a barrier, so `smem` may
// be reused right after. `precision` is uniform over the grid.
__device__ __forceinline__ void logit_tile(const float* __restrict__ q,  // [rows, d]
                                           int64_t rows,
                                           const float* __restrict__ g,  // [cols, d]
                                           int64_t cols, int64_t d, int64_t row0, int64_t col0,
                                           float inv_tau, Access load, Precision precision,
                                           SliceSmem& smem, float (&s)[kMicro][kMicro]) {
  if (precision == Precision::kTf32) {
    logit_tile_tc<Precision::kTf32>(q, rows, g, cols, d, row0, col0, inv_tau, load, smem, s);
    return;
  }
  if (precision == Precision::kBf16) {
    logit_tile_tc<Precision::kBf16>(q, rows, g, cols, d, row0, col0, inv_tau, load, smem, s);
    return;
  }
  const int tx = thread_col();
  const int ty = thread_row();
#pragma unroll
  for (int i = 0; i < kMicro; ++i) {
#pragma unroll
    for (int j = 0; j < kMicro; ++j)
      s[i][j] = 0.0f;
  }
  for (int64_t k0 = 0; k0 < d; k0 += kTileDepth) {
    stage_slice<kPaddedRows>(q, rows, d, row0, k0, smem.op.q, load);
    stage_slice<kPaddedCols>(g, cols, d, col0, k0, smem.op.g, load);
    __syncthreads();
#pragma unroll 8
    for (int k = 0; k < kTileDepth; ++k) {
      const float4 a = *reinterpret_cast<const float4*>(&smem.op.q[k][ty * kMicro]);
      const float4 b = *reinterpret_cast<const float4*>(&smem.op.g[k][tx * kMicro]);
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
                                             Precision precision, const Target& target,
                                             RowLseSmem& smem, RunningLse& run, float& picked) {
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
    logit_tile(q, rows, g, col_end, d, row0, col0, inv_tau, load, precision, smem.slice, s);
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
// and a 64 x 64 chunk of the bank rows; the tensor-core paths then reuse `g` for the product and
// convert through `bf16`.
struct alignas(32) ProductSmem {
  float p[kTileCols][kPaddedRows];
  float g[kTileCols][kPaddedCols];
  Bf16Slice bf16;
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

// o = this thread's 4 x 4 block of p^T g (dL/dlogits [64 rows, 64 cols] x bank chunk [64, 64]) on
// tensor cores; `smem.g` holds the product afterwards. All threads of the block call it.
template <Precision P>
__device__ __forceinline__ void product_tc(ProductSmem& smem, float (&o)[kMicro][kMicro]) {
  Accumulator<P> acc[2];
  wmma::fill_fragment(acc[0], 0.0f);
  wmma::fill_fragment(acc[1], 0.0f);
  mma_strip<P>(&smem.p[0][0], kPaddedRows, &smem.g[0][0], kPaddedCols, kTileCols, smem.bf16, acc);
  __syncthreads();  // every warp is done reading g
  const int wr = strip_row(), wc = strip_col();
  wmma::store_matrix_sync(&smem.g[wr][wc], acc[0], kPaddedCols, wmma::mem_row_major);
  wmma::store_matrix_sync(&smem.g[wr][wc + 16], acc[1], kPaddedCols, wmma::mem_row_major);
  __syncthreads();
  const int tx = thread_col();
  const int ty = thread_row();
#pragma unroll
  for (int i = 0; i < kMicro; ++i) {
    const float4 v = *reinterpret_cast<const float4*>(&smem.g[ty * kMicro + i][tx * kMicro]);
    o[i][0] = v.x;
    o[i][1] = v.y;
    o[i][2] = v.z;
    o[i][3] = v.w;
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
                                               Access load, Precision precision, AccumSpace space,
                                               GradSmem& smem,
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
    logit_tile(q, rows, g, col_end, d, row0, col0, inv_tau, load, precision, smem.slice, s);
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
      if (precision == Precision::kTf32) {
        product_tc<Precision::kTf32>(smem.product, o);
      } else if (precision == Precision::kBf16) {
        product_tc<Precision::kBf16>(smem.product, o);
      } else {
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
