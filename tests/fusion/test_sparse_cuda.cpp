// The sparse-update adapter on CUDA tensors against its CPU path, bit for bit (label gpu: skipped,
// saying why, when no GPU is visible).
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <string>

#include "fusion/ops/sparse.h"
#include "mmfl/error.h"

namespace mmfl::fusion {
namespace {

TEST(CudaSparseOps, MatchCpuExactly) {
  if (!torch::cuda::is_available())
    GTEST_SKIP() << "no usable CUDA device (torch::cuda::is_available() is false)";
  const torch::Device dev(torch::kCUDA, 0);
  torch::manual_seed(3);
  auto x = torch::randn({33, 16411});
  x.slice(1, 0, 500) = 1.0;  // ties
  const auto w = torch::rand({33});
  for (int64_t k : {0, 1, 164, 1641, 16411}) {
    const auto a = ops::topk_by_magnitude(x.to(dev), k), b = ops::topk_by_magnitude(x, k);
    EXPECT_TRUE(torch::equal(a.indices.cpu(), b.indices)) << "k=" << k;
    EXPECT_TRUE(torch::equal(a.values.cpu(), b.values)) << "k=" << k;
    EXPECT_TRUE(torch::equal(a.residual.cpu(), b.residual)) << "k=" << k;
    EXPECT_TRUE(torch::equal(ops::sparse_weighted_sum(a.indices, a.values, w.to(dev), 16411).cpu(),
                             ops::sparse_weighted_sum(b.indices, b.values, w, 16411)))
        << "k=" << k;
  }
  const auto bad = torch::tensor({0, 5, 3}, torch::kInt32).reshape({1, 3}).to(dev);
  try {
    ops::sparse_weighted_sum(bad, torch::ones({1, 3}, dev), torch::ones({1}, dev), 10);
    ADD_FAILURE() << "descending indices accepted on CUDA";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("strictly ascending"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace mmfl::fusion
