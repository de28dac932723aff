// The InfoNCE autograd adapter against LibTorch's own composition (matmul + cross_entropy).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "fusion/contrastive.h"
#include "fusion/ops/infonce.h"
#include "mmfl/error.h"

namespace mmfl::fusion {
namespace {

void compare(int64_t n, int64_t d, double tau_value) {
  torch::manual_seed(::testing::UnitTest::GetInstance()->random_seed() + n * 31 + d);
  auto mk = [&] {
    return torch::nn::functional::normalize(torch::randn({n, d}),
                                            torch::nn::functional::NormalizeFuncOptions().dim(1))
        .requires_grad_();
  };
  auto i1 = mk(), t1 = mk();
  auto i2 = i1.detach().clone().requires_grad_(), t2 = t1.detach().clone().requires_grad_();
  auto tau1 = torch::full({1}, tau_value).requires_grad_();
  auto tau2 = tau1.detach().clone().requires_grad_();
  const auto fused = ops::infonce(i1, t1, tau1);
  const auto ref = infonce_composed(i2, t2, tau2);
  // fp32 throughout: per-element atol + rtol * |ref|.
  const double atol = 1e-5, rtol = 1e-4;
  EXPECT_TRUE(torch::allclose(fused, ref, rtol, atol))
      << fused.item<float>() << " vs " << ref.item<float>();
  (fused * 1.5).backward();
  (ref * 1.5).backward();
  // A gradient entry sums n terms of the size of the largest entries (1 / tau amplifies them:
  // up to 6 at tau 0.01), so its fp32 rounding scales with that size, not with the entry itself.
  auto grad_close = [&](const torch::Tensor& got, const torch::Tensor& want, const char* what) {
    const double scale = std::max(1.0, want.abs().max().item<double>());
    EXPECT_TRUE(torch::allclose(got, want, rtol, atol * scale))
        << what << ", n " << n << " d " << d << ": max diff "
        << (got - want).abs().max().item<double>() << ", largest |grad| " << scale;
  };
  grad_close(i1.grad(), i2.grad(), "grad img");
  grad_close(t1.grad(), t2.grad(), "grad txt");
  EXPECT_TRUE(torch::allclose(tau1.grad(), tau2.grad(), 1e-3, 1e-4))
      << tau1.grad().item<float>() << " vs " << tau2.grad().item<float>();
}

TEST(InfoNceOp, MatchesComposition) {
  for (auto [n, d] :
       std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {2, 3}, {7, 16}, {65, 33}, {130, 64}})
    compare(n, d, 0.1);
  compare(33, 8, 0.01);  // large logits: the online log-sum-exp must stay stable
}

TEST(InfoNceOp, ClipLossImplsAgree) {
  torch::manual_seed(5);
  const auto a = torch::randn({20, 12}), b = torch::randn({20, 12});
  EXPECT_TRUE(torch::allclose(clip_loss(a, b, 0.07, InfoNceImpl::kFused),
                              clip_loss(a, b, 0.07, InfoNceImpl::kComposed), 1e-4, 1e-5));
}

// The precision option picks the CUDA path's arithmetic; CPU tensors compute in fp32 whatever it
// says (same bits, forward and backward).
TEST(InfoNceOp, PrecisionDoesNotChangeTheCpuPath) {
  torch::manual_seed(6);
  const auto i = torch::randn({40, 24}), t = torch::randn({40, 24});
  auto i1 = i.clone().requires_grad_(), i2 = i.clone().requires_grad_();
  const auto a = ops::infonce(i1, t, torch::full({1}, 0.2f));
  const auto b = ops::infonce(i2, t, torch::full({1}, 0.2f), kernels::Precision::kBf16);
  EXPECT_TRUE(torch::equal(a, b));
  a.backward();
  b.backward();
  EXPECT_TRUE(torch::equal(i1.grad(), i2.grad()));
}

TEST(InfoNceOp, BadShapesAreRefused) {
  EXPECT_THROW(ops::infonce(torch::randn({4, 3}), torch::randn({4, 2}), torch::ones({1})), Error);
  EXPECT_THROW(ops::infonce(torch::randn({4, 3}), torch::randn({4, 3}), torch::ones({2})), Error);
  EXPECT_THROW(ops::infonce(torch::randn({4, 3}, torch::kFloat64),
                            torch::randn({4, 3}, torch::kFloat64), torch::ones({1})),
               Error);
}

}  // namespace
}  // namespace mmfl::fusion
