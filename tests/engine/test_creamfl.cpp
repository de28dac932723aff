// CreamFL end to end on tiny FashionMNIST-Captions federations (CPU).
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/config.h"
#include "engine/creamfl.h"
#include "engine/data.h"
#include "engine/run.h"
#include "mmfl/error.h"
#include "tests/engine/run_fixture.h"

namespace mmfl::engine {
namespace {

namespace fs = std::filesystem;

Config tiny_creamfl(const std::vector<std::string>& extra = {}) {
  const std::string yaml = R"(
name: tiny-creamfl
seed: 5
rounds: 4
device: cpu
data: {public_size: 300, train_limit: 2000, test_limit: 500, retrieval_pairs: 200}
population: {clients: 8, partition: iid, min_samples: 20}
sampling: {clients_per_round: 4}
model:
  embed_dim: 32
  image_encoder: {kind: mlp, width: 48, depth: 1}
  text_encoder: {kind: bow, width: 32, depth: 1}
  kinds:
    image: {image_encoder: {kind: cnn, width: 8, depth: 1}}
    paired: {text_encoder: {kind: bow, width: 24, depth: 0}}
  server:
    image_encoder: {kind: cnn, width: 16, depth: 2}
    text_encoder: {kind: bow, width: 64, depth: 1}
train: {lr: 0.05, batch_size: 32, epochs: 1}
strategy: {name: creamfl}
creamfl: {public_batch_size: 64}
checkpoint: {every: 1, keep: 2}
)";
  std::vector<std::string> o = {"data.root=" + data_root()};
  o.insert(o.end(), extra.begin(), extra.end());
  return parse_config_text(yaml, o);
}

class CreamFl : public RunFixture {};

TEST_F(CreamFl, ShortRunImprovesServerRetrieval) {
  const auto s = run_experiment(tiny_creamfl({"rounds=5"}), opts("run"));
  const auto m = metrics(s.run_dir);
  ASSERT_EQ(m.size(), 5u);
  const double first = m[0]["i2t_r1"].get<double>() + m[0]["t2i_r1"].get<double>();
  const double last = m[4]["i2t_r1"].get<double>() + m[4]["t2i_r1"].get<double>();
  EXPECT_GT(last, first) << "server R@1 (i2t + t2i) " << first << " -> " << last;
  EXPECT_GT(m[4]["image_acc"].get<double>(), 0.3);
  // Representations travel, not weights: up = N x D x 4 bytes per held modality.
  EXPECT_GT(m[0]["bytes_up"].get<int64_t>(), 0);
  EXPECT_EQ(m[0]["bytes_down"].get<int64_t>(), 4 * 2 * 300 * 32 * 4);
  EXPECT_TRUE(m[0].contains("ensemble_img_max_weight"));
}

TEST_F(CreamFl, ModalityNoClientHoldsIsSkippedNotCrashed) {
  const auto s = run_experiment(
      tiny_creamfl({"rounds=2", "population.modality_mix.image=1", "population.modality_mix.text=0",
                    "population.modality_mix.paired=0"}),
      opts("img"));
  const auto m = metrics(s.run_dir);
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[1]["text_clients"], 0);
  EXPECT_FALSE(m[1].contains("ensemble_txt_max_weight"));
  EXPECT_GT(m[1]["distill_loss"].get<double>(), 0.0);
}

TEST_F(CreamFl, DistillSkipsAbsentModality) {
  const auto cfg = tiny_creamfl();
  const auto data = load_fmnist_captions(cfg, torch::kCPU);
  CreamFlStrategy s(cfg, data, base_.string());
  Checkpoint before;
  s.save(before);
  EXPECT_EQ(s.distill({}, {}), 0.0);
  const auto target = torch::zeros({data.public_set.size(), 32});
  EXPECT_GT(s.distill(target, {}), 0.0);
  Checkpoint after;
  s.save(after);
  EXPECT_FALSE(torch::equal(before.tensors.at("image"), after.tensors.at("image")));
  EXPECT_TRUE(torch::equal(before.tensors.at("text"), after.tensors.at("text")));
}

TEST_F(CreamFl, ResumeMatchesUninterruptedAndDumpsNpy) {
  run_experiment(tiny_creamfl({"creamfl.dump_round=2"}), opts("full"));
  auto o = opts("split");
  o.stop_after = 2;
  run_experiment(tiny_creamfl({"creamfl.dump_round=2"}), o);
  resume_experiment(o.out_dir, opts("unused"));
  const auto a = metrics((base_ / "full").string()), b = metrics(o.out_dir);
  ASSERT_EQ(a.size(), 4u);
  ASSERT_EQ(b.size(), 4u);
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_EQ(a[i], b[i]) << "round " << i + 1;
  const auto dump = base_ / "full" / "dump_round_2";
  for (const char* f : {"global_image.npy", "global_text.npy", "image_weights.npy",
                        "image_local.npy", "image_ensemble.npy", "image_client_ids.npy"})
    EXPECT_TRUE(fs::exists(dump / f)) << f;
  std::ifstream in(dump / "global_image.npy", std::ios::binary);
  std::string head(128, '\0');
  in.read(head.data(), 128);
  EXPECT_EQ(head.substr(0, 6), "\x93NUMPY");
  EXPECT_NE(head.find("'shape': (300, 32)"), std::string::npos) << head;
}

TEST_F(CreamFl, FedAvgRefusesHeterogeneousClients) {
  try {
    tiny_creamfl({"strategy.name=fedavg"});
    FAIL() << "heterogeneous FedAvg config accepted";
  } catch (const Error& e) {
    EXPECT_NE(e.reason().find("model.kinds"), std::string::npos) << e.reason();
  }
}

}  // namespace
}  // namespace mmfl::engine
