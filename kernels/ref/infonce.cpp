// CPU reference of the fused symmetric InfoNCE loss: plain loops in double precision, logits
// recomputed from the features instead of stored (memory O(n*d)), the oracle of every other backend
// (tests only).
#include "mmfl/kernels/infonce.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../common/host_checks.h"
#include "mmfl/error.h"
#include "ref_math.h"

namespace mmfl::kernels::ref {
namespace {

using detail::dot;
using detail::RunningLse;

}  // namespace

void infonce_forward(const float* img, const float* txt, int64_t n, int64_t d, const float* tau,
                     float* loss, float* lse_img, float* lse_txt) {
  checks::check_infonce_args("ref::infonce_forward", img, txt, n, d, tau);
  MMFL_CHECK(loss != nullptr && lse_img != nullptr && lse_txt != nullptr,
             "ref::infonce_forward: loss, lse_img and lse_txt must not be null");
  const double inv_tau = 1.0 / static_cast<double>(*tau);
  // One sweep over S: row i's log-sum-exp finishes with the row, the column ones at the end.
  std::vector<RunningLse> cols(static_cast<size_t>(n));
  std::vector<double> diag(static_cast<size_t>(n));
  double total = 0;  // sum_i (lse_img_i - S_ii) + sum_j (lse_txt_j - S_jj)
  for (int64_t i = 0; i < n; ++i) {
    RunningLse row;
    for (int64_t j = 0; j < n; ++j) {
      const double s = dot(img + i * d, txt + j * d, d) * inv_tau;
      row.add(s);
      cols[j].add(s);
      if (i == j) diag[i] = s;
    }
    lse_img[i] = static_cast<float>(row.value());
    total += row.value() - diag[i];
  }
  for (int64_t j = 0; j < n; ++j) {
    lse_txt[j] = static_cast<float>(cols[j].value());
    total += cols[j].value() - diag[j];
  }
  *loss = static_cast<float>(0.5 * total / static_cast<double>(n));
}

void infonce_backward(const float* img, const float* txt, int64_t n, int64_t d, const float* tau,
                      const float* lse_img, const float* lse_txt, const float* grad_loss,
                      float* grad_img, float* grad_txt, float* grad_tau) {
  checks::check_infonce_args("ref::infonce_backward", img, txt, n, d, tau);
  MMFL_CHECK(lse_img != nullptr && lse_txt != nullptr && grad_loss != nullptr,
             "ref::infonce_backward: lse_img, lse_txt and grad_loss must not be null");
  MMFL_CHECK(grad_img != nullptr && grad_txt != nullptr && grad_tau != nullptr,
             "ref::infonce_backward: grad_img, grad_txt and grad_tau must not be null");
  const double inv_tau = 1.0 / static_cast<double>(*tau);
  const double coef = static_cast<double>(*grad_loss) / (2.0 * static_cast<double>(n));
  std::vector<double> gi(static_cast<size_t>(n * d), 0.0);
  std::vector<double> gt(static_cast<size_t>(n * d), 0.0);
  double s_weighted = 0;  // sum_ij dL/dS_ij * S_ij
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      const double s = dot(img + i * d, txt + j * d, d) * inv_tau;
      const double p =
          coef * (std::exp(s - lse_img[i]) + std::exp(s - lse_txt[j]) - (i == j ? 2.0 : 0.0));
      s_weighted += p * s;
      for (int64_t k = 0; k < d; ++k) {
        gi[i * d + k] += p * txt[j * d + k];
        gt[j * d + k] += p * img[i * d + k];
      }
    }
  }
  for (int64_t e = 0; e < n * d; ++e) {
    grad_img[e] = static_cast<float>(gi[e] * inv_tau);
    grad_txt[e] = static_cast<float>(gt[e] * inv_tau);
  }
  *grad_tau = static_cast<float>(-s_weighted * inv_tau);
}

}  // namespace mmfl::kernels::ref
