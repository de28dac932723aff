// LibTorch adapter of kernels/sparse: top-k sparsification of client deltas by magnitude (with the
// residual that error feedback keeps) and the weighted sum of many clients' sparse packets, on CPU
// or CUDA tensors.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>

namespace mmfl::fusion::ops {

struct TopkPacked {
  torch::Tensor indices;   // [C, k] int32, ascending within each row
  torch::Tensor values;    // [C, k] fp32
  torch::Tensor residual;  // [C, n] fp32: x with the sent entries zeroed
};

// Per row of x [C, n] (fp32, CPU or CUDA): the k entries of largest magnitude, ties to the
// lower index. 0 <= k <= n. Magnitude order is that of the bits with the sign cleared: for finite
// values |x| (-0 ties +0), and NaN above +-Inf, so a NaN is always sent (kernels/sparse.h). On
// CPU the results are the same bits for any number of threads.
TopkPacked topk_by_magnitude(const torch::Tensor& x, int64_t k);

// out[n] = sum_c weights[c] * scatter(indices[c], values[c]); indices [C, k] int32 (each row
// strictly ascending, in [0, n): as topk_by_magnitude writes them), values [C, k] fp32, weights
// [C] fp32, same device. Deterministic: sums in fp64 in client order, rounded once to fp32 (CPU
// and CUDA give the same bits). Bad indices are refused with an error naming the client (on CUDA
// through a check on the device and one sync).
torch::Tensor sparse_weighted_sum(const torch::Tensor& indices, const torch::Tensor& values,
                                  const torch::Tensor& weights, int64_t n);

// k for a density in (0, 1] (fraction of n, rounded to nearest, at least 1) or a count >= 1
// (values > 1 are counts, must be integers <= n); clear error otherwise naming `what`.
int64_t topk_count(double density_or_count, int64_t n, const std::string& what);

}  // namespace mmfl::fusion::ops
