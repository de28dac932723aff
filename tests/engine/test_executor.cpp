// The three executors give the same per-client updates: parallel equals sequential bit for bit
// (same intra-op thread count per client), batched (stacked weights, batched products, grouped
// convolutions) within a stated tolerance, including clients with unequal sample counts.
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <set>

#include "engine/config.h"
#include "engine/creamfl.h"
#include "engine/data.h"
#include "engine/executor.h"
#include "engine/population.h"
#include "engine/strategy.h"
#include "tests/engine/run_fixture.h"

namespace mmfl::engine {
namespace {

// `image`: "kind,width,depth" of the image encoder.
Config tiny(const std::string& image, const std::vector<std::string>& extra = {}) {
  const std::string yaml = R"(
name: tiny-exec
seed: 11
rounds: 1
device: cpu
data: {public_size: 200, train_limit: 900, test_limit: 200, retrieval_pairs: 100}
population: {clients: 9, partition: dirichlet, alpha: 0.5, quantity_skew: 1.0, min_samples: 5}
sampling: {clients_per_round: 9}
model:
  embed_dim: 16
  text_encoder: {kind: bow, width: 16, depth: 1}
train: {lr: 0.05, momentum: 0.9, batch_size: 16, epochs: 2, grad_clip: 1.0}
)";
  const auto c1 = image.find(','), c2 = image.rfind(',');
  std::vector<std::string> o = {"data.root=" + data_root(),
                                "model.image_encoder.kind=" + image.substr(0, c1),
                                "model.image_encoder.width=" + image.substr(c1 + 1, c2 - c1 - 1),
                                "model.image_encoder.depth=" + image.substr(c2 + 1)};
  o.insert(o.end(), extra.begin(), extra.end());
  return parse_config_text(yaml, o);
}

struct Cohort {
  FederatedData data;
  std::vector<ClientSpec> population;
  std::vector<const ClientSpec*> members;
};

Cohort make_cohort(const Config& cfg) {
  Cohort c{load_fmnist_captions(cfg, torch::kCPU), {}, {}};
  std::vector<int64_t> labels(size_t(c.data.pool.size()));
  const auto l = c.data.pool.labels;
  std::copy_n(l.data_ptr<int64_t>(), labels.size(), labels.begin());
  c.population = make_population(cfg.population, labels, c.data.num_classes, cfg.seed);
  for (const auto& s : c.population)
    c.members.push_back(&s);
  return c;
}

std::vector<Update> train_with(Config cfg, ExecutorKind kind, const Cohort& c, int threads) {
  cfg.executor.kind = kind;
  torch::manual_seed(3);
  GlobalModel start{
      make_image_tower(cfg.model.image, 28, 28, 10),
      make_text_tower(cfg.model.text, c.data.tokenizer->size(), cfg.data.max_tokens, 10)};
  FedAvgTask task(cfg, start);  // every client starts from `start`
  const int before = at::get_num_threads();
  at::set_num_threads(threads);
  auto ex = make_executor(cfg, c.data);
  auto out = ex->train(c.members, task, 1);
  at::set_num_threads(before);
  return out;
}

class Executors : public RunFixture {};

TEST_F(Executors, ParallelEqualsSequentialExactly) {
  const auto cfg = tiny("cnn,4,2", {"executor.workers=2"});
  const auto c = make_cohort(cfg);
  // Sequential with one intra-op thread: the same arithmetic as each of two parallel workers.
  const auto seq = train_with(cfg, ExecutorKind::kSequential, c, 1);
  const auto par = train_with(cfg, ExecutorKind::kParallel, c, 2);
  ASSERT_EQ(seq.size(), par.size());
  for (size_t i = 0; i < seq.size(); ++i) {
    EXPECT_EQ(seq[i].client_id, par[i].client_id);
    EXPECT_EQ(seq[i].bytes_up(), par[i].bytes_up());
    EXPECT_EQ(seq[i].bytes_down, par[i].bytes_down);
    ASSERT_EQ(seq[i].up.dense.size(), par[i].up.dense.size());
    for (const auto& [name, t] : seq[i].up.dense)
      EXPECT_TRUE(torch::equal(t, par[i].up.dense.at(name)))
          << "client " << seq[i].client_id << " group " << name;
    EXPECT_EQ(seq[i].loss, par[i].loss);
  }
}

// Stacked models do the same math in another order (bmm vs mm, grouped vs single convolution):
// after two epochs of momentum SGD with clipping, weights agree to 1e-4 relative to the update.
void expect_close(const std::vector<Update>& a, const std::vector<Update>& b, const Cohort& c) {
  ASSERT_EQ(a.size(), b.size());
  std::set<int64_t> sizes;
  for (size_t i = 0; i < a.size(); ++i) {
    sizes.insert(int64_t(c.members[i]->indices.size()));
    EXPECT_EQ(a[i].client_id, b[i].client_id);
    EXPECT_EQ(a[i].bytes_up(), b[i].bytes_up());
    EXPECT_NEAR(a[i].loss, b[i].loss, 1e-4 * std::max(1.0, std::abs(a[i].loss)));
    for (const auto& [name, t] : a[i].up.dense) {
      const auto& u = b[i].up.dense.at(name);
      const double err = (t - u).abs().max().item<double>();
      EXPECT_LT(err, 1e-4) << "client " << a[i].client_id << " (" << c.members[i]->indices.size()
                           << " samples) group " << name;
    }
  }
  EXPECT_GT(sizes.size(), 3u) << "the cohort should hold clients of unequal sample counts";
}

TEST_F(Executors, BatchedCnnAndBowEqualSequential) {
  const auto cfg = tiny("cnn,4,2");
  const auto c = make_cohort(cfg);
  expect_close(train_with(cfg, ExecutorKind::kSequential, c, 1),
               train_with(cfg, ExecutorKind::kBatched, c, 1), c);
}

TEST_F(Executors, BatchedMlpEqualsSequentialWithAdamAndChunks) {
  // max_memory_gb this small forces chunks of a few clients.
  const auto cfg =
      tiny("mlp,24,1", {"train.optimizer=adam", "train.lr=0.002", "executor.max_memory_gb=0.001"});
  const auto c = make_cohort(cfg);
  expect_close(train_with(cfg, ExecutorKind::kSequential, c, 1),
               train_with(cfg, ExecutorKind::kBatched, c, 1), c);
}

// One CreamFL round (public-set regularizer through the extra pass, persistent client models):
// the clients' kept models and the server after distillation agree across executors.
Checkpoint creamfl_round(const Config& base, ExecutorKind kind, const std::string& dir) {
  Config cfg = base;
  cfg.executor.kind = kind;
  const int before = at::get_num_threads();
  at::set_num_threads(1);
  const auto c = make_cohort(cfg);
  CreamFlStrategy s(cfg, c.data, dir);
  const std::vector<const ClientSpec*> cohort(c.members.begin(), c.members.begin() + 5);
  s.run_round(cohort, 1);
  Checkpoint ck;
  s.save(ck);
  at::set_num_threads(before);
  return ck;
}

TEST_F(Executors, CreamFlRoundSameWithEachExecutor) {
  const auto cfg =
      tiny("cnn,4,1", {"strategy.name=creamfl", "creamfl.public_batch_size=64",
                       "executor.workers=2", "population.modality_mix.image=0.3",
                       "population.modality_mix.text=0.3", "population.modality_mix.paired=0.4"});
  const auto seq = creamfl_round(cfg, ExecutorKind::kSequential, base_.string());
  const auto par = creamfl_round(cfg, ExecutorKind::kParallel, base_.string());
  const auto bat = creamfl_round(cfg, ExecutorKind::kBatched, base_.string());
  ASSERT_EQ(seq.tensors.size(), par.tensors.size());
  ASSERT_EQ(seq.tensors.size(), bat.tensors.size());
  int clients = 0;
  for (const auto& [name, t] : seq.tensors) {
    clients += name.rfind("state/", 0) == 0;
    EXPECT_TRUE(torch::equal(t, par.tensors.at(name))) << name;
    // Client models: the stacked arithmetic's rounding only; the server: through the ensemble
    // of the clients' features and a distillation pass, so a looser bound.
    const double tol = name.rfind("state/", 0) == 0 ? 1e-4 : 1e-3;
    const double err = (t - bat.tensors.at(name)).abs().max().item<double>();
    EXPECT_LT(err, tol) << name;
  }
  EXPECT_GE(clients, 5);
}

}  // namespace
}  // namespace mmfl::engine

namespace mmfl::engine {
namespace {

Config small_run(const std::vector<std::string>& extra) {
  const std::string yaml = R"(
name: small
seed: 4
rounds: 3
device: cpu
data: {public_size: 100, train_limit: 1500, test_limit: 200, retrieval_pairs: 50}
population: {clients: 10, partition: iid, min_samples: 20}
sampling: {clients_per_round: 5}
model:
  embed_dim: 16
  image_encoder: {kind: cnn, width: 4, depth: 1}
  text_encoder: {kind: bow, width: 16, depth: 1}
train: {lr: 0.05, batch_size: 16, epochs: 1}
checkpoint: {every: 1, keep: 2}
)";
  std::vector<std::string> o = {"data.root=" + data_root()};
  o.insert(o.end(), extra.begin(), extra.end());
  return parse_config_text(yaml, o);
}

class ExecutorRuns : public RunFixture {};

// Exact resume holds whichever executor trains the clients (parallel is covered by EndToEnd).
TEST_F(ExecutorRuns, StopAndResumeExactWithSequentialAndBatched) {
  for (const std::string kind : {"sequential", "batched"}) {
    for (const std::string strategy : {"fedavg", "creamfl"}) {
      const auto cfg =
          small_run({"executor.kind=" + kind, "strategy.name=" + strategy, "rounds=2"});
      const std::string tag = kind + "_" + strategy;
      run_experiment(cfg, opts("full_" + tag));
      auto o = opts("split_" + tag);
      o.stop_after = 1;
      run_experiment(cfg, o);
      resume_experiment(o.out_dir, opts("unused"));
      const auto a = metrics((base_ / ("full_" + tag)).string()), b = metrics(o.out_dir);
      ASSERT_EQ(a.size(), 2u) << tag;
      ASSERT_EQ(b.size(), 2u) << tag;
      for (size_t i = 0; i < a.size(); ++i)
        EXPECT_EQ(a[i], b[i]) << tag << " round " << i + 1;
    }
  }
}

// A state budget far below the clients' models forces spilling every round; the metrics are
// those of the run without a budget, and the spill files are in the run directory.
TEST_F(ExecutorRuns, SpillingStateGivesSameMetrics) {
  const auto plain = small_run({"strategy.name=creamfl", "rounds=2"});
  const auto tight = small_run({"strategy.name=creamfl", "rounds=2", "state.max_memory_gb=1e-5"});
  run_experiment(plain, opts("plain"));
  run_experiment(tight, opts("tight"));
  const auto a = metrics((base_ / "plain").string()), b = metrics((base_ / "tight").string());
  ASSERT_EQ(a.size(), 2u);
  ASSERT_EQ(a, b);
  int files = 0;
  for (const auto& f : std::filesystem::directory_iterator(base_ / "tight" / "state"))
    files += f.path().extension() == ".ckpt";
  EXPECT_GT(files, 0);
}

// 100,000 clients: specs (resampled from the pool, 8 rows each), sampling and two rounds of a
// tiny model; only the sampled clients are ever materialized.
TEST_F(ExecutorRuns, HundredThousandClients) {
  const auto cfg =
      small_run({"population.clients=100000", "population.partition=resample",
                 "population.min_samples=8", "sampling.clients_per_round=20", "rounds=2",
                 "model.image_encoder.kind=mlp", "model.image_encoder.width=8"});
  const auto s = run_experiment(cfg, opts("big"));
  EXPECT_TRUE(s.finished);
  const auto m = metrics(s.run_dir);
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[1]["clients"], 20);
  EXPECT_GT(m[1]["bytes_up"].get<int64_t>(), 0);
}

}  // namespace
}  // namespace mmfl::engine
