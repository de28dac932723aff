// MoMa (engine/moma.h, fusion/moe): expert groups never cross modalities, per-expert
// aggregation weights by token counts and leaves untouched experts alone, a uni-modal client
// sends only its modality's groups, a short run learns retrieval, and a resumed run is exact.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "engine/config.h"
#include "engine/data.h"
#include "engine/moma.h"
#include "engine/population.h"
#include "engine/run.h"
#include "fusion/moe/moma.h"
#include "mmfl/error.h"
#include "tests/engine/run_fixture.h"

namespace mmfl::engine {
namespace {

namespace fs = std::filesystem;

Update update(int64_t id, int64_t samples, std::map<std::string, torch::Tensor> dense) {
  Update u;
  u.client_id = id;
  u.num_samples = samples;
  u.up.dense = std::move(dense);
  return u;
}
torch::Tensor v(std::vector<float> x) {
  return torch::tensor(x);
}
torch::Tensor n(int64_t tokens) {
  return torch::tensor({tokens}, torch::kInt64);
}

TEST(MomaAggregate, ExpertsWeightedByTokensSharedBySamplesUntouchedKept) {
  std::map<std::string, torch::Tensor> global = {{"shared", v({9, 9})},
                                                 {"image", v({9, 9})},
                                                 {"moe.0.image.0", v({9, 9})},
                                                 {"moe.0.image.1", v({-7, 3})},
                                                 {"moe.0.text.0", v({9, 9})}};
  std::vector<Update> ups;
  ups.push_back(update(1, 1,
                       {{"shared", v({1, 2})},
                        {"image", v({4, 4})},
                        {"moe.0.image.0", v({4, 8})},
                        {"moe.0.image.0#tokens", n(3)}}));
  ups.push_back(update(2, 3,
                       {{"shared", v({5, 6})},
                        {"image", v({0, 8})},
                        {"moe.0.image.0", v({0, 4})},
                        {"moe.0.image.0#tokens", n(1)},
                        {"moe.0.text.0", v({2, -2})},
                        {"moe.0.text.0#tokens", n(2)}}));
  // A diverged client is left out whatever it carries.
  auto bad = update(3, 100, {{"shared", v({100, 100})}});
  bad.diverged = true;
  ups.push_back(bad);
  const auto rep = aggregate_moma(ups, global);
  EXPECT_TRUE(torch::equal(global["shared"], v({4, 5})));          // (1*[1,2] + 3*[5,6]) / 4
  EXPECT_TRUE(torch::equal(global["image"], v({1, 7})));           // (1*[4,4] + 3*[0,8]) / 4
  EXPECT_TRUE(torch::equal(global["moe.0.image.0"], v({3, 7})));   // (3*[4,8] + 1*[0,4]) / 4
  EXPECT_TRUE(torch::equal(global["moe.0.image.1"], v({-7, 3})));  // no client routed to it
  EXPECT_TRUE(torch::equal(global["moe.0.text.0"], v({2, -2})));   // one owner
  EXPECT_EQ(rep.experts_updated, 2);
  EXPECT_EQ(rep.experts_untouched, 1);
  EXPECT_TRUE(rep.skipped.empty());
}

TEST(MomaAggregate, NonFiniteGroupIsLeftOutAndAnExpertWithoutCountIsAnError) {
  std::map<std::string, torch::Tensor> global = {{"moe.1.text.2", v({1, 1})}};
  std::vector<Update> ups;
  ups.push_back(update(4, 1, {{"moe.1.text.2", v({NAN, 0})}, {"moe.1.text.2#tokens", n(5)}}));
  ups.push_back(update(5, 1, {{"moe.1.text.2", v({2, 6})}, {"moe.1.text.2#tokens", n(2)}}));
  const auto rep = aggregate_moma(ups, global);
  EXPECT_TRUE(torch::equal(global["moe.1.text.2"], v({2, 6})));
  EXPECT_EQ(rep.skipped, std::vector<int64_t>{4});
  ups = {update(6, 1, {{"moe.1.text.2", v({2, 6})}})};
  EXPECT_THROW(aggregate_moma(ups, global), Error);
}

fusion::MoeOptions tiny_options(fusion::MoeRoutingKind image, fusion::MoeRoutingKind text) {
  fusion::MoeOptions o;
  o.d_model = 8;
  o.layers = 2;
  o.heads = 2;
  o.ffn = 12;
  o.image = {image == fusion::MoeRoutingKind::kDense ? 1 : 3, image, 1};
  o.text = {text == fusion::MoeRoutingKind::kDense ? 1 : 2, text, 1};
  return o;
}

// Image tokens interleaved with text tokens: zeroing one group's experts zeroes exactly that
// group's rows of the output, so no token of one modality reached the other's experts; expert
// choice gives each expert exactly its group's capacity.
TEST(MomaModel, ExpertChoiceNeverCrossesModalityGroups) {
  torch::manual_seed(3);
  for (auto impl : {fusion::MoeImpl::kFused, fusion::MoeImpl::kLoop}) {
    auto o =
        tiny_options(fusion::MoeRoutingKind::kExpertChoice, fusion::MoeRoutingKind::kExpertChoice);
    o.impl = impl;
    fusion::ModalityMoe moe(o);
    const int64_t T = 23;
    const auto x = torch::randn({T, o.d_model});
    std::vector<int64_t> img, txt;
    for (int64_t t = 0; t < T; ++t)
      (t % 3 == 1 ? txt : img).push_back(t);  // 15 image, 8 text tokens
    const std::vector<torch::Tensor> rows = {torch::tensor(img), torch::tensor(txt)};
    const auto full = moe.forward(x, rows, /*trace=*/true);
    EXPECT_EQ(full.tokens, (std::vector<int64_t>{5, 5, 5, 4, 4}));
    ASSERT_EQ(full.trace.size(), 2u);
    for (const auto& tr : full.trace) {
      const int64_t Tg = tr.group == "image" ? 15 : 8;
      EXPECT_LT(tr.order.max().item<int64_t>(), Tg);
      EXPECT_EQ(tr.scores.size(0), Tg);
    }
    {
      torch::NoGradGuard ng;
      for (int64_t e = 3; e < 5; ++e) {  // the text experts
        moe.w2[e].zero_();
        moe.b2[e].zero_();
      }
    }
    const auto no_text = moe.forward(x, rows).y;
    EXPECT_TRUE(torch::equal(no_text.index_select(0, rows[1]), torch::zeros({8, o.d_model})));
    EXPECT_TRUE(torch::allclose(no_text.index_select(0, rows[0]), full.y.index_select(0, rows[0]),
                                1e-5, 1e-6));
    EXPECT_GT(no_text.index_select(0, rows[0]).abs().max().item<double>(), 1e-3);
  }
}

// The pooled image feature does not depend on the caption (no cross-modal attention, separate
// expert groups), and token choice sends each token to top_k experts of its own group.
TEST(MomaModel, ImageFeatureCarriesNoCaptionAndTokenChoiceRespectsTopK) {
  torch::manual_seed(4);
  for (auto routing : {fusion::MoeRoutingKind::kExpertChoice, fusion::MoeRoutingKind::kTokenChoice,
                       fusion::MoeRoutingKind::kDense}) {
    auto o = tiny_options(routing, routing);
    fusion::MomaModel m(o, /*vocab=*/20, /*max_tokens=*/6, 28, 28, /*embed_dim=*/5);
    const auto images = torch::randn({3, 1, 28, 28});
    auto tokens = torch::randint(1, 20, {3, 6});
    tokens.index_put_({0, torch::indexing::Slice(4, 6)}, 0);  // padding
    const auto both = m.forward(images, tokens, true);
    const auto alone = m.forward(images, {});
    const auto other = m.forward(images, torch::randint(1, 20, {3, 6}));
    EXPECT_TRUE(torch::allclose(both.image, alone.image, 1e-5, 1e-6));
    EXPECT_TRUE(torch::allclose(both.image, other.image, 1e-5, 1e-6));
    EXPECT_FALSE(torch::allclose(both.text, other.text, 1e-3, 1e-3));
    // Per layer: the image group's slots cover 48 patch tokens, the text group's the 16 real ones.
    const int64_t E = o.image.experts + o.text.experts;
    ASSERT_EQ(int64_t(both.tokens.size()), o.layers * E);
    for (int64_t l = 0; l < o.layers; ++l) {
      int64_t si = 0, st = 0;
      for (int64_t e = 0; e < o.image.experts; ++e)
        si += both.tokens[size_t(l * E + e)];
      for (int64_t e = 0; e < o.text.experts; ++e)
        st += both.tokens[size_t(l * E + o.image.experts + e)];
      EXPECT_EQ(si, 48);
      EXPECT_EQ(st, 16);
    }
  }
}

// A small federation on FashionMNIST-Captions, all clients sampled.
class MomaRun : public RunFixture {
 protected:
  Config config(std::vector<std::string> overrides) const {
    const std::string yaml = R"(
name: moma-test
seed: 3
rounds: 4
device: cpu
data: {public_size: 0, train_limit: 480, test_limit: 200, retrieval_pairs: 100, max_tokens: 12}
population: {clients: 6, partition: iid, min_samples: 20,
             modality_mix: {image: 0.34, text: 0.33, paired: 0.33}}
sampling: {clients_per_round: 6}
model: {embed_dim: 16}
train: {optimizer: adam, lr: 0.003, batch_size: 20, epochs: 1}
strategy: {name: moma}
moe: {d_model: 32, layers: 1, heads: 2, ffn: 32}
eval: {every: 1, batch_size: 200}
checkpoint: {every: 1, keep: 3}
)";
    overrides.push_back("data.root=" + data_root());
    return parse_config_text(yaml, overrides);
  }
};

TEST_F(MomaRun, ImageOnlyClientSendsNoTextGroupsAndCountsEveryPatch) {
  const auto cfg = config({});
  const auto data = load_fmnist_captions(cfg, torch::kCPU);
  std::vector<int64_t> labels(size_t(data.pool.size()));
  std::copy_n(data.pool.labels.data_ptr<int64_t>(), labels.size(), labels.begin());
  const auto pop = make_population(cfg.population, labels, 10, cfg.seed);
  MomaStrategy s(cfg, data, (base_ / "unit").string());
  int seen = 0;
  for (const auto& c : pop) {
    if (c.kind != ClientKind::kImage) continue;
    ++seen;
    const auto u = s.train_client(c, 1);
    ASSERT_FALSE(u.diverged);
    EXPECT_TRUE(u.up.dense.count("shared"));
    EXPECT_TRUE(u.up.dense.count("image"));
    int64_t patches = 0;
    for (const auto& [name, t] : u.up.dense) {
      EXPECT_EQ(name.find("text"), std::string::npos) << name;
      if (name.find("#tokens") != std::string::npos) patches += t.sum().item<int64_t>();
    }
    // Expert choice with 4 experts: every batch's 16 tokens per image are processed once.
    EXPECT_EQ(patches, int64_t(c.indices.size()) * 16);
  }
  EXPECT_GT(seen, 0);
}

TEST_F(MomaRun, ShortRunImprovesRetrievalAndResumesExactly) {
  for (const std::string routing : {"expert_choice", "token_choice"}) {
    SCOPED_TRACE(routing);
    const std::vector<std::string> ov = {"moe.image.routing=" + routing,
                                         "moe.text.routing=" + routing};
    run_experiment(config(ov), opts("full_" + routing));
    auto o = opts("split_" + routing);
    o.stop_after = 2;
    run_experiment(config(ov), o);
    resume_experiment(o.out_dir, opts("unused"));
    const auto a = metrics(opts("full_" + routing).out_dir), b = metrics(o.out_dir);
    ASSERT_EQ(a.size(), 4u);
    EXPECT_EQ(a, b);
    auto recall = [](const nlohmann::json& m) {
      return m["i2t_r10"].get<double>() + m["t2i_r10"].get<double>();
    };
    EXPECT_GT(recall(a.back()), recall(a.front()));
    EXPECT_TRUE(a.back().contains("moe_tokens_image"));
    EXPECT_TRUE(a.back().contains("moe_max_mean_text"));
    if (routing == "expert_choice") {
      EXPECT_DOUBLE_EQ(a.back()["moe_max_mean_image"].get<double>(), 1.0);
    }
  }
}

TEST_F(MomaRun, DumpRoundWritesRoutingAndCounts) {
  auto cfg = config({"moe.dump_round=1", "rounds=1"});
  run_experiment(cfg, opts("dump"));
  const auto dir = fs::path(opts("dump").out_dir) / "moe_round_1";
  EXPECT_TRUE(fs::exists(dir / "tokens.npy"));
  EXPECT_TRUE(fs::exists(dir / "clients.npy"));
  EXPECT_TRUE(fs::exists(dir / "layout.json"));
  int scores = 0;
  for (const auto& e : fs::directory_iterator(dir))
    scores += e.path().filename().string().find("_scores.npy") != std::string::npos;
  EXPECT_GT(scores, 0);
}

TEST(MomaConfig, BadKeysNameWhatToFix) {
  auto expect_error = [](const std::vector<std::string>& ov, const std::string& needle) {
    try {
      parse_config_text("strategy: {name: moma}\n", ov);
      FAIL() << "no error for " << ov[0];
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error({"moe.image.routing=dense", "moe.image.experts=3"}, "moe.image.experts");
  expect_error({"moe.text.top_k=2"}, "moe.text.top_k");
  expect_error({"moe.ffn_kind=shared", "moe.image.routing=expert_choice"}, "moe.image.routing");
  expect_error({"moe.heads=3"}, "moe.heads");
  expect_error({"moe.impl=cuda"}, "moe.impl");
  const auto c = parse_config_text("strategy: {name: moma}\nmoe: {ffn_kind: shared}\n");
  EXPECT_EQ(c.moe.image.experts, 1);
  EXPECT_EQ(c.moe.image.routing, fusion::MoeRoutingKind::kDense);
}

}  // namespace
}  // namespace mmfl::engine
