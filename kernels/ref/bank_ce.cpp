// CPU reference of the cross entropy against a feature bank and of CreamFL's representation
// ensemble: plain loops with double accumulators and a running log-sum-exp, logits recomputed
// rather than stored (memory O((b + n) * d)). The oracle of every other backend (tests only).
#include "mmfl/kernels/bank_ce.h"

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

// Log-sum-exp over the bank of query `q`'s logits.
double row_lse(const float* q, const float* bank, int64_t n, int64_t d, double inv_tau) {
  RunningLse lse;
  for (int64_t m = 0; m < n; ++m)
    lse.add(dot(q, bank + m * d, d) * inv_tau);
  return lse.value();
}

}  // namespace

void bank_ce_forward(const float* q, const float* bank, const int64_t* target, int64_t b, int64_t n,
                     int64_t d, const float* tau, float* lse, float* loss) {
  checks::check_bank_sizes("ref::bank_ce_forward", b, n, d, tau);
  checks::check_targets("ref::bank_ce_forward", target, b, n);
  MMFL_CHECK(q && bank && lse && loss,
             "ref::bank_ce_forward: q, bank, lse and loss must not be null");
  const double inv_tau = 1.0 / static_cast<double>(*tau);
  for (int64_t i = 0; i < b; ++i) {
    const double l = row_lse(q + i * d, bank, n, d, inv_tau);
    lse[i] = static_cast<float>(l);
    loss[i] = static_cast<float>(l - dot(q + i * d, bank + target[i] * d, d) * inv_tau);
  }
}

void bank_ce_backward(const float* q, const float* bank, const int64_t* target, int64_t b,
                      int64_t n, int64_t d, const float* tau, const float* lse,
                      const float* grad_loss, float* grad_q, float* grad_bank) {
  checks::check_bank_sizes("ref::bank_ce_backward", b, n, d, tau);
  checks::check_targets("ref::bank_ce_backward", target, b, n);
  MMFL_CHECK(q && bank && lse && grad_loss && grad_q,
             "ref::bank_ce_backward: q, bank, lse, grad_loss and grad_q must not be null");
  const double inv_tau = 1.0 / static_cast<double>(*tau);
  std::vector<double> gq(static_cast<size_t>(d));
  std::vector<double> gb(grad_bank ? static_cast<size_t>(n * d) : 0, 0.0);
  for (int64_t i = 0; i < b; ++i) {
    std::fill(gq.begin(), gq.end(), 0.0);
    for (int64_t m = 0; m < n; ++m) {
      // dL/dlogit[i, m] = g_i (softmax - onehot); the logit's own derivative brings 1/tau.
      const double p = std::exp(dot(q + i * d, bank + m * d, d) * inv_tau - lse[i]);
      const double g = grad_loss[i] * (p - (m == target[i] ? 1.0 : 0.0)) * inv_tau;
      for (int64_t k = 0; k < d; ++k)
        gq[k] += g * bank[m * d + k];
      if (grad_bank)
        for (int64_t k = 0; k < d; ++k)
          gb[m * d + k] += g * q[i * d + k];
    }
    for (int64_t k = 0; k < d; ++k)
      grad_q[i * d + k] = static_cast<float>(gq[k]);
  }
  if (grad_bank)
    for (int64_t x = 0; x < n * d; ++x)
      grad_bank[x] = static_cast<float>(gb[x]);
}

void creamfl_ensemble(const float* local, const float* bank, int64_t k, int64_t n, int64_t d,
                      const float* tau, EnsembleWeighting weighting, float* weights, float* out) {
  checks::check_bank_sizes("ref::creamfl_ensemble", k, n, d, tau);
  MMFL_CHECK(local && bank && weights && out,
             "ref::creamfl_ensemble: local, bank, weights and out must not be null");
  const double inv_tau = 1.0 / static_cast<double>(*tau);
  std::vector<double> score(static_cast<size_t>(k));
  for (int64_t j = 0; j < n; ++j) {
    switch (weighting) {
      case EnsembleWeighting::kContrastive: {
        // CreamFL: score = log softmax over the bank of <L_c[j], G[m]> / tau, taken at m = j.
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t c = 0; c < k; ++c) {
          const float* z = local + (c * n + j) * d;
          score[c] = dot(z, bank + j * d, d) * inv_tau - row_lse(z, bank, n, d, inv_tau);
          mx = std::max(mx, score[c]);
        }
        double sum = 0;
        for (int64_t c = 0; c < k; ++c)
          sum += std::exp(score[c] - mx);
        for (int64_t c = 0; c < k; ++c)
          score[c] = std::exp(score[c] - mx) / sum;
        break;
      }
      case EnsembleWeighting::kMean:
        std::fill(score.begin(), score.end(), 1.0 / static_cast<double>(k));
        break;
      default:
        MMFL_FAIL("ref::creamfl_ensemble: unknown EnsembleWeighting ", static_cast<int>(weighting));
    }
    for (int64_t x = 0; x < d; ++x) {
      double acc = 0;
      for (int64_t c = 0; c < k; ++c)
        acc += score[c] * local[(c * n + j) * d + x];
      out[j * d + x] = static_cast<float>(acc);
    }
    for (int64_t c = 0; c < k; ++c)
      weights[c * n + j] = static_cast<float>(score[c]);
  }
}

}  // namespace mmfl::kernels::ref
