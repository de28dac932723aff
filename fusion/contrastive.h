// Contrastive losses between modalities, built on the fused kernels of fusion/ops.
#pragma once

#include <torch/types.h>

namespace mmfl::fusion {

enum class InfoNceImpl {
  kFused,     // kernels/infonce through fusion/ops (no N x N buffer)
  kComposed,  // LibTorch eager: matmul + cross_entropy both ways (the baseline)
};

// CLIP loss of L2-normalized image and text features [N, D] at a fixed temperature.
torch::Tensor clip_loss(const torch::Tensor& img_features, const torch::Tensor& txt_features,
                        double temperature, InfoNceImpl impl = InfoNceImpl::kFused);

// The symmetric InfoNCE of raw features as a LibTorch composition (materializes N x N logits).
torch::Tensor infonce_composed(const torch::Tensor& img, const torch::Tensor& txt,
                               const torch::Tensor& tau);

}  // namespace mmfl::fusion
