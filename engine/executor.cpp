#include "engine/executor.h"

#include <ATen/Parallel.h>
#include <torch/nn/functional/loss.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/adam.h>
#include <torch/optim/sgd.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <map>
#include <numeric>
#include <sstream>
#include <thread>

#include "engine/batched.h"
#include "engine/evaluate.h"
#include "fusion/contrastive.h"
#include "mmfl/error.h"

namespace mmfl::engine {

namespace {
namespace F = torch::nn::functional;
}  // namespace

std::mutex& torch_init_mutex() {
  static std::mutex m;
  return m;
}

std::string arch_key(const ClientArch& a) {
  std::ostringstream os;
  os << modalities::to_string(a.image.kind) << ':' << a.image.width << ':' << a.image.depth << ':'
     << a.image.embed_dim << '|' << modalities::to_string(a.text.kind) << ':' << a.text.width << ':'
     << a.text.depth << ':' << a.text.heads << ':' << a.text.embed_dim;
  return os.str();
}

torch::Tensor ClientJob::extra_loss(const torch::Tensor&, const torch::Tensor&,
                                    const torch::Tensor&) {
  MMFL_FAIL("this strategy's task asked for an extra pass but defines no extra_loss");
}

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

std::vector<int64_t> shuffled(const std::vector<int64_t>& indices, std::mt19937_64& rng) {
  std::vector<int64_t> order(indices);
  std::shuffle(order.begin(), order.end(), rng);
  return order;
}

std::vector<torch::Tensor> shuffled_batches(const std::vector<int64_t>& indices, int64_t batch_size,
                                            std::mt19937_64& rng, const torch::Device& device) {
  const auto perm = torch::tensor(shuffled(indices, rng), torch::kInt64).to(device);
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

torch::Tensor TowerView::features(Modality mod, const torch::Tensor& x) {
  Tower& t = mod == Modality::kImage ? *m_.image : *m_.text;
  t.eval();
  auto f = batched_features(t, x, batch_);
  t.train();
  return f;
}

Tower* TowerView::tower(Modality mod) {
  return (mod == Modality::kImage ? m_.image : m_.text).get();
}

torch::Tensor TowerView::flat(Modality mod) {
  return (mod == Modality::kImage ? m_.image : m_.text)->flat();
}

Update ClientTrainer::run(const ClientSpec& spec, LocalTask& task, int64_t round) {
  const auto job = task.job(spec);
  GlobalModel& m = model_for(task.arch(spec.kind));
  const bool img = holds_image(spec.kind), txt = holds_text(spec.kind);
  std::vector<torch::Tensor> params;
  if (img) {
    m.image->load_flat(job->image);
    for (auto& p : m.image->trainable_parameters())
      params.push_back(p);
  }
  if (txt) {
    m.text->load_flat(job->text);
    for (auto& p : m.text->trainable_parameters())
      params.push_back(p);
  }
  TowerView view(m, cfg_.eval_batch_size);
  job->begin(view);

  const auto& t = cfg_.train;
  auto opt = make_optimizer(t, t.lr, params);
  const auto dev = data_.pool.images.device();
  const auto extra = task.extra_pass();
  std::vector<int64_t> extra_rows;
  if (extra) {
    extra_rows.resize(size_t(extra->split->size()));
    std::iota(extra_rows.begin(), extra_rows.end(), int64_t(0));
  }
  auto rng = make_rng(cfg_.seed, kStreamLocalOrder, uint64_t(round), uint64_t(spec.id));
  // Summed on the device: one host sync per client, not one per step.
  auto loss_sum = torch::zeros({}, data_.pool.images.options());
  int64_t steps = 0;
  auto step = [&](const torch::Tensor& loss) {
    optimizer_step(*opt, loss, t);
    loss_sum += loss.detach();
    ++steps;
  };
  m.image->train();
  m.text->train();
  for (int64_t epoch = 0; epoch < t.epochs; ++epoch) {
    for (const auto& rows : shuffled_batches(spec.indices, t.batch_size, rng, dev))
      step(supervised_loss(m, spec.kind, data_.pool, rows, t));
    if (!extra) continue;
    const PairedSplit& s = *extra->split;
    for (const auto& rows : shuffled_batches(extra_rows, extra->batch_size, rng, dev)) {
      const auto zi = img ? m.image->features(s.images.index_select(0, rows)) : torch::Tensor();
      const auto zt = txt ? m.text->features(s.tokens.index_select(0, rows)) : torch::Tensor();
      step(job->extra_loss(zi, zt, rows));
    }
  }
  Update u;
  u.client_id = spec.id;
  u.kind = spec.kind;
  u.num_samples = int64_t(spec.indices.size());
  u.loss = steps ? loss_sum.item<double>() / double(steps) : 0.0;
  u.bytes_down = job->down.bytes();
  job->finish(view, u);
  return u;
}

GlobalModel& ClientTrainer::model_for(const ClientArch& a) {
  const auto key = arch_key(a);
  auto it = models_.find(key);
  if (it != models_.end()) return it->second;
  GlobalModel m;
  {
    // Module construction draws from torch's global generator; the weights are overwritten
    // by load_flat, but concurrent draws must not race.
    std::lock_guard<std::mutex> lock(torch_init_mutex());
    m.image = make_image_tower(a.image, data_.height, data_.width, data_.num_classes);
    m.text = make_text_tower(a.text, data_.tokenizer->size(), cfg_.data.max_tokens,
                             data_.num_classes, &cfg_);
  }
  m.image->to(data_.pool.images.device());
  m.text->to(data_.pool.images.device());
  return models_.emplace(key, std::move(m)).first->second;
}

namespace {

class SequentialExecutor : public Executor {
 public:
  SequentialExecutor(const Config& cfg, const FederatedData& data) : trainer_(cfg, data) {}
  std::string name() const override { return "sequential"; }
  std::vector<Update> train(const std::vector<const ClientSpec*>& cohort, LocalTask& task,
                            int64_t round) override {
    std::vector<Update> out;
    out.reserve(cohort.size());
    for (const ClientSpec* c : cohort)
      out.push_back(trainer_.run(*c, task, round));
    return out;
  }

 private:
  ClientTrainer trainer_;
};

// Clients spread over worker threads, each with its own towers and its share of the intra-op
// threads. A client's arithmetic does not depend on which worker trains it: every worker runs
// with the same intra-op thread count, and each client's data order comes from its own seed.
class ParallelExecutor : public Executor {
 public:
  ParallelExecutor(const Config& cfg, const FederatedData& data) : cfg_(cfg), data_(data) {
    const int64_t cores = std::max<int64_t>(1, at::get_num_threads());
    workers_ = cfg.executor.workers > 0 ? cfg.executor.workers : cores;
    threads_per_worker_ = std::max<int64_t>(1, cores / workers_);
    for (int64_t w = 0; w < workers_; ++w)
      trainers_.push_back(std::make_unique<ClientTrainer>(cfg, data));
  }
  std::string name() const override { return "parallel"; }

  std::vector<Update> train(const std::vector<const ClientSpec*>& cohort, LocalTask& task,
                            int64_t round) override {
    std::vector<Update> out(cohort.size());
    std::vector<std::exception_ptr> errors(static_cast<size_t>(workers_));
    std::atomic<size_t> next{0};
    auto work = [&](int64_t w) {
      try {
        at::set_num_threads(int(threads_per_worker_));
        for (size_t i = next++; i < cohort.size(); i = next++)
          out[i] = trainers_[size_t(w)]->run(*cohort[i], task, round);
      } catch (...) {
        errors[size_t(w)] = std::current_exception();
        next = cohort.size();  // the others stop after their current client
      }
    };
    const int64_t n = std::min<int64_t>(workers_, int64_t(cohort.size()));
    std::vector<std::thread> threads;
    for (int64_t w = 1; w < n; ++w)
      threads.emplace_back(work, w);
    // The calling thread is worker 0; its intra-op thread count is restored afterwards.
    const int before = at::get_num_threads();
    work(0);
    at::set_num_threads(before);
    for (auto& th : threads)
      th.join();
    for (auto& e : errors)
      if (e) std::rethrow_exception(e);
    return out;
  }

 private:
  const Config& cfg_;
  const FederatedData& data_;
  int64_t workers_ = 1, threads_per_worker_ = 1;
  std::vector<std::unique_ptr<ClientTrainer>> trainers_;
};

}  // namespace

ExecutorKind resolve_executor_kind(ExecutorKind kind, const torch::Device& device) {
  if (kind != ExecutorKind::kAuto) return kind;
  return device.is_cuda() ? ExecutorKind::kBatched : ExecutorKind::kParallel;
}

std::unique_ptr<Executor> make_executor(const Config& cfg, const FederatedData& data) {
  switch (resolve_executor_kind(cfg.executor.kind, data.pool.images.device())) {
    case ExecutorKind::kSequential:
      return std::make_unique<SequentialExecutor>(cfg, data);
    case ExecutorKind::kParallel:
      return std::make_unique<ParallelExecutor>(cfg, data);
    case ExecutorKind::kBatched:
      return make_batched_executor(cfg, data);
    default:
      MMFL_FAIL("unknown ExecutorKind ", static_cast<int>(cfg.executor.kind));
  }
}

}  // namespace mmfl::engine
