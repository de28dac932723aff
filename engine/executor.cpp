#include "engine/executor.h"

#include <torch/nn/functional/loss.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/adam.h>
#include <torch/optim/sgd.h>

#include <algorithm>
#include <numeric>

#include "fusion/contrastive.h"
#include "mmfl/error.h"

namespace mmfl::engine {

namespace {
constexpr uint64_t kStreamLocalOrder = 5;
namespace F = torch::nn::functional;

}  // namespace

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const TrainConfig& t, double lr,
                                                        std::vector<torch::Tensor> params) {
  switch (t.optimizer) {
    case OptimizerKind::kSgd:
      return std::make_unique<torch::optim::SGD>(
          params, torch::optim::SGDOptions(lr).momentum(t.momentum).weight_decay(t.weight_decay));
    case OptimizerKind::kAdam:
      return std::make_unique<torch::optim::Adam>(
          params, torch::optim::AdamOptions(lr).weight_decay(t.weight_decay));
    default:
      MMFL_FAIL("unknown OptimizerKind ", static_cast<int>(t.optimizer));
  }
}

void optimizer_step(torch::optim::Optimizer& opt, const torch::Tensor& loss, const TrainConfig& t) {
  opt.zero_grad();
  loss.backward();
  if (t.grad_clip > 0) {
    for (auto& group : opt.param_groups())
      torch::nn::utils::clip_grad_norm_(group.params(), t.grad_clip);
  }
  opt.step();
}

std::vector<torch::Tensor> shuffled_batches(const std::vector<int64_t>& indices, int64_t batch_size,
                                            std::mt19937_64& rng, const torch::Device& device) {
  std::vector<int64_t> order(indices);
  std::shuffle(order.begin(), order.end(), rng);
  const auto perm = torch::tensor(order, torch::kInt64).to(device);
  std::vector<torch::Tensor> out;
  for (int64_t b = 0; b < perm.size(0); b += batch_size)
    out.push_back(perm.narrow(0, b, std::min(batch_size, perm.size(0) - b)));
  return out;
}

torch::Tensor supervised_loss(GlobalModel& towers, ClientKind kind, const PairedSplit& split,
                              const torch::Tensor& rows, const TrainConfig& t) {
  const bool img = holds_image(kind), txt = holds_text(kind);
  const auto y = split.labels.index_select(0, rows);
  torch::Tensor loss = torch::zeros({}, split.images.options());
  torch::Tensor zi, zt;
  if (img) {
    zi = towers.image->features(split.images.index_select(0, rows));
    loss = loss + F::cross_entropy(towers.image->logits(zi), y);
  }
  if (txt) {
    zt = towers.text->features(split.tokens.index_select(0, rows));
    loss = loss + F::cross_entropy(towers.text->logits(zt), y);
  }
  if (img && txt && t.contrastive_weight > 0 && rows.size(0) > 1) {
    loss = loss + t.contrastive_weight * fusion::clip_loss(zi, zt, t.temperature);
  }
  return loss;
}

SequentialExecutor::SequentialExecutor(const Config& cfg, const FederatedData& data)
    : cfg_(cfg), data_(data) {
  const auto dev = data.pool.images.device();
  work_.image = make_image_tower(cfg.model.image, data.height, data.width, data.num_classes);
  work_.text = make_text_tower(cfg.model.text, data.tokenizer->size(), cfg.data.max_tokens,
                               data.num_classes);
  work_.image->to(dev);
  work_.text->to(dev);
}

std::vector<ClientUpdate> SequentialExecutor::train(const std::vector<const ClientSpec*>& cohort,
                                                    const GlobalModel& global, int64_t round) {
  std::vector<ClientUpdate> out;
  out.reserve(cohort.size());
  const auto image = global.image->flat(), text = global.text->flat();
  for (const ClientSpec* c : cohort)
    out.push_back(train_client(*c, image, text, round));
  return out;
}

ClientUpdate SequentialExecutor::train_client(const ClientSpec& spec,
                                              const torch::Tensor& global_image,
                                              const torch::Tensor& global_text, int64_t round) {
  const bool img = holds_image(spec.kind), txt = holds_text(spec.kind);
  const auto& t = cfg_.train;
  std::vector<torch::Tensor> params;
  ClientUpdate u;
  u.client_id = spec.id;
  u.kind = spec.kind;
  u.num_samples = int64_t(spec.indices.size());
  if (img) {
    work_.image->load_flat(global_image);
    for (auto& p : work_.image->parameters())
      params.push_back(p);
    u.bytes_down += 4 * work_.image->num_params();
  }
  if (txt) {
    work_.text->load_flat(global_text);
    for (auto& p : work_.text->parameters())
      params.push_back(p);
    u.bytes_down += 4 * work_.text->num_params();
  }
  work_.image->train();
  work_.text->train();
  auto opt = make_optimizer(t, t.lr, params);

  const auto dev = data_.pool.images.device();
  auto rng = make_rng(cfg_.seed, kStreamLocalOrder, uint64_t(round), uint64_t(spec.id));
  // Summed on the device: one host sync per client, not one per step.
  auto loss_sum = torch::zeros({}, data_.pool.images.options());
  int64_t steps = 0;
  for (int64_t epoch = 0; epoch < t.epochs; ++epoch) {
    for (const auto& rows : shuffled_batches(spec.indices, t.batch_size, rng, dev)) {
      const auto loss = supervised_loss(work_, spec.kind, data_.pool, rows, t);
      optimizer_step(*opt, loss, t);
      loss_sum += loss.detach();
      ++steps;
    }
  }
  u.loss = steps ? loss_sum.item<double>() / double(steps) : 0.0;
  if (img) u.image = work_.image->flat();
  if (txt) u.text = work_.text->flat();
  u.bytes_up = u.bytes_down;
  return u;
}

}  // namespace mmfl::engine
