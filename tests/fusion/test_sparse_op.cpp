// The sparse-update adapter on CPU tensors: top-k against a sort-based LibTorch oracle, the
// residual identity, the aggregate against a dense LibTorch sum of the scattered packets, the
// density / count rule, errors, and the same bits on 1, 2 and 3 threads.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <string>

#include "fusion/ops/sparse.h"
#include "mmfl/error.h"

namespace mmfl::fusion {
namespace {

// Normal values with planted magnitude ties (copies and negations of other entries) and zeros.
torch::Tensor tied_deltas(int64_t rows, int64_t n) {
  auto x = torch::randn({rows, n});
  const auto src = torch::randint(n, {rows, n / 5}, torch::kInt64);
  const auto dst = torch::randint(n, {rows, n / 5}, torch::kInt64);
  const auto sign = torch::randint(2, {rows, n / 5}).to(torch::kFloat32) * 2 - 1;
  x.scatter_(1, dst, x.gather(1, src) * sign);
  x.scatter_(1, torch::randint(n, {rows, n / 20}, torch::kInt64), 0.0);
  return x;
}

// The oracle: a stable descending sort of |x| keeps equal magnitudes in index order, so the first
// k are the largest with ties to the lower index; then in ascending index order.
torch::Tensor oracle_indices(const torch::Tensor& x, int64_t k) {
  const auto order = std::get<1>(x.abs().sort(/*stable=*/true, /*dim=*/1, /*descending=*/true));
  return std::get<0>(order.slice(1, 0, k).sort(1)).to(torch::kInt32);
}

class SparseOp : public ::testing::Test {
 protected:
  void SetUp() override { torch::manual_seed(::testing::UnitTest::GetInstance()->random_seed()); }
};

TEST_F(SparseOp, TopkEqualsSortOracleAndResidualCompletesX) {
  for (auto [rows, n] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {5, 1000}, {3, 16411}})
    for (int64_t k : {int64_t(0), int64_t(1), n / 100, n / 10, n - 1, n}) {
      if (k < 0 || k > n) continue;
      SCOPED_TRACE("rows=" + std::to_string(rows) + " n=" + std::to_string(n) +
                   " k=" + std::to_string(k));
      const auto x = tied_deltas(rows, n);
      const auto p = ops::topk_by_magnitude(x, k);
      ASSERT_EQ(p.indices.sizes(), (std::vector<int64_t>{rows, k}));
      EXPECT_EQ(p.indices.scalar_type(), torch::kInt32);
      EXPECT_TRUE(torch::equal(p.indices, oracle_indices(x, k)));
      EXPECT_TRUE(torch::equal(p.values, x.gather(1, p.indices.to(torch::kInt64))));
      // sent + residual == x exactly, and the residual is 0 where sent.
      const auto rebuilt = p.residual.scatter_add(1, p.indices.to(torch::kInt64), p.values);
      EXPECT_TRUE(torch::equal(rebuilt, x));
      if (k > 0)
        EXPECT_EQ(p.residual.gather(1, p.indices.to(torch::kInt64)).abs().sum().item<float>(), 0);
    }
}

TEST_F(SparseOp, NonContiguousInputAndNan) {
  const auto x = torch::randn({64, 6}).t();  // [6, 64], not contiguous
  const auto p = ops::topk_by_magnitude(x, 5);
  EXPECT_TRUE(torch::equal(p.indices, oracle_indices(x.contiguous(), 5)));
  auto y = torch::ones({1, 4});
  y[0][2] = std::numeric_limits<float>::quiet_NaN();
  y[0][3] = -std::numeric_limits<float>::infinity();
  const auto q = ops::topk_by_magnitude(y, 1);
  EXPECT_EQ(q.indices[0][0].item<int32_t>(), 2);  // NaN ranks above every magnitude
}

TEST_F(SparseOp, SumEqualsDenseSumOfScatteredPackets) {
  const int64_t rows = 37, n = 5003, k = 97;
  auto idx = torch::empty({rows, k}, torch::kInt32);
  for (int64_t c = 0; c < rows; ++c)
    idx[c] = std::get<0>(torch::randperm(n).slice(0, 0, k).sort()).to(torch::kInt32);
  const auto values = torch::randint(-8, 9, {rows, k}).to(torch::kFloat32);
  const auto weights = torch::randint(-4, 5, {rows}).to(torch::kFloat32) / 8;
  const auto dense = torch::zeros({rows, n}).scatter_(1, idx.to(torch::kInt64), values);
  const auto want = (dense * weights.unsqueeze(1)).sum(0);
  EXPECT_TRUE(torch::equal(ops::sparse_weighted_sum(idx, values, weights, n), want));
  // The packets of topk_by_magnitude aggregate to the weighted sum of x minus the residuals.
  const auto x = torch::randint(-8, 9, {rows, n}).to(torch::kFloat32);
  const auto p = ops::topk_by_magnitude(x, k);
  EXPECT_TRUE(torch::equal(ops::sparse_weighted_sum(p.indices, p.values, weights, n),
                           ((x - p.residual) * weights.unsqueeze(1)).sum(0)));
  // No clients, or no entries: zeros.
  EXPECT_TRUE(torch::equal(ops::sparse_weighted_sum(torch::empty({0, 3}, torch::kInt32),
                                                    torch::empty({0, 3}), torch::empty({0}), 9),
                           torch::zeros({9})));
}

TEST_F(SparseOp, BadArgumentsAreRefused) {
  const auto idx = torch::tensor({0, 3, 9, 1, 2, 3}, torch::kInt32).reshape({2, 3});
  const auto v = torch::ones({2, 3}), w = torch::ones({2});
  auto msg = [](auto&& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(msg([&] { ops::sparse_weighted_sum(idx, v, w, 9); }).find("indices[0, 2] = 9"),
            std::string::npos);
  EXPECT_NE(msg([&] { ops::sparse_weighted_sum(idx.to(torch::kInt64), v, w, 10); }).find("int32"),
            std::string::npos);
  EXPECT_NE(msg([&] { ops::sparse_weighted_sum(idx, v, torch::ones({3}), 10); }).find("[C] = [2]"),
            std::string::npos);
  EXPECT_NE(msg([&] {
              ops::topk_by_magnitude(torch::ones({2, 4}), 5);
            }).find("k must be in [0, n]"),
            std::string::npos);
  EXPECT_NE(msg([&] { ops::topk_by_magnitude(torch::ones({8}), 1); }).find("[C, n]"),
            std::string::npos);
  EXPECT_NE(msg([&] {
              ops::topk_by_magnitude(torch::ones({2, 4}, torch::kFloat64), 1);
            }).find("float32"),
            std::string::npos);
}

TEST(SparseTopkCount, DensitiesAndCounts) {
  EXPECT_EQ(ops::topk_count(0.01, 16384, "lora.upload_density"), 164);
  EXPECT_EQ(ops::topk_count(0.1, 131072, "x"), 13107);
  EXPECT_EQ(ops::topk_count(1.0, 77, "x"), 77);  // 1 is a density: everything
  EXPECT_EQ(ops::topk_count(1e-9, 10, "x"), 1);  // at least 1
  EXPECT_EQ(ops::topk_count(5, 10, "x"), 5);
  EXPECT_EQ(ops::topk_count(10, 10, "x"), 10);
  for (double bad : {0.0, -0.5, std::nan(""), std::numeric_limits<double>::infinity(), 2.5, 11.0}) {
    try {
      ops::topk_count(bad, 10, "lora.download_density");
      ADD_FAILURE() << bad << " accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("lora.download_density"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(ops::topk_count(0.5, 0, "x"), Error);
}

// The kernels run on LibTorch's intra-op threads: the same bits whatever their number.
TEST(SparseThreads, SameBitsForOneTwoThreeThreads) {
  const int saved = torch::get_num_threads();
  const auto x = tied_deltas(9, 30011);
  const auto w = torch::rand({9});
  auto run = [&] {
    const auto p = ops::topk_by_magnitude(x, 300);
    return std::vector<torch::Tensor>{p.indices, p.values, p.residual,
                                      ops::sparse_weighted_sum(p.indices, p.values, w, 30011)};
  };
  torch::set_num_threads(1);
  const auto one = run();
  for (int t : {2, 3}) {
    torch::set_num_threads(t);
    const auto other = run();
    for (size_t i = 0; i < one.size(); ++i)
      EXPECT_TRUE(torch::equal(other[i], one[i])) << "output " << i << " with " << t << " threads";
  }
  torch::set_num_threads(saved);
}

}  // namespace
}  // namespace mmfl::fusion
