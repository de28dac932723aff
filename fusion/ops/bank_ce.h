// LibTorch adapters of kernels/bank_ce: per-row cross entropy of queries against a feature bank
// (autograd), and CreamFL's representation ensemble (no gradient: the server treats it as a
// distillation target).
#pragma once

#include <torch/types.h>

#include "mmfl/kernels/bank_ce.h"

namespace mmfl::fusion::ops {

// loss[i] = logsumexp_m(<q_i, bank_m> / tau) - <q_i, bank_target[i]> / tau, shape [B].
// Gradients flow to q, and to bank when it requires grad. `precision` picks the CUDA path's
// products (kernels::Precision); CPU tensors always compute in fp32.
torch::Tensor bank_cross_entropy(const torch::Tensor& q,       // [B, D] fp32
                                 const torch::Tensor& bank,    // [N, D] fp32, same device
                                 const torch::Tensor& target,  // [B] int64, values in [0, N)
                                 double tau,
                                 kernels::Precision precision = kernels::Precision::kFp32);

struct EnsembleResult {
  torch::Tensor out;      // [N, D] the weighted representation per public sample
  torch::Tensor weights;  // [K, N] each column sums to 1
};

EnsembleResult creamfl_ensemble(const torch::Tensor& local,  // [K, N, D] fp32
                                const torch::Tensor& bank,   // [N, D] fp32, same device
                                double tau, kernels::EnsembleWeighting weighting,
                                kernels::Precision precision = kernels::Precision::kFp32);

}  // namespace mmfl::fusion::ops
