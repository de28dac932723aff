// The fusion/ops adapters on CUDA tensors against their CPU path (label gpu: skipped, saying
// why, when no GPU is visible).
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include "fusion/ops/aggregate.h"
#include "fusion/ops/bank_ce.h"
#include "fusion/ops/infonce.h"

namespace mmfl::fusion {
namespace {

class CudaOps : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available())
      GTEST_SKIP() << "no usable CUDA device (torch::cuda::is_available() is false)";
  }
  const torch::Device dev_{torch::kCUDA, 0};
};

TEST_F(CudaOps, AggregateMatchesCpuExactly) {
  const auto x = torch::fmod(torch::arange(7 * 4099, torch::kFloat32), 11.0).reshape({7, 4099}) - 5;
  const auto w = torch::tensor({0.5f, 0.125f, 0.125f, 0.0625f, 0.0625f, 0.0625f, 0.0625f});
  EXPECT_TRUE(
      torch::equal(ops::weighted_sum(x.to(dev_), w.to(dev_)).cpu(), ops::weighted_sum(x, w)));
  auto y = x.clone();
  y[3][17] = std::numeric_limits<float>::quiet_NaN();
  const auto a = ops::weighted_sum_finite(y.to(dev_), w.to(dev_)),
             b = ops::weighted_sum_finite(y, w);
  EXPECT_EQ(a.skipped, 1);
  EXPECT_TRUE(torch::equal(a.bad.cpu(), b.bad));
  EXPECT_TRUE(torch::allclose(a.out.cpu(), b.out, 0, 1e-6));
}

TEST_F(CudaOps, InfoNceMatchesCpu) {
  torch::manual_seed(1);
  for (int64_t n : {1, 67, 1000}) {
    const auto i = torch::nn::functional::normalize(
        torch::randn({n, 64}), torch::nn::functional::NormalizeFuncOptions().dim(1));
    const auto t = torch::nn::functional::normalize(
        torch::randn({n, 64}), torch::nn::functional::NormalizeFuncOptions().dim(1));
    auto ic = i.clone().requires_grad_(), tc = t.clone().requires_grad_();
    auto ig = i.to(dev_).requires_grad_(), tg = t.to(dev_).requires_grad_();
    const auto lc = ops::infonce(ic, tc, torch::full({1}, 0.07f));
    const auto lg = ops::infonce(ig, tg, torch::full({1}, 0.07f, dev_));
    EXPECT_TRUE(torch::allclose(lg.cpu(), lc, 1e-4, 1e-5)) << n;
    lc.backward();
    lg.backward();
    EXPECT_TRUE(torch::allclose(ig.grad().cpu(), ic.grad(), 1e-4, 1e-5)) << n;
    EXPECT_TRUE(torch::allclose(tg.grad().cpu(), tc.grad(), 1e-4, 1e-5)) << n;
  }
}

TEST_F(CudaOps, BankCeAndEnsembleMatchCpu) {
  torch::manual_seed(2);
  const auto q = torch::nn::functional::normalize(
      torch::randn({65, 32}), torch::nn::functional::NormalizeFuncOptions().dim(1));
  const auto bank = torch::nn::functional::normalize(
      torch::randn({300, 32}), torch::nn::functional::NormalizeFuncOptions().dim(1));
  const auto target = torch::randint(300, {65}, torch::kInt64);
  auto qc = q.clone().requires_grad_(), qg = q.to(dev_).requires_grad_();
  const auto lc = ops::bank_cross_entropy(qc, bank, target, 0.5);
  const auto lg = ops::bank_cross_entropy(qg, bank.to(dev_), target.to(dev_), 0.5);
  EXPECT_TRUE(torch::allclose(lg.cpu(), lc, 1e-4, 1e-5));
  lc.sum().backward();
  lg.sum().backward();
  EXPECT_TRUE(torch::allclose(qg.grad().cpu(), qc.grad(), 1e-4, 1e-5));
  const auto local = torch::nn::functional::normalize(
      torch::randn({5, 300, 32}), torch::nn::functional::NormalizeFuncOptions().dim(2));
  const auto ec = ops::creamfl_ensemble(local, bank, 1.0, kernels::EnsembleWeighting::kContrastive);
  const auto eg = ops::creamfl_ensemble(local.to(dev_), bank.to(dev_), 1.0,
                                        kernels::EnsembleWeighting::kContrastive);
  EXPECT_TRUE(torch::allclose(eg.weights.cpu(), ec.weights, 1e-4, 1e-6));
  EXPECT_TRUE(torch::allclose(eg.out.cpu(), ec.out, 1e-4, 1e-6));
}

}  // namespace
}  // namespace mmfl::fusion
