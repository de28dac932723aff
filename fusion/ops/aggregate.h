// LibTorch adapter of kernels/aggregate: weighted sums of stacked client updates on CPU or CUDA
// (FedAvg's reduction), with an optional guard that skips clients holding NaN or Inf.
#pragma once

#include <torch/types.h>

#include <vector>

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

// As weighted_sum over rows held apart (each [n] fp32, contiguous, on one device), without
// stacking them: on the CPU the kernel reads each row in place (the same bits as weighted_sum on
// the stacked rows); on CUDA they are stacked first. weights: [K] fp32 on the CPU.
// With `unrounded`, the fp64 running sums are returned as [n] fp64 (partial sums that a later
// reduction rounds once); CPU only.
torch::Tensor weighted_sum_rows(const std::vector<torch::Tensor>& rows,
                                const std::vector<float>& weights,
                                kernels::Accumulator acc = kernels::Accumulator::kFloat64,
                                bool unrounded = false);

// True when every element of `t` (fp32) is finite: one vectorized pass on the CPU.
bool all_finite(const torch::Tensor& t);

}  // namespace mmfl::fusion::ops
