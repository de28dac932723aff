#include "engine/strategy.h"

#include "engine/creamfl.h"
#include "engine/lora.h"
#include "fusion/ops/aggregate.h"
#include "mmfl/error.h"

namespace mmfl::engine {

namespace {

// Weighted mean of one tower over the updates that carry it; returns how many were averaged.
int64_t average_tower(const std::vector<Update>& updates, const std::string& group, Tower& tower,
                      std::vector<int64_t>& skipped) {
  std::vector<torch::Tensor> rows;
  std::vector<float> weights;
  std::vector<int64_t> ids;
  double total = 0;
  for (const auto& u : updates) {
    const auto it = u.up.dense.find(group);
    if (it == u.up.dense.end()) continue;
    rows.push_back(it->second.reshape({-1}));
    weights.push_back(float(u.num_samples));
    ids.push_back(u.client_id);
    total += double(u.num_samples);
  }
  if (rows.empty()) return 0;
  for (auto& w : weights)
    w = float(double(w) / total);
  const auto stacked = torch::stack(rows);
  const auto w = torch::tensor(weights, stacked.options());
  const auto r = fusion::ops::weighted_sum_finite(stacked, w);
  if (r.skipped > 0) {
    const auto bad = r.bad.cpu();
    for (size_t k = 0; k < ids.size(); ++k)
      if (bad[int64_t(k)].item<bool>()) skipped.push_back(ids[k]);
  }
  // Every update non-finite: keep the tower as it was.
  if (r.skipped == int64_t(rows.size())) return 0;
  tower.load_flat(r.out);
  return int64_t(rows.size()) - r.skipped;
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

RoundStats round_stats(const std::vector<Update>& updates) {
  RoundStats s;
  s.clients = int64_t(updates.size());
  int64_t trained = 0;
  for (const auto& u : updates) {
    s.bytes_down += u.bytes_down;
    s.bytes_up += u.bytes_up();
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

AggregateReport FedAvg::aggregate(const std::vector<Update>& updates, GlobalModel& global) {
  AggregateReport rep;
  rep.image_clients = average_tower(updates, "image", *global.image, rep.skipped);
  rep.text_clients = average_tower(updates, "text", *global.text, rep.skipped);
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
  const auto updates = executor_->train(cohort, task, round);
  const auto rep = FedAvg::aggregate(updates, global_);
  RoundStats s = round_stats(updates);
  s.skipped = rep.skipped;
  s.extra["image_clients"] = rep.image_clients;
  s.extra["text_clients"] = rep.text_clients;
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
    default:
      MMFL_FAIL("unknown StrategyKind ", static_cast<int>(cfg.strategy));
  }
}

}  // namespace mmfl::engine
