// Fused symmetric InfoNCE (the CLIP loss) over paired image / text features, computed without the
// n x n logit matrix: tiles of rows against tiles of a feature bank with an online log-sum-exp in
// the forward pass and recomputation in the backward pass; memory O(n*d).
#pragma once

#include <cstdint>

#include "mmfl/kernels/common.h"
#include "mmfl/kernels/cpu.h"

namespace mmfl::kernels {

// With S = img txt^T / tau:
//   loss = 0.5 * ( mean_i CE(S[i,:], i) + mean_j CE(S[:,j], j) )
//   lse_img[i] = logsumexp_j S[i,j],  lse_txt[j] = logsumexp_i S[i,j]   (saved for backward)
// Backward, with g = grad_loss:
//   dL/dS[i,j] = g/(2n) * (exp(S_ij - lse_img_i) + exp(S_ij - lse_txt_j) - 2*[i==j])
//   grad_img = dL/dS txt / tau,  grad_txt = dL/dS^T img / tau,  grad_tau = -sum_ij dL/dS_ij S_ij /
//   tau
// Requirements: n >= 1, d >= 1, tau > 0 (checked on the CPU path; the device paths read tau on
// the device and cannot check it without a sync).
namespace ref {

void infonce_forward(const float* img,  // [n, d] row-major
                     const float* txt,  // [n, d] row-major
                     int64_t n, int64_t d,
                     const float* tau,  // [1]
                     float* loss,       // [1]
                     float* lse_img,    // [n]
                     float* lse_txt);   // [n]

void infonce_backward(const float* img,  // [n, d] row-major
                      const float* txt,  // [n, d] row-major
                      int64_t n, int64_t d,
                      const float* tau,        // [1]
                      const float* lse_img,    // [n] from infonce_forward
                      const float* lse_txt,    // [n] from infonce_forward
                      const float* grad_loss,  // [1]
                      float* grad_img,         // [n, d]
                      float* grad_txt,         // [n, d]
                      float* grad_tau);        // [1]

}  // namespace ref

namespace cpu {

// The fast path: as namespace ref, in fp32 tiles with vectorized loops, on the threads of
// ctx.parallel_for; bit-identical for any number of threads.

void infonce_forward(const float* img,  // [n, d] row-major
                     const float* txt,  // [n, d] row-major
                     int64_t n, int64_t d,
                     const float* tau,  // [1]
                     float* loss,       // [1]
                     float* lse_img,    // [n]
                     float* lse_txt,    // [n]
                     const Context& ctx = {});

void infonce_backward(const float* img,  // [n, d] row-major
                      const float* txt,  // [n, d] row-major
                      int64_t n, int64_t d,
                      const float* tau,        // [1]
                      const float* lse_img,    // [n] from infonce_forward
                      const float* lse_txt,    // [n] from infonce_forward
                      const float* grad_loss,  // [1]
                      float* grad_img,         // [n, d]
                      float* grad_txt,         // [n, d]
                      float* grad_tau,         // [1]
                      const Context& ctx = {});

}  // namespace cpu

// Device versions: every pointer is device memory (tau, loss, grad_loss included, so nothing
// syncs with the host); asynchronous on `stream`; deterministic (no atomics).
namespace cuda {
#include "mmfl/kernels/device/infonce.inc"
}  // namespace cuda

}  // namespace mmfl::kernels
