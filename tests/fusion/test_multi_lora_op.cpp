// fusion::ops::multi_lora_linear on CPU tensors: outputs and gradients (x, A, B) equal a loop of
// per-client LoRA compositions under autograd, zero-row clients and R = 1 included; argument errors
// name what to fix.
#include <gtest/gtest.h>
#include <torch/autograd.h>
#include <torch/nn/functional/linear.h>

#include <string>
#include <vector>

#include "fusion/ops/multi_lora.h"
#include "mmfl/error.h"

namespace mmfl::fusion {
namespace {

namespace F = torch::nn::functional;

struct Case {
  std::vector<int64_t> client_rows;
  int64_t in, out, rank;
  bool bias;
};

std::vector<int64_t> offsets_of(const std::vector<int64_t>& rows) {
  std::vector<int64_t> o{0};
  for (int64_t n : rows)
    o.push_back(o.back() + n);
  return o;
}

// max |a - b| <= atol + rtol max |b|: fp32 sums in different orders.
void expect_close(const torch::Tensor& a, const torch::Tensor& b, const std::string& what) {
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  if (b.numel() == 0) return;
  const double err = (a - b).abs().max().item<double>();
  const double bound = 1e-5 + 1e-5 * b.abs().max().item<double>();
  EXPECT_LE(err, bound) << what;
}

TEST(MultiLoraOp, MatchesPerClientCompositionWithAutograd) {
  torch::manual_seed(11);
  const std::vector<Case> cases = {
      {{1}, 1, 1, 1, true},
      {{5, 0, 9}, 33, 17, 3, true},
      {{0, 70, 2, 33}, 67, 45, 13, false},
      {{64, 64, 0}, 300, 257, 64, true},
  };
  for (const Case& c : cases) {
    const auto offsets = offsets_of(c.client_rows);
    const int64_t clients = static_cast<int64_t>(c.client_rows.size()), rows = offsets.back();
    SCOPED_TRACE("rows " + std::to_string(rows) + " in " + std::to_string(c.in) + " out " +
                 std::to_string(c.out) + " rank " + std::to_string(c.rank));
    const auto w = torch::randn({c.out, c.in}) / std::sqrt(double(c.in));
    const auto b = c.bias ? torch::randn({c.out}) : torch::Tensor();
    const auto x0 = torch::randn({rows, c.in});
    const auto a0 = torch::randn({clients, c.rank, c.in}) / std::sqrt(double(c.in));
    const auto b0 = torch::randn({clients, c.out, c.rank});
    const auto gy = torch::randn({rows, c.out});
    const double scale = 16.0 / double(c.rank);

    auto x = x0.clone().requires_grad_(), a = a0.clone().requires_grad_(),
         bb = b0.clone().requires_grad_();
    const auto y = ops::multi_lora_linear(x, w, b, a, bb, offsets, scale);
    y.backward(gy);

    // The baseline: one LoRA composition per client, autograd through each.
    auto x2 = x0.clone().requires_grad_(), a2 = a0.clone().requires_grad_(),
         b2 = b0.clone().requires_grad_();
    std::vector<torch::Tensor> ys;
    for (int64_t k = 0; k < clients; ++k) {
      const auto xk = x2.narrow(0, offsets[k], offsets[k + 1] - offsets[k]);
      ys.push_back(F::linear(xk, w, b) + scale * F::linear(F::linear(xk, a2[k]), b2[k]));
    }
    const auto y2 = torch::cat(ys);
    y2.backward(gy);
    expect_close(y, y2, "y");
    expect_close(x.grad(), x2.grad(), "grad x");
    expect_close(a.grad(), a2.grad().defined() ? a2.grad() : torch::zeros_like(a0), "grad A");
    expect_close(bb.grad(), b2.grad().defined() ? b2.grad() : torch::zeros_like(b0), "grad B");
    for (int64_t k = 0; k < clients; ++k)
      if (c.client_rows[k] == 0) {
        EXPECT_EQ(a.grad()[k].abs().max().item<float>(), 0.0f) << "client " << k;
        EXPECT_EQ(bb.grad()[k].abs().max().item<float>(), 0.0f) << "client " << k;
      }
  }
}

TEST(MultiLoraOp, NoInputGradientWhenXIsConstant) {
  const auto x = torch::randn({6, 5});
  auto a = torch::randn({2, 2, 5}).requires_grad_();
  const auto y = ops::multi_lora_linear(x, torch::randn({3, 5}), torch::Tensor(), a,
                                        torch::randn({2, 3, 2}), {0, 4, 6}, 1.0);
  y.sum().backward();
  EXPECT_FALSE(x.grad().defined());
  EXPECT_TRUE(a.grad().defined());
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(MultiLoraOp, RejectsBadArgumentsNamingWhatToFix) {
  const auto x = torch::randn({4, 5}), w = torch::randn({3, 5}), bias = torch::randn({3});
  const auto a = torch::randn({2, 2, 5}), b = torch::randn({2, 3, 2});
  auto call = [&](const torch::Tensor& xx, const torch::Tensor& ww, const torch::Tensor& bi,
                  const torch::Tensor& aa, const torch::Tensor& bb, std::vector<int64_t> off) {
    return error_of([&] { ops::multi_lora_linear(xx, ww, bi, aa, bb, off, 2.0); });
  };
  EXPECT_EQ(call(x, w, bias, a, b, {0, 1, 4}), "");
  EXPECT_NE(call(x.view({2, 2, 5}), w, bias, a, b, {0, 1, 4}).find("x must be 2-D"),
            std::string::npos);
  EXPECT_NE(call(x.to(torch::kFloat64), w, bias, a, b, {0, 1, 4}).find("x must be float32"),
            std::string::npos);
  EXPECT_NE(call(x, torch::randn({3, 4}), bias, a, b, {0, 1, 4}).find("weight must be [out, in]"),
            std::string::npos);
  EXPECT_NE(call(x, w, torch::randn({4}), a, b, {0, 1, 4}).find("bias must be [3]"),
            std::string::npos);
  EXPECT_NE(call(x, w, bias, torch::randn({2, 2, 4}), b, {0, 1, 4}).find("A must be [clients"),
            std::string::npos);
  EXPECT_NE(call(x, w, bias, a, torch::randn({2, 3, 3}), {0, 1, 4}).find("B must be"),
            std::string::npos);
  EXPECT_NE(call(x, w, bias, a, b, {0, 4}).find("clients + 1 = 3"), std::string::npos);
  EXPECT_NE(call(x, w, bias, a, b, {1, 2, 4}).find("offsets[0] must be 0"), std::string::npos);
  EXPECT_NE(call(x, w, bias, a, b, {0, 3, 2}).find("client 1"), std::string::npos);
  EXPECT_NE(call(x, w, bias, a, b, {0, 1, 3}).find("must equal x's rows 4"), std::string::npos);
  EXPECT_NE(call(x, w.clone().requires_grad_(), bias, a, b, {0, 1, 4}).find("frozen base"),
            std::string::npos);
}

}  // namespace
}  // namespace mmfl::fusion
