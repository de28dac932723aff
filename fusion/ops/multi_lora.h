// LibTorch autograd adapter of kernels/multi_lora: one frozen linear layer shared by many clients,
// each client's rows through its own LoRA adapter, forward and backward in one pass (the cohort
// executor trains all sampled clients' adapters this way).
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace mmfl::fusion::ops {

// y = x W^T + b + scale * (x A_c^T) B_c^T per client segment; differentiable in x, A and B
// (autograd), not in weight/bias. x [R, in] fp32, weight [out, in], bias [out] or undefined,
// A [C, r, in], B [C, out, r] on x's device; offsets: C+1 non-decreasing row offsets,
// offsets[0] == 0, offsets[C] == R (client c owns rows offsets[c] .. offsets[c+1]-1; a client may
// own none: its gradients are zero). CPU and CUDA.
// Only 2-D x: a caller with [..., in] inputs flattens them (and its offsets count the flattened
// rows). With grad mode on, a weight or bias that requires grad is an error (the base is frozen
// and would silently get no gradient). The base product is one LibTorch GEMM (MKL / cuBLAS); the
// per-client products are the kernels'.
torch::Tensor multi_lora_linear(const torch::Tensor& x, const torch::Tensor& weight,
                                const torch::Tensor& bias, const torch::Tensor& A,
                                const torch::Tensor& B, const std::vector<int64_t>& offsets,
                                double scale);

}  // namespace mmfl::fusion::ops
