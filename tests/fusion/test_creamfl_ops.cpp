// CreamFL's fused ops through their LibTorch adapters, against plain LibTorch compositions.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "fusion/creamfl.h"
#include "fusion/ops/bank_ce.h"
#include "mmfl/error.h"

namespace mmfl::fusion {
namespace {

namespace F = torch::nn::functional;
using kernels::EnsembleWeighting;

torch::Tensor unit_rows(std::vector<int64_t> shape) {
  return F::normalize(torch::randn(shape), F::NormalizeFuncOptions().dim(-1));
}

TEST(BankCeOp, MatchesCompositionForwardAndGradients) {
  torch::manual_seed(::testing::UnitTest::GetInstance()->random_seed());
  // B = 1 and N not a multiple of any tile among the sizes.
  for (auto [b, n, d] :
       std::vector<std::array<int64_t, 3>>{{1, 1, 1}, {1, 67, 8}, {5, 131, 33}, {64, 257, 64}}) {
    const auto q1 = unit_rows({b, d}).requires_grad_(), q2 = q1.detach().clone().requires_grad_();
    const auto g1 = unit_rows({n, d}).requires_grad_(), g2 = g1.detach().clone().requires_grad_();
    const auto target = torch::randint(n, {b}, torch::kInt64);
    const auto fused = ops::bank_cross_entropy(q1, g1, target, 0.5);
    const auto ref = bank_cross_entropy_composed(q2, g2, target, 0.5);
    ASSERT_TRUE(torch::allclose(fused, ref, 1e-4, 1e-5)) << "b " << b << " n " << n << " d " << d;
    const auto w = torch::rand({b});
    (fused * w).sum().backward();
    (ref * w).sum().backward();
    EXPECT_TRUE(torch::allclose(q1.grad(), q2.grad(), 1e-4, 1e-5)) << "grad q, n " << n;
    EXPECT_TRUE(torch::allclose(g1.grad(), g2.grad(), 1e-4, 1e-5)) << "grad bank, n " << n;
  }
}

TEST(BankCeOp, FixedBankGetsNoGradient) {
  const auto q = unit_rows({4, 6}).requires_grad_();
  const auto bank = unit_rows({9, 6});
  ops::bank_cross_entropy(q, bank, torch::tensor({0, 3, 8, 2}), 0.5).sum().backward();
  EXPECT_TRUE(q.grad().defined());
  EXPECT_FALSE(bank.grad().defined());
  EXPECT_THROW(ops::bank_cross_entropy(q, bank, torch::tensor({0, 3, 9, 2}), 0.5), Error);
  EXPECT_THROW(ops::bank_cross_entropy(q, bank, torch::tensor({0, 1}), 0.5), Error);
}

TEST(EnsembleOp, MatchesComposition) {
  torch::manual_seed(::testing::UnitTest::GetInstance()->random_seed() + 1);
  for (auto [k, n, d] :
       std::vector<std::array<int64_t, 3>>{{1, 1, 3}, {3, 67, 16}, {10, 130, 32}}) {
    const auto local = unit_rows({k, n, d}), bank = unit_rows({n, d});
    for (auto w : {EnsembleWeighting::kContrastive, EnsembleWeighting::kMean}) {
      const auto a = ops::creamfl_ensemble(local, bank, 1.0, w);
      const auto b = creamfl_ensemble_composed(local, bank, 1.0, w);
      EXPECT_TRUE(torch::allclose(a.weights, b.weights, 1e-4, 1e-6)) << "k " << k << " n " << n;
      EXPECT_TRUE(torch::allclose(a.out, b.out, 1e-4, 1e-6)) << "k " << k << " n " << n;
    }
  }
}

TEST(EnsembleOp, WeightsBehaveAsCreamFlSays) {
  torch::manual_seed(3);
  const int64_t n = 50, d = 16;
  const auto bank = unit_rows({n, d});
  // Client 1's features equal the global features of the other modality: the best possible
  // global-local agreement, so it must get the highest weight on every sample.
  const auto local = torch::stack({unit_rows({n, d}), bank.clone(), unit_rows({n, d})});
  const auto r = ops::creamfl_ensemble(local, bank, 0.1, EnsembleWeighting::kContrastive);
  EXPECT_TRUE(torch::equal(r.weights.argmax(0), torch::ones({n}, torch::kInt64)));
  EXPECT_TRUE(torch::allclose(r.weights.sum(0), torch::ones({n}), 1e-5, 1e-6));
  // One client: weight 1 and the ensemble is its features.
  const auto one =
      ops::creamfl_ensemble(local.narrow(0, 0, 1), bank, 1.0, EnsembleWeighting::kContrastive);
  EXPECT_TRUE(torch::allclose(one.weights, torch::ones({1, n}), 0, 1e-6));
  EXPECT_TRUE(torch::allclose(one.out, local[0], 0, 1e-6));
}

}  // namespace
}  // namespace mmfl::fusion
