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

// Every client starts from the same seeded towers and sends them back trained (FedAvg's task,
// with the starting weights fixed by the test).
class SendWeights : public LocalTask {
 public:
  SendWeights(const Config& cfg, const GlobalModel& start)
      : cfg_(cfg), image_(start.image->flat()), text_(start.text->flat()) {}
  ClientArch arch(ClientKind) const override { return {cfg_.model.image, cfg_.model.text}; }
  std::unique_ptr<ClientJob> job(const ClientSpec& spec) override {
    auto j = std::make_unique<Job>();
    if (holds_image(spec.kind)) j->image = j->down.dense["image"] = image_;
    if (holds_text(spec.kind)) j->text = j->down.dense["text"] = text_;
    return j;
  }

 private:
  struct Job : ClientJob {
    void finish(ClientView& m, Update& u) override {
      if (image.defined()) u.up.dense["image"] = m.flat(Modality::kImage);
      if (text.defined()) u.up.dense["text"] = m.flat(Modality::kText);
    }
  };
  const Config& cfg_;
  torch::Tensor image_, text_;
};

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
  SendWeights task(cfg, start);
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
    clients += name.rfind("client/", 0) == 0;
    EXPECT_TRUE(torch::equal(t, par.tensors.at(name))) << name;
    // Client models: the stacked arithmetic's rounding only; the server: through the ensemble
    // of the clients' features and a distillation pass, so a looser bound.
    const double tol = name.rfind("client/", 0) == 0 ? 1e-4 : 1e-3;
    const double err = (t - bat.tensors.at(name)).abs().max().item<double>();
    EXPECT_LT(err, tol) << name;
  }
  EXPECT_GE(clients, 5);
}

}  // namespace
}  // namespace mmfl::engine
