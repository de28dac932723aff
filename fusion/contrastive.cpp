#include "fusion/contrastive.h"

#include <torch/nn/functional/loss.h>
#include <torch/nn/functional/normalization.h>

#include "fusion/ops/infonce.h"
#include "mmfl/error.h"

namespace mmfl::fusion {

namespace F = torch::nn::functional;

torch::Tensor infonce_composed(const torch::Tensor& img, const torch::Tensor& txt,
                               const torch::Tensor& tau) {
  const auto logits = torch::matmul(img, txt.t()) / tau.reshape({});
  const auto target = torch::arange(img.size(0), img.options().dtype(torch::kInt64));
  return 0.5 * (F::cross_entropy(logits, target) + F::cross_entropy(logits.t(), target));
}

torch::Tensor clip_loss(const torch::Tensor& img_features, const torch::Tensor& txt_features,
                        double temperature, InfoNceImpl impl) {
  const auto opts = F::NormalizeFuncOptions().dim(1);
  const auto img = F::normalize(img_features, opts);
  const auto txt = F::normalize(txt_features, opts);
  const auto tau = torch::full({1}, temperature, img.options());
  switch (impl) {
    case InfoNceImpl::kFused:
      return ops::infonce(img, txt, tau);
    case InfoNceImpl::kComposed:
      return infonce_composed(img, txt, tau);
    default:
      MMFL_FAIL("unknown InfoNceImpl ", static_cast<int>(impl));
  }
}

}  // namespace mmfl::fusion
