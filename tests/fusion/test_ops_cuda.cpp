// The fusion/ops adapters on CUDA tensors against their CPU path (label gpu: skipped, saying
// why, when no GPU is visible).
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include "fusion/ops/aggregate.h"
#include "fusion/ops/bank_ce.h"
#include "fusion/ops/infonce.h"
#include "fusion/ops/moe.h"
#include "fusion/ops/multi_lora.h"

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

// The precision option reaches the kernels through the adapters, forward and backward: tensor
// cores stay within their stated bounds of the CPU result (tf32 2e-3, bf16 2e-2 of the logit
// scale 1 / tau), and bf16 is measurably not the fp32 path.
TEST_F(CudaOps, PrecisionOptionReachesTheKernels) {
  torch::manual_seed(3);
  const auto norm = torch::nn::functional::NormalizeFuncOptions().dim(1);
  const auto i = torch::nn::functional::normalize(torch::randn({300, 96}), norm);
  const auto t = torch::nn::functional::normalize(torch::randn({300, 96}), norm);
  auto ic = i.clone().requires_grad_(), tc = t.clone().requires_grad_();
  const auto lc = ops::infonce(ic, tc, torch::full({1}, 0.1f));
  lc.backward();
  for (auto [p, bound] :
       {std::pair{kernels::Precision::kTf32, 2e-3}, std::pair{kernels::Precision::kBf16, 2e-2}}) {
    auto ig = i.to(dev_).requires_grad_(), tg = t.to(dev_).requires_grad_();
    const auto lg = ops::infonce(ig, tg, torch::full({1}, 0.1f, dev_), p);
    lg.backward();
    const double scale = 10.0;  // 1 / tau
    EXPECT_LE(std::fabs(lg.item<float>() - lc.item<float>()), bound * scale)
        << kernels::precision_name(p);
    const double gmax = ic.grad().abs().max().item<float>();
    EXPECT_LE((ig.grad().cpu() - ic.grad()).abs().max().item<float>(), bound * gmax * 10)
        << kernels::precision_name(p);
    if (p == kernels::Precision::kBf16) {
      EXPECT_GT(std::fabs(lg.item<float>() - lc.item<float>()), 1e-6) << "bf16 gave fp32 bits";
    }
  }
  const auto bank = t.slice(0, 0, 200).contiguous();
  const auto target = torch::randint(200, {300}, torch::kInt64);
  const auto bc = ops::bank_cross_entropy(i, bank, target, 0.1);
  const auto bg = ops::bank_cross_entropy(i.to(dev_), bank.to(dev_), target.to(dev_), 0.1,
                                          kernels::Precision::kTf32);
  EXPECT_LE((bg.cpu() - bc).abs().max().item<float>(), 2e-3 * 10);
  const auto local = torch::stack({i.slice(0, 0, 200), t.slice(0, 100, 300)});
  const auto ec = ops::creamfl_ensemble(local, bank, 0.1, kernels::EnsembleWeighting::kContrastive);
  const auto eg =
      ops::creamfl_ensemble(local.to(dev_), bank.to(dev_), 0.1,
                            kernels::EnsembleWeighting::kContrastive, kernels::Precision::kBf16);
  EXPECT_LE((eg.weights.cpu() - ec.weights).abs().max().item<float>(), 2e-2 * 10);
}

// Multi-adapter LoRA on the GPU against its CPU path: outputs and gradients (x, A, B), a client
// without rows and a rank that is not a multiple of the 32-wide tile included.
TEST_F(CudaOps, MultiLoraMatchesCpu) {
  torch::manual_seed(4);
  const std::vector<int64_t> offsets{0, 70, 70, 73, 200};
  const int64_t in = 67, out = 300, rank = 13, clients = 4, rows = 200;
  const auto w = torch::randn({out, in}) / 8, bias = torch::randn({out});
  const auto x = torch::randn({rows, in}), gy = torch::randn({rows, out});
  const auto a = torch::randn({clients, rank, in}) / 8, b = torch::randn({clients, out, rank});
  auto run = [&](torch::Device d) {
    auto xx = x.to(d).requires_grad_(), aa = a.to(d).requires_grad_(),
         bb = b.to(d).requires_grad_();
    const auto y = ops::multi_lora_linear(xx, w.to(d), bias.to(d), aa, bb, offsets, 1.5);
    y.backward(gy.to(d));
    return std::vector<torch::Tensor>{y.detach().cpu(), xx.grad().cpu(), aa.grad().cpu(),
                                      bb.grad().cpu()};
  };
  const auto got = run(dev_), want = run(torch::kCPU);
  for (size_t i = 0; i < want.size(); ++i)
    EXPECT_TRUE(torch::allclose(got[i], want[i], 1e-4, 1e-4 * want[i].abs().max().item<double>()))
        << "output " << i;
}

// The routers give the CPU's routing exactly (same selection rule, same tie order); the expert FFN
// on CUDA (grouped GEMM, CUB permutation, ordered combine) matches the CPU loop in values and in
// every gradient, the router's included. Slot counts not multiples of the 64-row tile.
TEST_F(CudaOps, MoeMatchesCpu) {
  torch::manual_seed(5);
  const int64_t t = 301, d = 70, f = 130, e = 4;
  const auto x0 = torch::randn({t, d});
  const auto wr0 = torch::randn({d, e}) / 8;
  const auto w10 = torch::randn({e, f, d}) / 8, b10 = torch::randn({e, f}) / 10;
  const auto w20 = torch::randn({e, d, f}) / 11, b20 = torch::randn({e, d}) / 10;
  const auto gy = torch::randn({t, d});
  for (bool expert_choice : {true, false}) {
    auto leaves = [&](torch::Device dv) {
      std::vector<torch::Tensor> v;
      for (const auto& p : {x0, wr0, w10, b10, w20, b20})
        v.push_back(p.to(dv).requires_grad_());
      return v;
    };
    auto route = [&](const torch::Tensor& logits) {
      return expert_choice ? ops::route_expert_choice(logits, 77)
                           : ops::route_token_choice(logits, 2);
    };
    auto c = leaves(torch::kCPU), g = leaves(dev_);
    const auto rc = route(torch::mm(c[0], c[1])), rg = route(torch::mm(g[0], g[1]));
    ASSERT_EQ(rc.offsets, rg.offsets) << expert_choice;
    ASSERT_TRUE(torch::equal(rc.order, rg.order.cpu())) << expert_choice;
    const auto yc = ops::moe_ffn_loop(c[0], rc, c[2], c[3], c[4], c[5]);
    const auto yg = ops::moe_ffn(g[0], rg, g[2], g[3], g[4], g[5]);
    EXPECT_TRUE(torch::allclose(yg.cpu(), yc, 1e-4, 1e-5)) << expert_choice;
    yc.backward(gy);
    yg.backward(gy.to(dev_));
    for (size_t i = 0; i < c.size(); ++i)
      EXPECT_TRUE(torch::allclose(g[i].grad().cpu(), c[i].grad(), 1e-4, 1e-5))
          << "gradient " << i << " expert_choice " << expert_choice;
  }
}

}  // namespace
}  // namespace mmfl::fusion
