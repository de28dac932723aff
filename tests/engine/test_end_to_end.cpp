// End-to-end federations on FashionMNIST-Captions, tiny enough for 2 CPU cores.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/config.h"
#include "engine/run.h"
#include "mmfl/error.h"
#include "tests/engine/run_fixture.h"

namespace mmfl::engine {
namespace {

namespace fs = std::filesystem;

Config tiny_config() {
  const std::string yaml = R"(
name: tiny
seed: 3
rounds: 4
device: cpu
data: {public_size: 500, train_limit: 3000, test_limit: 1000, retrieval_pairs: 200}
population: {clients: 12, partition: dirichlet, alpha: 1.0, min_samples: 20}
sampling: {clients_per_round: 6}
model:
  embed_dim: 32
  image_encoder: {kind: mlp, width: 64, depth: 1}
  text_encoder: {kind: bow, width: 32, depth: 1}
train: {lr: 0.05, batch_size: 32, epochs: 2}
checkpoint: {every: 1, keep: 2}
)";
  return parse_config_text(yaml, {"data.root=" + data_root()});
}

class EndToEnd : public RunFixture {};

TEST_F(EndToEnd, TinyFederationBeatsChance) {
  const auto s = run_experiment(tiny_config(), opts("run"));
  EXPECT_TRUE(s.finished);
  EXPECT_EQ(s.rounds_done, 4);
  EXPECT_GT(s.last_eval.image_acc, 0.5);  // chance: 0.1
  EXPECT_GT(s.last_eval.text_acc, 0.4);
  EXPECT_GT(s.last_eval.i2t[2], 3 * 10.0 / 200);  // R@10 of random ranking: 10/200
  for (const char* f : {"config.yaml", "vocab.txt", "metrics.jsonl", "report.json"})
    EXPECT_TRUE(fs::exists(base_ / "run" / f)) << f;
  const auto m = metrics((base_ / "run").string());
  ASSERT_EQ(m.size(), 4u);
  EXPECT_GT(m[0]["bytes_up"].get<int64_t>(), 0);
  EXPECT_EQ(m[3]["round"], 4);
  // A second run into the same directory is refused, not mixed in.
  EXPECT_THROW(run_experiment(tiny_config(), opts("run")), Error);
}

TEST_F(EndToEnd, StopAndResumeMatchesUninterrupted) {
  run_experiment(tiny_config(), opts("full"));
  auto o = opts("split");
  o.stop_after = 2;
  const auto first = run_experiment(tiny_config(), o);
  EXPECT_FALSE(first.finished);
  EXPECT_EQ(first.rounds_done, 2);
  const auto second = resume_experiment(o.out_dir, opts("unused"));
  EXPECT_TRUE(second.finished);
  const auto a = metrics((base_ / "full").string()), b = metrics(o.out_dir);
  ASSERT_EQ(a.size(), 4u);
  ASSERT_EQ(b.size(), 4u);
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_EQ(a[i], b[i]) << "round " << i + 1;
}

TEST_F(EndToEnd, CorruptCheckpointIsRefused) {
  auto o = opts("run");
  o.stop_after = 1;
  run_experiment(tiny_config(), o);
  const auto ck = base_ / "run" / "checkpoints" / "round_000001.ckpt";
  ASSERT_TRUE(fs::exists(ck));
  fs::resize_file(ck, fs::file_size(ck) - 3);
  try {
    resume_experiment(o.out_dir, o);
    FAIL() << "a truncated checkpoint was accepted";
  } catch (const Error& e) {
    EXPECT_NE(e.reason().find("round_000001.ckpt' is corrupt"), std::string::npos) << e.reason();
  }
  // The refused resume left the run directory as it was.
  EXPECT_EQ(metrics(o.out_dir).size(), 1u);
}

TEST_F(EndToEnd, CliExitsWithTwoAndOneLineOnBadInput) {
  fs::create_directories(base_);
  const auto cfg = (base_ / "bad.yaml").string();
  std::ofstream(cfg) << "train:\n  lr: fast\n";
  const auto err = (base_ / "err.txt").string();
  const int rc =
      std::system((std::string(MMFL_BINARY) + " validate " + cfg + " 2> " + err).c_str());
  ASSERT_TRUE(WIFEXITED(rc));
  EXPECT_EQ(WEXITSTATUS(rc), 2);
  std::ifstream in(err);
  std::string line, rest;
  std::getline(in, line);
  EXPECT_EQ(line, "mmfl: error: " + cfg + ": config key 'train.lr': expected a number, got 'fast'");
  EXPECT_FALSE(std::getline(in, rest)) << "more than one line: " << rest;
  const int rc2 = std::system(
      (std::string(MMFL_BINARY) + " run --resume " + (base_ / "nope").string() + " 2> " + err)
          .c_str());
  EXPECT_EQ(WEXITSTATUS(rc2), 2);
}

}  // namespace
}  // namespace mmfl::engine
