// fusion::ops MoE routing and expert FFN on CPU tensors: expert choice gives every expert exactly
// its capacity (the top logits, ties to the lower token), token choice gives every token its top-k
// experts; the loop baseline and moe_ffn equal a dense computation (every expert on every token,
// weighted by a dense gate matrix) in values and gradients; argument errors name what to fix.
#include <gtest/gtest.h>
#include <torch/autograd.h>
#include <torch/nn/functional/activation.h>
#include <torch/nn/functional/linear.h>

#include <functional>
#include <set>
#include <string>
#include <vector>

#include "fusion/ops/moe.h"
#include "mmfl/error.h"

namespace mmfl::fusion {
namespace {

namespace F = torch::nn::functional;

class MoeOp : public ::testing::Test {
 protected:
  void SetUp() override { torch::manual_seed(::testing::UnitTest::GetInstance()->random_seed()); }
};

// Logits with many exact ties: a few distinct values.
torch::Tensor tied_logits(int64_t tokens, int64_t experts) {
  return torch::randint(-3, 4, {tokens, experts}).to(torch::kFloat32) * 0.5;
}

// max |a - b| <= atol + rtol max |b|: fp32 sums in different orders.
void expect_close(const torch::Tensor& a, const torch::Tensor& b, const std::string& what) {
  ASSERT_TRUE(a.defined()) << what;
  ASSERT_TRUE(b.defined()) << what;
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  if (b.numel() == 0) return;
  const double err = (a - b).abs().max().item<double>();
  const double bound = 1e-5 + 1e-5 * b.abs().max().item<double>();
  EXPECT_LE(err, bound) << what;
}

void check_expert_choice(const torch::Tensor& logits, int64_t capacity) {
  const int64_t tokens = logits.size(0), experts = logits.size(1);
  SCOPED_TRACE("T " + std::to_string(tokens) + " E " + std::to_string(experts) + " capacity " +
               std::to_string(capacity));
  auto l = logits.clone().requires_grad_();
  const auto r = ops::route_expert_choice(l, capacity);
  ASSERT_EQ(r.offsets.size(), size_t(experts + 1));
  ASSERT_EQ(r.order.size(0), experts * capacity);
  ASSERT_EQ(r.gate.size(0), experts * capacity);
  const auto order = r.order.contiguous();
  const int64_t* o = order.data_ptr<int64_t>();
  const auto lv = logits.accessor<float, 2>();
  for (int64_t e = 0; e < experts; ++e) {
    ASSERT_EQ(r.offsets[e], e * capacity) << "expert " << e;
    ASSERT_EQ(r.offsets[e + 1] - r.offsets[e], capacity) << "expert " << e;
    std::set<int64_t> chosen;
    for (int64_t s = r.offsets[e]; s < r.offsets[e + 1]; ++s) {
      ASSERT_TRUE(o[s] >= 0 && o[s] < tokens);
      if (s > r.offsets[e]) EXPECT_LT(o[s - 1], o[s]) << "slots not in increasing token order";
      chosen.insert(o[s]);
      EXPECT_FLOAT_EQ(r.gate[s].item<float>(), torch::sigmoid(logits[o[s]][e]).item<float>());
    }
    // Every chosen token beats every other token: a higher logit, or the same and a lower index.
    for (int64_t c : chosen)
      for (int64_t t = 0; t < tokens; ++t)
        if (!chosen.count(t))
          EXPECT_TRUE(lv[c][e] > lv[t][e] || (lv[c][e] == lv[t][e] && c < t))
              << "expert " << e << " took token " << c << " over " << t;
  }
  // dL/dlogits of sum(gate) is sigmoid' at the chosen entries and 0 elsewhere.
  r.gate.sum().backward();
  auto expect = torch::zeros_like(logits);
  for (int64_t e = 0; e < experts; ++e)
    for (int64_t s = r.offsets[e]; s < r.offsets[e + 1]; ++s) {
      const auto sg = torch::sigmoid(logits[o[s]][e]);
      expect[o[s]][e] = sg * (1 - sg);
    }
  expect_close(l.grad(), expect, "grad logits");
}

TEST_F(MoeOp, ExpertChoiceGivesEveryExpertItsCapacityOfTopTokens) {
  check_expert_choice(torch::randn({1, 1}), 1);
  check_expert_choice(torch::randn({37, 4}), 9);
  check_expert_choice(tied_logits(50, 3), 17);
  check_expert_choice(tied_logits(13, 5), 13);
  check_expert_choice(torch::zeros({8, 2}), 3);  // all tied: the first 3 tokens
}

void check_token_choice(const torch::Tensor& logits, int64_t k) {
  const int64_t tokens = logits.size(0), experts = logits.size(1);
  SCOPED_TRACE("T " + std::to_string(tokens) + " E " + std::to_string(experts) + " k " +
               std::to_string(k));
  const auto r = ops::route_token_choice(logits, k);
  ASSERT_EQ(r.offsets.size(), size_t(experts + 1));
  ASSERT_EQ(r.offsets.front(), 0);
  ASSERT_EQ(r.offsets.back(), tokens * k);
  const auto order = r.order.contiguous();
  const int64_t* o = order.data_ptr<int64_t>();
  const auto lv = logits.accessor<float, 2>();
  const auto probs = torch::softmax(logits, 1);
  std::vector<std::set<int64_t>> picked(tokens);
  for (int64_t e = 0; e < experts; ++e)
    for (int64_t s = r.offsets[e]; s < r.offsets[e + 1]; ++s) {
      ASSERT_TRUE(o[s] >= 0 && o[s] < tokens);
      if (s > r.offsets[e]) EXPECT_LT(o[s - 1], o[s]) << "expert " << e;
      EXPECT_TRUE(picked[o[s]].insert(e).second) << "token " << o[s] << " twice at expert " << e;
      EXPECT_FLOAT_EQ(r.gate[s].item<float>(), probs[o[s]][e].item<float>());
    }
  for (int64_t t = 0; t < tokens; ++t) {
    ASSERT_EQ(picked[t].size(), size_t(k)) << "token " << t;
    for (int64_t c : picked[t])
      for (int64_t e = 0; e < experts; ++e)
        if (!picked[t].count(e))
          EXPECT_TRUE(lv[t][c] > lv[t][e] || (lv[t][c] == lv[t][e] && c < e))
              << "token " << t << " picked expert " << c << " over " << e;
  }
}

TEST_F(MoeOp, TokenChoiceGivesEveryTokenItsTopK) {
  check_token_choice(torch::randn({1, 1}), 1);
  check_token_choice(torch::randn({29, 8}), 2);
  check_token_choice(tied_logits(40, 6), 3);
  check_token_choice(tied_logits(7, 4), 4);
  check_token_choice(torch::zeros({5, 3}), 2);  // all tied: experts 0 and 1
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

struct Weights {
  torch::Tensor x, gate, w1, b1, w2, b2;
  std::vector<torch::Tensor> all() const { return {x, gate, w1, b1, w2, b2}; }
};

Weights random_weights(int64_t tokens, int64_t slots, int64_t experts, int64_t d, int64_t f) {
  return {torch::randn({tokens, d}),
          torch::rand({slots}),
          torch::randn({experts, f, d}) / std::sqrt(double(d)),
          torch::randn({experts, f}) * 0.1,
          torch::randn({experts, d, f}) / std::sqrt(double(f)),
          torch::randn({experts, d}) * 0.1};
}

Weights leaves(const Weights& w) {
  Weights c;
  c.x = w.x.clone().requires_grad_();
  c.gate = w.gate.clone().requires_grad_();
  c.w1 = w.w1.clone().requires_grad_();
  c.b1 = w.b1.clone().requires_grad_();
  c.w2 = w.w2.clone().requires_grad_();
  c.b2 = w.b2.clone().requires_grad_();
  return c;
}

// Every expert on every token, weighted by the dense [T, E] gate matrix (0 where no slot).
torch::Tensor dense_moe(const Weights& w, const torch::Tensor& order,
                        const std::vector<int64_t>& offsets) {
  const int64_t tokens = w.x.size(0), experts = w.w1.size(0);
  std::vector<int64_t> expert_of;
  for (int64_t e = 0; e < experts; ++e)
    for (int64_t s = offsets[e]; s < offsets[e + 1]; ++s)
      expert_of.push_back(e);
  const auto flat = order * experts + torch::tensor(expert_of, torch::kInt64);
  const auto g = torch::zeros({tokens * experts}).index_put({flat}, w.gate).view({tokens, experts});
  auto y = torch::zeros_like(w.x);
  for (int64_t e = 0; e < experts; ++e) {
    const auto h = F::gelu(F::linear(w.x, w.w1[e], w.b1[e]));
    y = y + g.select(1, e).unsqueeze(1) * F::linear(h, w.w2[e], w.b2[e]);
  }
  return y;
}

using FfnFn =
    std::function<torch::Tensor(const torch::Tensor&, const ops::MoeRouting&, const torch::Tensor&,
                                const torch::Tensor&, const torch::Tensor&, const torch::Tensor&)>;

void check_against_dense(const FfnFn& fn, const std::vector<int64_t>& counts, int64_t tokens,
                         int64_t d, int64_t f) {
  const int64_t experts = static_cast<int64_t>(counts.size());
  std::vector<int64_t> offsets{0};
  std::vector<torch::Tensor> parts;
  for (int64_t n : counts) {
    offsets.push_back(offsets.back() + n);
    // n distinct tokens in increasing order (an expert names a token at most once).
    parts.push_back(std::get<0>(torch::randperm(tokens, torch::kInt64).slice(0, 0, n).sort()));
  }
  const auto order = torch::cat(parts);
  SCOPED_TRACE("T " + std::to_string(tokens) + " S " + std::to_string(offsets.back()) + " d " +
               std::to_string(d) + " f " + std::to_string(f));
  const Weights w0 = random_weights(tokens, offsets.back(), experts, d, f);
  const Weights a = leaves(w0), b = leaves(w0);
  const auto gy = torch::randn({tokens, d});
  const auto y = fn(a.x, {order, offsets, a.gate}, a.w1, a.b1, a.w2, a.b2);
  // With no slot at all, y is a constant 0 (no graph) and every gradient is 0.
  if (y.requires_grad()) y.backward(gy);
  const auto y2 = dense_moe(b, order, offsets);
  y2.backward(gy);
  expect_close(y, y2, "y");
  const char* names[] = {"x", "gate", "w1", "b1", "w2", "b2"};
  const auto ga = a.all(), gb = b.all();
  for (size_t i = 0; i < ga.size(); ++i) {
    const auto g1 = ga[i].grad().defined() ? ga[i].grad() : torch::zeros_like(ga[i]);
    const auto g2 = gb[i].grad().defined() ? gb[i].grad() : torch::zeros_like(gb[i]);
    expect_close(g1, g2, std::string("grad ") + names[i]);
  }
  // An unrouted token gets exactly 0.
  std::vector<bool> routed(tokens, false);
  for (int64_t s = 0; s < order.size(0); ++s)
    routed[order[s].item<int64_t>()] = true;
  for (int64_t t = 0; t < tokens; ++t)
    if (!routed[t]) EXPECT_EQ(y[t].abs().max().item<float>(), 0.0f) << "token " << t;
}

TEST_F(MoeOp, LoopEqualsDenseComputationWithGradients) {
  check_against_dense(ops::moe_ffn_loop, {1}, 1, 1, 1);
  check_against_dense(ops::moe_ffn_loop, {3, 0, 5}, 9, 7, 11);
  check_against_dense(ops::moe_ffn_loop, {0, 0}, 4, 3, 2);
}

TEST_F(MoeOp, FfnEqualsDenseComputationWithGradients) {
  check_against_dense(ops::moe_ffn, {1}, 1, 1, 1);
  check_against_dense(ops::moe_ffn, {3, 0, 5}, 9, 7, 11);
  check_against_dense(ops::moe_ffn, {0, 0}, 4, 3, 2);
  check_against_dense(ops::moe_ffn, {17, 33, 1, 0, 40}, 41, 19, 70);
}

// The whole layer as a model runs it: router logits x W_r, expert-choice or token-choice routing,
// the expert FFN; the kernels' op against the loop in y and in every gradient, the router's
// included (through the gates).
TEST_F(MoeOp, RoutedFfnMatchesLoopWithRouterGradients) {
  const int64_t t = 67, d = 13, f = 29, e = 5;
  const std::vector<torch::Tensor> init{torch::randn({t, d}),        torch::randn({d, e}) / 4,
                                        torch::randn({e, f, d}) / 4, torch::randn({e, f}) / 10,
                                        torch::randn({e, d, f}) / 5, torch::randn({e, d}) / 10};
  const auto gy = torch::randn({t, d});
  for (int mode = 0; mode < 3; ++mode) {
    SCOPED_TRACE("mode " + std::to_string(mode));
    auto run = [&](const FfnFn& fn) {
      std::vector<torch::Tensor> v;
      for (const auto& p : init)
        v.push_back(p.clone().requires_grad_());
      const auto logits = torch::mm(v[0], v[1]);
      const auto r = mode == 0 ? ops::route_expert_choice(logits, 20)
                     : mode == 1
                         ? ops::route_token_choice(logits, 2)
                         : ops::route_expert_choice(logits, t);  // every token, every expert
      fn(v[0], r, v[2], v[3], v[4], v[5]).backward(gy);
      v.push_back(fn(v[0], r, v[2], v[3], v[4], v[5]).detach());
      return v;
    };
    const auto a = run(ops::moe_ffn), b = run(ops::moe_ffn_loop);
    expect_close(a.back(), b.back(), "y");
    const char* names[] = {"x", "router", "w1", "b1", "w2", "b2"};
    for (size_t i = 0; i < init.size(); ++i)
      expect_close(a[i].grad(), b[i].grad(), std::string("grad ") + names[i]);
  }
}

// Two modality groups interleaved in x (image tokens at even rows, text at odd), each routed by
// expert choice over its own tokens, run as one call: equal to the two groups run separately.
TEST_F(MoeOp, ConcatenatedGroupRoutingsEqualSeparateCalls) {
  const int64_t t = 40, d = 6, f = 10;
  const auto x = torch::randn({t, d});
  const auto img_rows = torch::arange(0, t, 2, torch::kInt64),
             txt_rows = torch::arange(1, t, 2, torch::kInt64);
  const auto li = torch::randn({t / 2, 3}), lt = torch::randn({t / 2, 2});
  const auto ri = ops::route_expert_choice(li, 5), rt = ops::route_expert_choice(lt, 7);
  const auto r = ops::concat_routings({ri, rt}, {img_rows, txt_rows});
  EXPECT_EQ(r.offsets, (std::vector<int64_t>{0, 5, 10, 15, 22, 29}));
  const auto w1 = torch::randn({5, f, d}), b1 = torch::randn({5, f}), w2 = torch::randn({5, d, f}),
             b2 = torch::randn({5, d});
  const auto y = ops::moe_ffn(x, r, w1, b1, w2, b2);
  auto sep = torch::zeros({t, d});
  sep.index_copy_(0, img_rows,
                  ops::moe_ffn(x.index_select(0, img_rows), ri, w1.narrow(0, 0, 3),
                               b1.narrow(0, 0, 3), w2.narrow(0, 0, 3), b2.narrow(0, 0, 3)));
  sep.index_copy_(0, txt_rows,
                  ops::moe_ffn(x.index_select(0, txt_rows), rt, w1.narrow(0, 3, 2),
                               b1.narrow(0, 3, 2), w2.narrow(0, 3, 2), b2.narrow(0, 3, 2)));
  expect_close(y, sep, "y");
  EXPECT_NE(error_of([&] {
              ops::concat_routings({ri, rt}, {img_rows});
            }).find("2 routings but 1"),
            std::string::npos);
}

TEST_F(MoeOp, NoInputGradientWhenXIsConstant) {
  const auto x = torch::randn({6, 3});
  auto w1 = torch::randn({2, 4, 3}).requires_grad_();
  const ops::MoeRouting r{torch::tensor({0, 2, 1, 5}, torch::kInt64), {0, 2, 4}, torch::rand({4})};
  ops::moe_ffn(x, r, w1, torch::zeros({2, 4}), torch::randn({2, 3, 4}), torch::zeros({2, 3}))
      .sum()
      .backward();
  EXPECT_FALSE(x.grad().defined());
  EXPECT_TRUE(w1.grad().defined());
}

TEST_F(MoeOp, RejectsBadArgumentsNamingWhatToFix) {
  const auto logits = torch::randn({6, 2});
  EXPECT_NE(error_of([&] { ops::route_expert_choice(logits, 7); }).find("capacity must be in 1"),
            std::string::npos);
  EXPECT_NE(error_of([&] { ops::route_token_choice(logits, 3); }).find("k must be in 1"),
            std::string::npos);
  EXPECT_NE(error_of([&] { ops::route_token_choice(logits.view({12}), 1); }).find("2-D"),
            std::string::npos);
  auto nan = logits.clone();
  nan[2][1] = std::nanf("");
  EXPECT_NE(error_of([&] { ops::route_expert_choice(nan, 2); }).find("NaN"), std::string::npos);

  const Weights w = random_weights(6, 4, 2, 3, 5);
  const ops::MoeRouting r{torch::tensor({0, 2, 1, 5}, torch::kInt64), {0, 2, 4}, w.gate};
  auto call = [&](const ops::MoeRouting& rr, const torch::Tensor& w1) {
    return error_of([&] { ops::moe_ffn(w.x, rr, w1, w.b1, w.w2, w.b2); });
  };
  EXPECT_EQ(call(r, w.w1), "");
  EXPECT_NE(call(r, torch::randn({2, 5, 4})).find("w1 must be [experts, d_ff, 3]"),
            std::string::npos);
  EXPECT_NE(call({r.order, {0, 4}, r.gate}, w.w1).find("experts + 1 = 3"), std::string::npos);
  EXPECT_NE(call({r.order, {0, 3, 2}, r.gate}, w.w1).find("expert 1"), std::string::npos);
  EXPECT_NE(call({r.order, {0, 2, 3}, r.gate}, w.w1).find("routing.order must be int64 [slots]"),
            std::string::npos);
  EXPECT_NE(call({torch::tensor({0, 2, 1, 6}, torch::kInt64), r.offsets, r.gate}, w.w1)
                .find("x has 6 tokens"),
            std::string::npos);
  EXPECT_NE(call({r.order, r.offsets, torch::rand({3})}, w.w1).find("routing.gate must be [4]"),
            std::string::npos);
}

}  // namespace
}  // namespace mmfl::fusion
