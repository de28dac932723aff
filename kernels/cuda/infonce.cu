// Fused symmetric InfoNCE on the GPU, built from the rows x bank pass of bank_tile.cuh.
// Forward: per-row log-sum-exp of img against bank txt and of txt against bank img (two launches
// of one kernel), then a one-block loss reduction. Backward: the same tiles recomputed, turned
// into dL/dS and multiplied by the bank, once per side, so each output row is owned by one block
// (no atomics, deterministic); grad_tau from the identity sum_ij dS_ij S_ij = sum_i <img_i,
// grad_img_i>, which needs no extra pass over S.
#include <cstdint>

#include "bank_tile.cuh"
#include "mmfl/kernels/infonce.h"
#include "mmfl/kernels/launch.h"
#include "reduce.cuh"

namespace mmfl::kernels::MMFL_KERNEL_NS {
namespace {

using bank::kMicro;
using bank::kPaddedCols;
using bank::kTileCols;
using bank::kTileRows;
using bank::Load;

// One block reduces O(n*d) work (the loss's diagonal logits, grad_tau's dot products): small
// next to the O(n^2*d) passes, and a single block keeps the sum order fixed without a workspace.
constexpr int kReduceThreads = 512;

// The backward accumulates a block's [64, d] rows of the gradient in shared memory when that fits
// beside the static tiles with two blocks per SM (d <= 256); otherwise directly in the output
// rows, which the block owns (read-modify-write through L2).
enum class AccumSpace : int { kShared, kGlobal };
constexpr int64_t kMaxSharedAccumBytes = 64 * 1024;

// lse[r] = logsumexp_c <q_r, g_c> / tau for the rows of this block.
__global__ void __launch_bounds__(bank::kThreads)
    row_lse_kernel(const float* __restrict__ q,  // [rows, d]
                   int64_t rows,
                   const float* __restrict__ g,  // [cols, d]
                   int64_t cols, int64_t d,
                   const float* __restrict__ tau,  // [1]
                   float* __restrict__ lse,        // [rows]
                   Load load) {
  __shared__ bank::SliceSmem smem;
  const float inv_tau = 1.0f / *tau;
  const int tx = bank::thread_col();
  const int ty = bank::thread_row();
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTileRows;
  bank::RunningLse run[kMicro];
#pragma unroll
  for (int i = 0; i < kMicro; ++i)
    run[i] = bank::lse_empty();
  for (int64_t col0 = 0; col0 < cols; col0 += kTileCols) {
    float s[kMicro][kMicro];
    bank::logit_tile(q, rows, g, cols, d, row0, col0, inv_tau, load, smem, s);
    bank::lse_fold_tile(s, col0 + tx * kMicro, cols, run);
  }
#pragma unroll
  for (int i = 0; i < kMicro; ++i) {
    const bank::RunningLse r = bank::lse_reduce_row(run[i]);
    const int64_t row = row0 + ty * kMicro + i;
    if (tx == 0 && row < rows) lse[row] = r.max + logf(r.sum);
  }
}

// sum_r <a_r, b_r> over all rows, in double, returned to every thread of a one-block launch.
// Warp w takes rows w, w + warps, ...; its lanes split d (coalesced).
__device__ double row_dot_sum(const float* __restrict__ a,  // [n, d]
                              const float* __restrict__ b,  // [n, d]
                              int64_t n, int64_t d) {
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int warps = static_cast<int>(blockDim.x) / 32;
  double partial = 0;
  for (int64_t r = threadIdx.x / 32; r < n; r += warps) {
    float dot = 0;
    for (int64_t k = lane; k < d; k += 32)
      dot += a[r * d + k] * b[r * d + k];
    dot = detail::warp_sum(dot);
    if (lane == 0) partial += static_cast<double>(dot);
  }
  return detail::block_sum(partial);
}

// loss = 0.5/n * sum_i (lse_img_i + lse_txt_i - 2 S_ii), S_ii = <img_i, txt_i> / tau.
__global__ void __launch_bounds__(kReduceThreads)
    infonce_loss_kernel(const float* __restrict__ img,  // [n, d]
                        const float* __restrict__ txt,  // [n, d]
                        int64_t n, int64_t d,
                        const float* __restrict__ tau,      // [1]
                        const float* __restrict__ lse_img,  // [n]
                        const float* __restrict__ lse_txt,  // [n]
                        float* __restrict__ loss) {         // [1]
  double lse_total = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    lse_total += static_cast<double>(lse_img[i]) + static_cast<double>(lse_txt[i]);
  }
  lse_total = detail::block_sum(lse_total);
  const double diag_total = row_dot_sum(img, txt, n, d) / static_cast<double>(*tau);
  if (threadIdx.x == 0) {
    *loss = static_cast<float>(0.5 * (lse_total - 2.0 * diag_total) / static_cast<double>(n));
  }
}

// grad_tau = -(1/tau) sum_ij dS_ij S_ij = -(1/tau) sum_i <img_i, grad_img_i>, because
// grad_img_i = (1/tau) sum_j dS_ij txt_j.
__global__ void __launch_bounds__(kReduceThreads)
    infonce_grad_tau_kernel(const float* __restrict__ img,       // [n, d]
                            const float* __restrict__ grad_img,  // [n, d]
                            int64_t n, int64_t d,
                            const float* __restrict__ tau,   // [1]
                            float* __restrict__ grad_tau) {  // [1]
  const double total = row_dot_sum(img, grad_img, n, d);
  if (threadIdx.x == 0) *grad_tau = static_cast<float>(-total / static_cast<double>(*tau));
}

// Shared memory of the backward: the logit slices, then (reusing the same bytes) dL/dS of the tile
// transposed [col][row] and a 64 x 64 chunk of the bank rows.
struct alignas(16) ProductSmem {
  float p[kTileCols][bank::kPaddedRows];
  float g[kTileCols][kPaddedCols];
};
union GradSmem {
  bank::SliceSmem slice;
  ProductSmem product;
};

// g[kk][c] = bank[col0 + kk][dc0 + c] for kk, c < 64; zero outside [cols, d).
__device__ __forceinline__ void stage_bank_chunk(const float* __restrict__ bank_rows,  // [cols, d]
                                                 int64_t cols, int64_t d, int64_t col0, int64_t dc0,
                                                 float (*dst)[kPaddedCols], Load load) {
  const int t = static_cast<int>(threadIdx.x);
  if (load == Load::kVector4) {
    constexpr int kVecPerRow = kTileCols / 4;
#pragma unroll
    for (int i = 0; i < kTileCols * kVecPerRow / bank::kThreads; ++i) {
      const int idx = t + i * bank::kThreads;
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
    for (int i = 0; i < kTileCols * kTileCols / bank::kThreads; ++i) {
      const int idx = t + i * bank::kThreads;
      const int kk = idx / kTileCols;
      const int c = idx % kTileCols;
      const int64_t row = col0 + kk;
      const int64_t col = dc0 + c;
      dst[kk][c] = row < cols && col < d ? __ldg(bank_rows + row * d + col) : 0.0f;
    }
  }
}

// grad_q[r] = (1/tau) sum_c dS[r][c] g_c over the whole bank, with the symmetric InfoNCE
//   dS[r][c] = grad_loss/(2n) * (exp(S_rc - lse_q_r) + exp(S_rc - lse_g_c) - 2*[r == c]).
// Launched for (img, txt) -> grad_img and for (txt, img) -> grad_txt (dS^T has the same form with
// the two log-sum-exps swapped). Each thread owns fixed elements of the block's accumulator rows
// (rows ty*4+i, columns dc0 + tx*4 + j of every 64-wide chunk of d): it alone zeroes, updates and
// writes them, so the accumulator needs no barrier.
__global__ void __launch_bounds__(bank::kThreads)
    infonce_grad_kernel(const float* __restrict__ q,  // [n, d] rows whose gradient is made
                        const float* __restrict__ g,  // [n, d] the bank
                        int64_t n, int64_t d,
                        const float* __restrict__ tau,        // [1]
                        const float* __restrict__ lse_q,      // [n]
                        const float* __restrict__ lse_g,      // [n]
                        const float* __restrict__ grad_loss,  // [1]
                        float* __restrict__ grad_q,           // [n, d]
                        Load load, AccumSpace space) {
  __shared__ GradSmem smem;
  MMFL_DYNAMIC_SHARED(float, shared_accum);  // [64, d] when space == kShared
  const float inv_tau = 1.0f / *tau;
  const float coef = *grad_loss / (2.0f * static_cast<float>(n));
  const int tx = bank::thread_col();
  const int ty = bank::thread_row();
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTileRows;
  const int rows_here = n - row0 < kTileRows ? static_cast<int>(n - row0) : kTileRows;
  float* accum = space == AccumSpace::kShared ? shared_accum : grad_q + row0 * d;  // [rows_here, d]
  const bool vec_accum = load == Load::kVector4;  // d % 4 == 0: float4 read-modify-write

  float lq[kMicro];
#pragma unroll
  for (int i = 0; i < kMicro; ++i) {
    const int r = ty * kMicro + i;
    lq[i] = r < rows_here ? lse_q[row0 + r] : 0.0f;
    if (r < rows_here) {
      for (int64_t c = tx * kMicro; c < d; c += kTileCols) {
#pragma unroll
        for (int j = 0; j < kMicro; ++j) {
          if (c + j < d) accum[r * d + c + j] = 0.0f;
        }
      }
    }
  }

  for (int64_t col0 = 0; col0 < n; col0 += kTileCols) {
    float s[kMicro][kMicro];
    bank::logit_tile(q, n, g, n, d, row0, col0, inv_tau, load, smem.slice, s);
    float lg[kMicro];
#pragma unroll
    for (int j = 0; j < kMicro; ++j) {
      const int64_t col = col0 + tx * kMicro + j;
      lg[j] = col < n ? lse_g[col] : 0.0f;
    }
    // dS of the tile into shared memory, transposed: p[c][r]. Rows or columns out of range get 0
    // so that they add nothing to the product.
#pragma unroll
    for (int j = 0; j < kMicro; ++j) {
      const int64_t col = col0 + tx * kMicro + j;
      float pv[kMicro];
#pragma unroll
      for (int i = 0; i < kMicro; ++i) {
        const int64_t row = row0 + ty * kMicro + i;
        pv[i] = 0.0f;
        if (row < n && col < n) {
          pv[i] =
              coef * (expf(s[i][j] - lq[i]) + expf(s[i][j] - lg[j]) - (row == col ? 2.0f : 0.0f));
        }
      }
      *reinterpret_cast<float4*>(&smem.product.p[tx * kMicro + j][ty * kMicro]) =
          make_float4(pv[0], pv[1], pv[2], pv[3]);
    }
    // accum[rows, :] += dS[rows, tile] * bank[tile, :], 64 columns of d at a time.
    for (int64_t dc0 = 0; dc0 < d; dc0 += kTileCols) {
      stage_bank_chunk(g, n, d, col0, dc0, smem.product.g, load);
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
        if (c + j < d) grad_q[(row0 + r) * d + c + j] = accum[r * d + c + j] * inv_tau;
      }
    }
  }
}

void check_args(const char* fn, const float* img, const float* txt, int64_t n, int64_t d,
                const float* tau) {
  MMFL_CHECK(n >= 1, fn, ": n (number of pairs) must be >= 1, got ", n);
  MMFL_CHECK(d >= 1, fn, ": d (feature size) must be >= 1, got ", d);
  MMFL_CHECK(img != nullptr, fn, ": img is null");
  MMFL_CHECK(txt != nullptr, fn, ": txt is null");
  MMFL_CHECK(tau != nullptr, fn, ": tau is null");
}

unsigned row_blocks(int64_t n) {
  return static_cast<unsigned>((n + kTileRows - 1) / kTileRows);
}

}  // namespace

void infonce_forward(const float* img, const float* txt, int64_t n, int64_t d, const float* tau,
                     float* loss, float* lse_img, float* lse_txt, cudaStream_t stream) {
  check_args("infonce_forward", img, txt, n, d, tau);
  MMFL_CHECK(loss != nullptr && lse_img != nullptr && lse_txt != nullptr,
             "infonce_forward: loss, lse_img and lse_txt must not be null");
  const Load load = bank::choose_load(img, txt, d);
  MMFL_LAUNCH(row_lse_kernel, row_blocks(n), bank::kThreads, 0, stream)
  (img, n, txt, n, d, tau, lse_img, load);
  MMFL_CHECK_LAUNCH(row_lse_kernel);
  MMFL_LAUNCH(row_lse_kernel, row_blocks(n), bank::kThreads, 0, stream)
  (txt, n, img, n, d, tau, lse_txt, load);
  MMFL_CHECK_LAUNCH(row_lse_kernel);
  MMFL_LAUNCH(infonce_loss_kernel, 1, kReduceThreads, 0, stream)
  (img, txt, n, d, tau, lse_img, lse_txt, loss);
  MMFL_CHECK_LAUNCH(infonce_loss_kernel);
}

void infonce_backward(const float* img, const float* txt, int64_t n, int64_t d, const float* tau,
                      const float* lse_img, const float* lse_txt, const float* grad_loss,
                      float* grad_img, float* grad_txt, float* grad_tau, cudaStream_t stream) {
  check_args("infonce_backward", img, txt, n, d, tau);
  MMFL_CHECK(lse_img != nullptr && lse_txt != nullptr && grad_loss != nullptr,
             "infonce_backward: lse_img, lse_txt and grad_loss must not be null");
  MMFL_CHECK(grad_img != nullptr && grad_txt != nullptr && grad_tau != nullptr,
             "infonce_backward: grad_img, grad_txt and grad_tau must not be null");
  const Load load = bank::choose_load(img, txt, d);
  const int64_t accum_bytes = static_cast<int64_t>(kTileRows) * d * 4;
  const AccumSpace space =
      accum_bytes <= kMaxSharedAccumBytes ? AccumSpace::kShared : AccumSpace::kGlobal;
  const size_t smem = space == AccumSpace::kShared ? static_cast<size_t>(accum_bytes) : 0;
  // More than 48 KiB of dynamic shared memory needs an explicit opt-in.
  MMFL_CUDA_CHECK(cudaFuncSetAttribute(infonce_grad_kernel,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(kMaxSharedAccumBytes)));
  MMFL_LAUNCH(infonce_grad_kernel, row_blocks(n), bank::kThreads, smem, stream)
  (img, txt, n, d, tau, lse_img, lse_txt, grad_loss, grad_img, load, space);
  MMFL_CHECK_LAUNCH(infonce_grad_kernel);
  MMFL_LAUNCH(infonce_grad_kernel, row_blocks(n), bank::kThreads, smem, stream)
  (txt, img, n, d, tau, lse_txt, lse_img, grad_loss, grad_txt, load, space);
  MMFL_CHECK_LAUNCH(infonce_grad_kernel);
  MMFL_LAUNCH(infonce_grad_tau_kernel, 1, kReduceThreads, 0, stream)
  (img, grad_img, n, d, tau, grad_tau);
  MMFL_CHECK_LAUNCH(infonce_grad_tau_kernel);
}

}  // namespace mmfl::kernels::MMFL_KERNEL_NS
