// Fused symmetric InfoNCE on the GPU, built from the rows x bank passes of bank_tile.cuh.
// Forward: per-row log-sum-exp of img against bank txt and of txt against bank img (two launches
// of one kernel), then a one-block loss reduction. Backward: the same tiles recomputed, turned
// into dL/dS and multiplied by the bank, once per side, so each output row is owned by one block
// (no atomics, deterministic); grad_tau from the identity sum_ij dS_ij S_ij = sum_i <img_i,
// grad_img_i>, which needs no extra pass over S.
#include <cstdint>

#include "bank_tile.cuh"
#include "common.cuh"
#include "mmfl/kernels/infonce.h"
#include "mmfl/kernels/launch.h"

namespace mmfl::kernels::MMFL_KERNEL_NS {
namespace {

using bank::AccumSpace;
using bank::kTileRows;
using detail::Access;

// One block reduces O(n*d) work (the loss's diagonal logits, grad_tau's dot products): small
// next to the O(n^2*d) passes, and a single block keeps the sum order fixed without a workspace.
constexpr int kReduceThreads = 512;

// lse[r] = logsumexp_c <q_r, g_c> / tau for the rows of this block.
template <Precision P>
__global__ void __launch_bounds__(bank::kThreads)
    row_lse_kernel(const float* __restrict__ q,  // [rows, d]
                   int64_t rows,
                   const float* __restrict__ g,  // [cols, d]
                   int64_t cols, int64_t d,
                   const float* __restrict__ tau,  // [1]
                   float* __restrict__ lse,        // [rows]
                   Access load) {
  __shared__ bank::RowLseSmem smem;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTileRows;
  bank::RunningLse run;
  float unused;
  bank::row_lse_pass(q, rows, g, 0, cols, d, row0, 1.0f / *tau, load, P, bank::NoTarget{}, smem,
                     run, unused);
  const int64_t row = row0 + threadIdx.x;
  if (threadIdx.x < kTileRows && row < rows) lse[row] = run.max + logf(run.sum);
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

// dL/dS[r][c] of the symmetric InfoNCE for the rows' side:
//   dS[r][c] = grad_loss/(2n) * (exp(S_rc - lse_q_r) + exp(S_rc - lse_g_c) - 2*[r == c]).
struct InfonceDs {
  const float* lse_q;  // [n]
  const float* lse_g;  // [n]
  float coef;          // grad_loss / (2n)
  struct Row {
    float lse;
  };
  struct Col {
    float lse;
  };
  __device__ __forceinline__ Row row(int64_t r) const { return Row{lse_q[r]}; }
  __device__ __forceinline__ Col col(int64_t c) const { return Col{lse_g[c]}; }
  __device__ __forceinline__ float operator()(const Row& r, const Col& c, int64_t i, int64_t j,
                                              float s) const {
    return coef * (expf(s - r.lse) + expf(s - c.lse) - (i == j ? 2.0f : 0.0f));
  }
};

// grad_q[r] = (1/tau) sum_c dS[r][c] g_c over the whole bank. Launched for (img, txt) ->
// grad_img and for (txt, img) -> grad_txt (dS^T has the same form with the two log-sum-exps
// swapped); each block owns 64 rows of the output.
template <Precision P>
__global__ void __launch_bounds__(bank::kThreads)
    infonce_grad_kernel(const float* __restrict__ q,  // [n, d] rows whose gradient is made
                        const float* __restrict__ g,  // [n, d] the bank
                        int64_t n, int64_t d,
                        const float* __restrict__ tau,        // [1]
                        const float* __restrict__ lse_q,      // [n]
                        const float* __restrict__ lse_g,      // [n]
                        const float* __restrict__ grad_loss,  // [1]
                        float* __restrict__ grad_q,           // [n, d]
                        Access load, AccumSpace space) {
  __shared__ bank::GradSmem smem;
  MMFL_DYNAMIC_SHARED(float, shared_accum);  // [64, d] when space == kShared
  const InfonceDs ds{lse_q, lse_g, *grad_loss / (2.0f * static_cast<float>(n))};
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTileRows;
  bank::grad_rows_pass(q, n, g, 0, n, d, row0, 1.0f / *tau, ds, load, P, space, smem, shared_accum,
                       grad_q + row0 * d);
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
                     float* loss, float* lse_img, float* lse_txt, Precision precision,
                     cudaStream_t stream) {
  check_args("infonce_forward", img, txt, n, d, tau);
  MMFL_CHECK(loss != nullptr && lse_img != nullptr && lse_txt != nullptr,
             "infonce_forward: loss, lse_img and lse_txt must not be null");
  const Access load = detail::choose_access(img, txt, d);
  detail::with_precision("infonce_forward", precision, [&](auto p) {
    constexpr Precision P = decltype(p)::value;
    MMFL_LAUNCH(row_lse_kernel<P>, row_blocks(n), bank::kThreads, 0, stream)
    (img, n, txt, n, d, tau, lse_img, load);
    MMFL_CHECK_LAUNCH(row_lse_kernel);
    MMFL_LAUNCH(row_lse_kernel<P>, row_blocks(n), bank::kThreads, 0, stream)
    (txt, n, img, n, d, tau, lse_txt, load);
    MMFL_CHECK_LAUNCH(row_lse_kernel);
  });
  MMFL_LAUNCH(infonce_loss_kernel, 1, kReduceThreads, 0, stream)
  (img, txt, n, d, tau, lse_img, lse_txt, loss);
  MMFL_CHECK_LAUNCH(infonce_loss_kernel);
}

void infonce_backward(const float* img, const float* txt, int64_t n, int64_t d, const float* tau,
                      const float* lse_img, const float* lse_txt, const float* grad_loss,
                      float* grad_img, float* grad_txt, float* grad_tau, Precision precision,
                      cudaStream_t stream) {
  check_args("infonce_backward", img, txt, n, d, tau);
  MMFL_CHECK(lse_img != nullptr && lse_txt != nullptr && grad_loss != nullptr,
             "infonce_backward: lse_img, lse_txt and grad_loss must not be null");
  MMFL_CHECK(grad_img != nullptr && grad_txt != nullptr && grad_tau != nullptr,
             "infonce_backward: grad_img, grad_txt and grad_tau must not be null");
  const Access load = detail::choose_access(img, txt, d);
  const AccumSpace space = bank::choose_accum_space(d);
  const size_t smem = bank::accum_shared_bytes(space, d);
  detail::with_precision("infonce_backward", precision, [&](auto p) {
    constexpr Precision P = decltype(p)::value;
    // More than 48 KiB of dynamic shared memory needs an explicit opt-in.
    MMFL_CUDA_CHECK(cudaFuncSetAttribute(infonce_grad_kernel<P>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(bank::kMaxSharedAccumBytes)));
    MMFL_LAUNCH(infonce_grad_kernel<P>, row_blocks(n), bank::kThreads, smem, stream)
    (img, txt, n, d, tau, lse_img, lse_txt, grad_loss, grad_img, load, space);
    MMFL_CHECK_LAUNCH(infonce_grad_kernel);
    MMFL_LAUNCH(infonce_grad_kernel<P>, row_blocks(n), bank::kThreads, smem, stream)
    (txt, img, n, d, tau, lse_txt, lse_img, grad_loss, grad_txt, load, space);
    MMFL_CHECK_LAUNCH(infonce_grad_kernel);
  });
  MMFL_LAUNCH(infonce_grad_tau_kernel, 1, kReduceThreads, 0, stream)
  (img, grad_img, n, d, tau, grad_tau);
  MMFL_CHECK_LAUNCH(infonce_grad_tau_kernel);
}

}  // namespace mmfl::kernels::MMFL_KERNEL_NS
