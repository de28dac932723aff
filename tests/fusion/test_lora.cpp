// fusion/lora: adapters chosen by name on a (tiny, random) MiniLM; the adapted model equals the
// base at init, only adapters get gradients, merging gives the same function.
#include <gtest/gtest.h>
#include <torch/nn/functional/linear.h>
#include <torch/optim/sgd.h>

#include "fusion/lora/lora.h"
#include "minilm_fixture.h"

namespace mmfl::fusion {
namespace {

struct Batch {
  torch::Tensor ids, mask;
};
Batch batch() {
  const auto ids = torch::tensor({{2, 5, 6, 7, 3, 0}, {2, 9, 10, 3, 0, 0}}, torch::kInt64);
  return {ids, (ids != 0).to(torch::kInt64)};
}

MiniLm tiny(uint64_t seed = 3, double base_dropout = 0.1) {
  torch::manual_seed(seed);
  auto c = testing::tiny_config();
  c.hidden_dropout = c.attention_dropout = base_dropout;
  MiniLm m(c);
  m->eval();
  return m;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.reason();
  }
  return "";
}

TEST(Lora, TargetsByNamePatternGlobAndAllLinear) {
  EXPECT_TRUE(lora_target_matches("encoder.layer.0.attention.self.query", "query"));
  EXPECT_TRUE(lora_target_matches("encoder.layer.0.attention.self.query", "self.query"));
  EXPECT_TRUE(lora_target_matches("encoder.layer.0.attention.self.query", "*.query"));
  EXPECT_FALSE(lora_target_matches("encoder.layer.0.attention.self.query", "ery"));
  EXPECT_FALSE(lora_target_matches("encoder.layer.0.attention.self.query", "*.value"));
  EXPECT_TRUE(lora_target_matches("encoder.layer.1.output.dense", "*.layer.1.*"));
  EXPECT_TRUE(lora_target_matches("anything", "all-linear"));

  auto m = tiny();
  LoraOptions o;  // query, value
  auto names = apply_lora(*m, o);
  EXPECT_EQ(names,
            (std::vector<std::string>{
                "encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.value",
                "encoder.layer.1.attention.self.query", "encoder.layer.1.attention.self.value"}));
  auto all = tiny();
  o.targets = {"all-linear"};
  EXPECT_EQ(apply_lora(*all, o).size(), 12u);  // 6 linear layers in each of 2 layers
  auto globbed = tiny();
  o.targets = {"*.attention.*"};
  EXPECT_EQ(apply_lora(*globbed, o).size(), 8u);  // query, key, value, attention.output.dense
}

TEST(Lora, BadTargetsAndOptionsNameTheKey) {
  auto m = tiny();
  LoraOptions o;
  o.targets = {"query", "qkv"};
  const std::string msg = error_of([&] { apply_lora(*m, o); });
  EXPECT_NE(msg.find("config key 'lora.targets': 'qkv' matches no linear layer"), std::string::npos)
      << msg;
  EXPECT_NE(msg.find("encoder.layer.0.attention.self.query"), std::string::npos) << msg;
  o = LoraOptions();
  o.rank = 9;  // above min(in, out) = 8
  EXPECT_NE(error_of([&] { apply_lora(*tiny(), o); }).find("lora.rank = 9 is out of range [1, 8]"),
            std::string::npos);
  o = LoraOptions();
  o.dropout = 1.0;
  EXPECT_NE(error_of([&] { apply_lora(*tiny(), o); }).find("'lora.dropout'"), std::string::npos);
  o = LoraOptions();
  o.targets = {"all-linear", "query"};
  EXPECT_NE(error_of([&] { apply_lora(*tiny(), o); }).find("goes alone"), std::string::npos);
  // An adapter twice on one layer.
  auto twice = tiny();
  apply_lora(*twice, LoraOptions());
  EXPECT_NE(error_of([&] { apply_lora(*twice, LoraOptions()); }).find("has an adapter already"),
            std::string::npos);
}

TEST(Lora, AdaptedModelEqualsTheBaseAtInit) {
  auto base = tiny(3, 0.0);
  auto adapted = tiny(3, 0.0);  // same seed: same base weights
  LoraOptions o;
  o.targets = {"all-linear"};
  o.rank = 4;
  o.dropout = 0.1;
  apply_lora(*adapted, o);
  const auto b = batch();
  torch::NoGradGuard g;
  EXPECT_TRUE(torch::equal(base->forward(b.ids, b.mask), adapted->forward(b.ids, b.mask)));
  // Also in training mode, with adapter dropout (B is zero, so dropout cannot show; the base's
  // own dropout is 0 here).
  base->train();
  adapted->train();
  EXPECT_TRUE(torch::equal(base->forward(b.ids, b.mask), adapted->forward(b.ids, b.mask)));
}

TEST(Lora, OnlyAdaptersGetGradients) {
  auto m = tiny();
  LoraOptions o;
  o.rank = 2;
  apply_lora(*m, o);
  const auto params = lora_parameters(*m);
  EXPECT_EQ(params.size(), 8u);  // A and B of 4 layers
  const auto b = batch();
  m->embed(b.ids, b.mask).pow(3).sum().backward();
  int adapters = 0;
  for (const auto& p : m->named_parameters()) {
    const bool is_adapter =
        p.key().find("lora_A") != std::string::npos || p.key().find("lora_B") != std::string::npos;
    if (is_adapter) {
      ++adapters;
      EXPECT_TRUE(p.value().requires_grad()) << p.key();
      ASSERT_TRUE(p.value().grad().defined()) << p.key();
    } else {
      EXPECT_FALSE(p.value().requires_grad()) << p.key();
      EXPECT_FALSE(p.value().grad().defined()) << p.key();
    }
    // With B = 0 the gradient reaches B (not A: dL/dA = scale * B^T ..., zero at init).
    if (p.key().find("lora_B") != std::string::npos)
      EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0) << p.key();
  }
  EXPECT_EQ(adapters, 8);
}

TEST(Lora, MergeEqualsTheAdaptedForward) {
  // One layer: W + alpha/r B A computes the same as the wrapped forward.
  torch::manual_seed(5);
  LoraLinear l(7, 5);
  l->add_adapter(3, 6.0, 0.0, 11);
  {
    torch::NoGradGuard g;
    l->lora_B.normal_();
  }
  const auto x = torch::randn({4, 7});
  const auto want = l->forward(x).detach();
  const auto merged = torch::nn::functional::linear(x, l->merged_weight(), l->bias);
  EXPECT_LE((merged - want).abs().max().item<double>(), 1e-5);
  EXPECT_DOUBLE_EQ(l->scale, 2.0);

  // The whole model after a training step: merge_lora keeps the function and zeroes B.
  auto m = tiny();
  LoraOptions o;
  o.targets = {"all-linear"};
  o.rank = 2;
  apply_lora(*m, o);
  torch::optim::SGD opt(lora_parameters(*m), torch::optim::SGDOptions(0.5));
  const auto b = batch();
  for (int step = 0; step < 3; ++step) {
    opt.zero_grad();
    m->embed(b.ids, b.mask).select(1, 0).sum().backward();
    opt.step();
  }
  torch::NoGradGuard g;
  const auto before = m->forward(b.ids, b.mask);
  const auto base = tiny()->forward(b.ids, b.mask);
  EXPECT_GT((before - base).abs().max().item<double>(), 1e-3);  // the adapters did something
  merge_lora(*m);
  EXPECT_LE((m->forward(b.ids, b.mask) - before).abs().max().item<double>(), 1e-5);
  for (const auto& p : m->named_parameters())
    if (p.key().find("lora_B") != std::string::npos) {
      EXPECT_EQ(p.value().abs().sum().item<double>(), 0.0) << p.key();
    }
}

TEST(Lora, AdapterDropoutOnlyInTraining) {
  torch::manual_seed(2);
  LoraLinear l(6, 6);
  l->add_adapter(2, 4.0, 0.5, 1);
  {
    torch::NoGradGuard g;
    l->lora_B.normal_();
  }
  const auto x = torch::randn({3, 6});
  l->eval();
  EXPECT_TRUE(torch::equal(l->forward(x), l->forward(x)));
  l->train();
  EXPECT_FALSE(torch::equal(l->forward(x), l->forward(x)));
}

TEST(Lora, SameSeedSameAdapters) {
  auto a = tiny(), b = tiny();
  LoraOptions o;
  o.seed = 42;
  apply_lora(*a, o);
  apply_lora(*b, o);
  const auto pa = lora_parameters(*a), pb = lora_parameters(*b);
  for (size_t i = 0; i < pa.size(); ++i)
    EXPECT_TRUE(torch::equal(pa[i], pb[i]));
  EXPECT_FALSE(torch::equal(pa[0], pa[2]));  // layers draw different A
}

// Cohort mode: three clients (client 1 without rows) through one pass of a tiny MiniLM whose every
// linear layer carries a cohort of three adapters, against the same model run once per client with
// that client's adapter in its single-adapter layers. Loss: sum over clients with rows of each
// client's mean per-sequence loss. Outputs and every client's A/B gradients agree to fp32 rounding
// (the multi-adapter kernels sum in another order than LibTorch): 1e-5 + 1e-4 of the largest value.
TEST(Lora, CohortModeEqualsSeparateSingleAdapterModels) {
  auto m = tiny(5, 0.0);
  LoraOptions o;
  o.targets = {"all-linear"};
  o.rank = 3;  // not a multiple of any tile
  apply_lora(*m, o);
  auto layers = adapted_layers(*m);
  ASSERT_EQ(layers.size(), 12u);  // 2 layers x (q, k, v, attention out, ffn in, ffn out)
  EXPECT_EQ(lora_parameters(*m).size(), 2 * layers.size());
  EXPECT_TRUE(torch::equal(layers[0]->lora_A, lora_parameters(*m)[0]));

  const auto ids = torch::tensor({{2, 5, 6, 7, 3, 0},
                                  {2, 9, 10, 3, 0, 0},
                                  {2, 4, 3, 0, 0, 0},
                                  {2, 11, 8, 6, 5, 3},
                                  {2, 7, 3, 0, 0, 0}},
                                 torch::kInt64);
  const auto mask = (ids != 0).to(torch::kInt64);
  const std::vector<int64_t> offsets{0, 2, 2, 5};  // client 0: 2 sequences, 1: none, 2: 3
  const int64_t clients = 3;
  const auto target = torch::randn({ids.size(0), 8});
  auto client_loss = [&](const torch::Tensor& emb, int64_t begin, int64_t n) {
    return (emb - target.narrow(0, begin, n)).pow(2).sum(1).mean();
  };

  // Per layer: every client's adapter, B non-zero so that A gets gradients too.
  std::vector<torch::Tensor> A, B;
  for (const auto& l : layers) {
    A.push_back(torch::randn({clients, 3, l->in_features}).mul_(0.3).requires_grad_());
    B.push_back(torch::randn({clients, l->out_features, 3}).mul_(0.3).requires_grad_());
  }
  m->train();  // adapter dropout is 0; the base dropout is 0 too (tiny(5, 0.0))
  for (size_t i = 0; i < layers.size(); ++i)
    layers[i]->set_cohort(A[i], B[i], offsets);
  const auto emb = m->embed(ids, mask);
  torch::Tensor loss = torch::zeros({});
  for (int64_t c = 0; c < clients; ++c)
    if (offsets[c + 1] > offsets[c])
      loss = loss + client_loss(emb.narrow(0, offsets[c], offsets[c + 1] - offsets[c]), offsets[c],
                                offsets[c + 1] - offsets[c]);
  loss.backward();
  for (auto& l : layers)
    l->clear_cohort();

  auto close = [](const torch::Tensor& a, const torch::Tensor& b) {
    const double bound = 1e-5 + 1e-4 * b.abs().max().item<double>();
    return (a - b).abs().max().item<double>() <= bound;
  };
  for (int64_t c = 0; c < clients; ++c) {
    SCOPED_TRACE("client " + std::to_string(c));
    const int64_t n = offsets[c + 1] - offsets[c];
    if (n == 0) {  // no rows: zero gradients for its adapters
      for (size_t i = 0; i < layers.size(); ++i) {
        EXPECT_EQ(A[i].grad()[c].abs().max().item<float>(), 0.0f);
        EXPECT_EQ(B[i].grad()[c].abs().max().item<float>(), 0.0f);
      }
      continue;
    }
    // The single-adapter model of client c: its A and B in the layers' own parameters.
    for (size_t i = 0; i < layers.size(); ++i) {
      torch::NoGradGuard no_grad;
      layers[i]->lora_A.copy_(A[i][c]);
      layers[i]->lora_B.copy_(B[i][c]);
      layers[i]->lora_A.mutable_grad() = torch::Tensor();
      layers[i]->lora_B.mutable_grad() = torch::Tensor();
    }
    const auto e = m->embed(ids.narrow(0, offsets[c], n), mask.narrow(0, offsets[c], n));
    EXPECT_TRUE(close(emb.narrow(0, offsets[c], n).detach(), e.detach()));
    client_loss(e, offsets[c], n).backward();
    for (size_t i = 0; i < layers.size(); ++i) {
      EXPECT_TRUE(close(A[i].grad()[c], layers[i]->lora_A.grad())) << "layer " << i << " A";
      EXPECT_TRUE(close(B[i].grad()[c], layers[i]->lora_B.grad())) << "layer " << i << " B";
    }
  }
}

TEST(Lora, CohortModeChecksItsArguments) {
  auto m = tiny(5, 0.0);
  LoraOptions o;
  o.rank = 2;
  o.dropout = 0.1;
  apply_lora(*m, o);
  auto l = adapted_layers(*m)[0];
  const auto a = torch::randn({2, 2, 8}), b = torch::randn({2, 8, 2});
  EXPECT_NE(error_of([&] {
              l->set_cohort(torch::randn({2, 3, 8}), b, {0, 1, 2});
            }).find("A must be [clients, 2, 8]"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              l->set_cohort(a, b, {0, 2});
            }).find("clients + 1 = 3"),
            std::string::npos);
  l->set_cohort(a, b, {0, 1, 2});
  EXPECT_TRUE(l->has_cohort());
  const auto x = torch::randn({2, 4, 8});
  l->train();
  EXPECT_NE(error_of([&] { l->forward(x); }).find("not supported in cohort mode"),
            std::string::npos);
  l->eval();  // dropout is the identity in eval mode: cohort mode runs
  const auto y = l->forward(x);
  EXPECT_EQ(y.sizes(), (std::vector<int64_t>{2, 4, 8}));
  EXPECT_NE(error_of([&] {
              l->forward(torch::randn({3, 4, 8}));
            }).find("x has 3 rows"),
            std::string::npos);
  l->clear_cohort();
  EXPECT_FALSE(l->has_cohort());
  EXPECT_TRUE(torch::allclose(l->forward(x), l->forward(x)));
  LoraLinear plain(8, 8);
  EXPECT_NE(error_of([&] {
              plain->set_cohort(a, b, {0, 1, 2});
            }).find("has no adapter"),
            std::string::npos);
}

}  // namespace
}  // namespace mmfl::fusion
