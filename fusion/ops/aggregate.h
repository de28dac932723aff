// LibTorch adapter of kernels/aggregate: weighted sums of stacked client updates on CPU or CUDA
// (FedAvg's reduction), with an optional guard that skips clients holding NaN or Inf.
#pragma once

#include <torch/types.h>

#include "mmfl/kernels/aggregate.h"

namespace mmfl::fusion::ops {

// out[j] = sum_k weights[k] * updates[k, j].
torch::Tensor weighted_sum(const torch::Tensor& updates,  // [K, n] fp32, contiguous
                           const torch::Tensor& weights,  // [K] fp32, same device
                           kernels::Accumulator acc = kernels::Accumulator::kFloat64);

struct FiniteSum {
  torch::Tensor out;  // [n]
  torch::Tensor bad;  // [K] bool: the client's update held a NaN or Inf and was skipped
  int64_t skipped = 0;
};

// As weighted_sum, skipping non-finite clients and rescaling the others' weights to the same
// total. When every client is skipped, `out` is zeros and skipped == K.
FiniteSum weighted_sum_finite(const torch::Tensor& updates, const torch::Tensor& weights,
                              kernels::Accumulator acc = kernels::Accumulator::kFloat64);

}  // namespace mmfl::fusion::ops
