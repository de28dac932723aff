// LibTorch autograd adapter of kernels/infonce: the symmetric InfoNCE (CLIP) loss of paired
// features without an N x N logits buffer, with gradients for both feature sets and tau.
#pragma once

#include <torch/types.h>

#include "mmfl/kernels/common.h"

namespace mmfl::fusion::ops {

// 0.5 * (mean_i CE(S[i, :], i) + mean_j CE(S[:, j], j)) with S = img txt^T / tau. `precision`
// picks the CUDA path's products (kernels::Precision); CPU tensors always compute in fp32.
torch::Tensor infonce(const torch::Tensor& img,  // [N, D] fp32
                      const torch::Tensor& txt,  // [N, D] fp32, same device
                      const torch::Tensor& tau,  // [] or [1] fp32, same device
                      kernels::Precision precision = kernels::Precision::kFp32);

}  // namespace mmfl::fusion::ops
