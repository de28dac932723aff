#include "engine/strategy.h"

#include <ATen/Parallel.h>

#include <chrono>

#include "engine/comm/distribute.h"
#include "engine/creamfl.h"
#include "engine/lora.h"
#include "engine/moma.h"
#include "fusion/ops/aggregate.h"
#include "mmfl/error.h"

namespace mmfl::engine {

namespace {

// One tower's rows on this rank: the updates that carry `group`, NaN/Inf ones set aside.
struct TowerRows {
  std::vector<torch::Tensor> rows;
  std::vector<double> samples;
  std::vector<int64_t> bad;  // client ids of non-finite rows
  double finite_samples = 0;
};

TowerRows tower_rows(const std::vector<Update>& updates, const std::string& group) {
  std::vector<const Update*> with;
  std::vector<torch::Tensor> rows;
  for (const auto& u : updates) {
    const auto it = u.up.dense.find(group);
    if (it == u.up.dense.end()) continue;
    with.push_back(&u);
    rows.push_back(it->second.reshape({-1}).contiguous());
  }
  // One vectorized pass per row; on the CPU the rows spread over the intra-op threads.
  std::vector<char> finite(rows.size(), 0);
  auto check = [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      finite[size_t(i)] = fusion::ops::all_finite(rows[size_t(i)]) ? 1 : 0;
  };
  if (!rows.empty() && rows[0].is_cpu())
    at::parallel_for(0, int64_t(rows.size()), 1, check);
  else
    check(0, int64_t(rows.size()));
  TowerRows t;
  for (size_t i = 0; i < rows.size(); ++i) {
    if (!finite[i]) {
      t.bad.push_back(with[i]->client_id);
      continue;
    }
    t.rows.push_back(rows[i]);
    t.samples.push_back(double(with[i]->num_samples));
    t.finite_samples += double(with[i]->num_samples);
  }
  return t;
}

}  // namespace

FedAvgTask::FedAvgTask(const Config& cfg, const GlobalModel& global)
    : cfg_(cfg), image_(global.image->flat()), text_(global.text->flat()) {}

ClientArch FedAvgTask::arch(ClientKind) const {
  return {cfg_.model.image, cfg_.model.text};
}

namespace {
struct FedAvgJob : ClientJob {
  void finish(ClientView& model, Update& u) override {
    if (image.defined()) u.up.dense["image"] = model.flat(Modality::kImage);
    if (text.defined()) u.up.dense["text"] = model.flat(Modality::kText);
  }
};
}  // namespace

std::unique_ptr<ClientJob> FedAvgTask::job(const ClientSpec& spec) {
  auto j = std::make_unique<FedAvgJob>();
  if (holds_image(spec.kind)) j->image = j->down.dense["image"] = image_;
  if (holds_text(spec.kind)) j->text = j->down.dense["text"] = text_;
  return j;
}

RoundStats round_stats(const std::vector<comm::UpdateRecord>& records) {
  RoundStats s;
  s.clients = int64_t(records.size());
  int64_t trained = 0;
  for (const auto& u : records) {
    s.bytes_down += u.bytes_down;
    s.bytes_up += u.bytes_up;
    if (u.diverged) {
      s.skipped.push_back(u.client_id);
      continue;
    }
    s.train_loss += u.loss;
    ++trained;
  }
  if (trained > 0) s.train_loss /= double(trained);
  return s;
}

RoundStats round_stats(const std::vector<Update>& updates) {
  std::vector<comm::UpdateRecord> records;
  for (const auto& u : updates)
    records.push_back({u.client_id, u.num_samples, u.loss, u.diverged, u.bytes_up(), u.bytes_down});
  return round_stats(records);
}

AggregateReport FedAvg::aggregate(const std::vector<Update>& updates, GlobalModel& global,
                                  comm::Communicator* c) {
  const std::string groups[2] = {"image", "text"};
  Tower* towers[2] = {global.image.get(), global.text.get()};
  TowerRows rows[2] = {tower_rows(updates, groups[0]), tower_rows(updates, groups[1])};
  // Every rank's finite samples and rows per tower (exact: small integers in fp64).
  auto meta = torch::tensor({rows[0].finite_samples, double(rows[0].rows.size()),
                             rows[1].finite_samples, double(rows[1].rows.size())},
                            torch::kFloat64);
  const bool multi = c && c->size() > 1;
  if (multi) c->all_reduce_sum(meta);
  const auto* m = meta.data_ptr<double>();
  // Each rank's share of each weighted mean (weights: samples over ALL ranks' finite samples),
  // then one sum over the ranks of both towers' shares in one buffer.
  std::vector<torch::Tensor> parts;
  int64_t numel[2] = {0, 0};
  for (int k = 0; k < 2; ++k) {
    numel[k] = towers[k]->num_params();
    const auto f64 =
        torch::TensorOptions(torch::kFloat64).device(towers[k]->parameters().front().device());
    if (m[2 * k + 1] == 0) continue;  // no finite row anywhere: the tower is kept
    if (rows[k].rows.empty()) {
      parts.push_back(torch::zeros({numel[k]}, f64));
      continue;
    }
    std::vector<float> w;
    for (double n : rows[k].samples)
      w.push_back(float(n / m[2 * k]));
    // The aggregation kernel: fp64 running sums over the rows in place (no stacked copy),
    // rounded once to fp32 on one rank. Over ranks the fp64 sums themselves go through the
    // all-reduce and are rounded once after it, so the result differs from one rank's only where
    // the fp64 sums' order changes an fp32 rounding (about 1e-16 relative before rounding).
    if (!multi) {
      parts.push_back(fusion::ops::weighted_sum_rows(rows[k].rows, w));
    } else if (rows[k].rows[0].is_cpu()) {
      parts.push_back(
          fusion::ops::weighted_sum_rows(rows[k].rows, w, kernels::Accumulator::kFloat64, true));
    } else {
      auto acc = torch::zeros({numel[k]}, f64);
      for (size_t i = 0; i < rows[k].rows.size(); ++i)
        acc.add_(rows[k].rows[i].to(torch::kFloat64), double(w[i]));
      parts.push_back(acc);
    }
  }
  AggregateReport rep;
  if (!parts.empty()) {
    auto sum = torch::cat(parts);
    if (multi) {
      c->all_reduce_sum(sum);
      sum = sum.to(torch::kFloat32);
    }
    int64_t off = 0;
    for (int k = 0; k < 2; ++k) {
      if (m[2 * k + 1] == 0) continue;
      towers[k]->load_flat(sum.narrow(0, off, numel[k]));
      off += numel[k];
    }
  }
  rep.image_clients = int64_t(m[1]);
  rep.text_clients = int64_t(m[3]);
  std::vector<int64_t> bad = rows[0].bad;
  bad.insert(bad.end(), rows[1].bad.begin(), rows[1].bad.end());
  rep.skipped = c ? comm::gather_ids(*c, bad) : bad;
  return rep;
}

FedAvgStrategy::FedAvgStrategy(const Config& cfg, const FederatedData& data)
    : cfg_(cfg), data_(data), executor_(make_executor(cfg, data)) {
  const auto dev = data.pool.images.device();
  torch::manual_seed(cfg.seed);
  global_.image = make_image_tower(cfg.model.image, data.height, data.width, data.num_classes);
  global_.text = make_text_tower(cfg.model.text, data.tokenizer->size(), cfg.data.max_tokens,
                                 data.num_classes);
  global_.image->to(dev);
  global_.text->to(dev);
}

RoundStats FedAvgStrategy::run_round(const std::vector<const ClientSpec*>& cohort, int64_t round) {
  FedAvgTask task(cfg_, global_);
  // Each rank trains its share of the cohort (balanced by samples x model size); the towers are
  // averaged from every rank's partial sums (one all-reduce), the statistics from every
  // client's record.
  auto& world = comm::world();
  const double image_params = double(global_.image->num_params());
  const double text_params = double(global_.text->num_params());
  const auto mine =
      comm::local_share(cohort, world, comm::Placement::kCost, [&](const ClientSpec& c) {
        return double(c.indices.size()) * ((holds_image(c.kind) ? image_params : 0.0) +
                                           (holds_text(c.kind) ? text_params : 0.0));
      });
  const auto t0 = std::chrono::steady_clock::now();
  const auto updates = executor_->train(mine, task, round);
  const auto t1 = std::chrono::steady_clock::now();
  const auto rep = FedAvg::aggregate(updates, global_, &world);
  const auto t2 = std::chrono::steady_clock::now();
  RoundStats s = round_stats(comm::gather_records(world, updates));
  s.skipped.insert(s.skipped.end(), rep.skipped.begin(), rep.skipped.end());  // run.cpp dedups
  s.extra["image_clients"] = rep.image_clients;
  s.extra["text_clients"] = rep.text_clients;
  // Where the round's time went on this rank: local training, and the aggregation (with the
  // all-reduce under mpirun).
  s.extra["train_s"] = std::chrono::duration<double>(t1 - t0).count();
  s.extra["aggregate_s"] = std::chrono::duration<double>(t2 - t1).count();
  return s;
}

EvalResult FedAvgStrategy::evaluate() {
  return engine::evaluate(global_, data_, cfg_.eval_batch_size);
}

void FedAvgStrategy::save(Checkpoint& ck) const {
  ck.tensors["image"] = global_.image->flat().cpu();
  ck.tensors["text"] = global_.text->flat().cpu();
}

void FedAvgStrategy::load(const Checkpoint& ck) {
  MMFL_CHECK(ck.tensors.count("image") && ck.tensors.count("text"),
             "checkpoint lacks the 'image' or 'text' tower of a FedAvg run");
  global_.image->load_flat(ck.tensors.at("image"));
  global_.text->load_flat(ck.tensors.at("text"));
}

nlohmann::json FedAvgStrategy::describe() const {
  return {{"image_tower_params", global_.image->num_params()},
          {"text_tower_params", global_.text->num_params()},
          {"executor", executor_->name()}};
}

std::unique_ptr<Strategy> make_strategy(const Config& cfg, const FederatedData& data,
                                        const std::string& run_dir) {
  switch (cfg.strategy) {
    case StrategyKind::kFedAvg:
      return std::make_unique<FedAvgStrategy>(cfg, data);
    case StrategyKind::kCreamFl:
    case StrategyKind::kPublicOnly:
      return std::make_unique<CreamFlStrategy>(cfg, data, run_dir);
    case StrategyKind::kLora:
      return std::make_unique<LoraStrategy>(cfg, data, run_dir);
    case StrategyKind::kMoma:
      return std::make_unique<MomaStrategy>(cfg, data, run_dir);
    default:
      MMFL_FAIL("unknown StrategyKind ", static_cast<int>(cfg.strategy));
  }
}

}  // namespace mmfl::engine
