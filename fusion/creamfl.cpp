#include "fusion/creamfl.h"

#include <torch/nn/functional/loss.h>

#include "mmfl/error.h"

namespace mmfl::fusion {

namespace F = torch::nn::functional;

torch::Tensor inter_modal_loss(const torch::Tensor& z, const torch::Tensor& g_other,
                               const torch::Tensor& rows, double tau) {
  return ops::bank_cross_entropy(z, g_other, rows, tau).mean();
}

torch::Tensor intra_modal_loss(const torch::Tensor& z, const torch::Tensor& g_same,
                               const torch::Tensor& z_old, double tau) {
  const auto logits = torch::stack({(z * g_same).sum(1), (z * z_old).sum(1)}, 1) / tau;
  return F::cross_entropy(logits, torch::zeros({z.size(0)}, z.options().dtype(torch::kInt64)));
}

ops::EnsembleResult creamfl_ensemble_composed(const torch::Tensor& local, const torch::Tensor& bank,
                                              double tau, kernels::EnsembleWeighting weighting) {
  torch::NoGradGuard no_grad;
  const int64_t k = local.size(0);
  std::vector<torch::Tensor> scores;
  for (int64_t c = 0; c < k; ++c) {
    // One client at a time: [N, N] per client is what the reference code builds.
    const auto logp = torch::log_softmax(torch::matmul(local[c], bank.t()) / tau, 1);
    scores.push_back(logp.diagonal());
  }
  torch::Tensor w;
  switch (weighting) {
    case kernels::EnsembleWeighting::kContrastive:
      w = torch::softmax(torch::stack(scores), 0);
      break;
    case kernels::EnsembleWeighting::kMean:
      w = torch::full({k, local.size(1)}, 1.0 / double(k), local.options());
      break;
    default:
      MMFL_FAIL("unknown EnsembleWeighting ", static_cast<int>(weighting));
  }
  return {(w.unsqueeze(-1) * local).sum(0), w};
}

torch::Tensor bank_cross_entropy_composed(const torch::Tensor& q, const torch::Tensor& bank,
                                          const torch::Tensor& target, double tau) {
  return F::cross_entropy(torch::matmul(q, bank.t()) / tau, target,
                          F::CrossEntropyFuncOptions().reduction(torch::kNone));
}

}  // namespace mmfl::fusion
