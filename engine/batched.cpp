#include "engine/batched.h"

#include <torch/nn/functional/normalization.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "mmfl/error.h"
#include "modalities/image/pool.h"
#include "modalities/text/tokenizer.h"

namespace mmfl::engine {

namespace {

namespace F = torch::nn::functional;

// x [C, B, in], w [C, out, in], b [C, out] -> [C, B, out]: every client's linear layer at once.
torch::Tensor stacked_linear(const torch::Tensor& x, const torch::Tensor& w,
                             const torch::Tensor& b) {
  return torch::baddbmm(b.unsqueeze(1), x, w.transpose(1, 2));
}

enum class StackKind { kCnn, kMlp, kBow };

// One tower (encoder + class head) of C clients: parameter k is [C, *shape_k], in the order of
// Tower::parameters(), so a client's flat vector is the concatenation of its slices.
class StackedTower {
 public:
  StackedTower(const Tower& tmpl, StackKind kind, int64_t depth, std::vector<bool> pool,
               int64_t clients, const torch::Device& dev)
      : kind_(kind), depth_(depth), pool_(std::move(pool)), clients_(clients) {
    for (const auto& p : tmpl.parameters()) {
      numels_.push_back(p.numel());
      std::vector<int64_t> s = {clients};
      s.insert(s.end(), p.sizes().begin(), p.sizes().end());
      params_.push_back(torch::zeros(s, torch::TensorOptions().device(dev)).requires_grad_());
    }
    // Encoder layers (weight + bias each), then the head's weight and bias.
    const int64_t expected = (kind == StackKind::kBow ? 1 : 0) + 2 * (depth + 1) + 2;
    MMFL_CHECK(int64_t(params_.size()) == expected, "internal: the stacked layout expects ",
               expected, " parameters, the tower has ", params_.size());
  }

  const std::vector<torch::Tensor>& params() const { return params_; }

  // flats: [C, P], one client's Tower::flat() per row.
  void load(const torch::Tensor& flats) {
    torch::NoGradGuard no_grad;
    int64_t at = 0;
    for (size_t k = 0; k < params_.size(); ++k) {
      params_[k].copy_(flats.narrow(1, at, numels_[k]).view(params_[k].sizes()));
      at += numels_[k];
    }
  }

  torch::Tensor flat(int64_t c) const {
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> parts;
    for (const auto& p : params_)
      parts.push_back(p[c].reshape({-1}));
    return torch::cat(parts);
  }

  // x: [C, B, 1, H, W] images or [C, B, L] token ids -> [C, B, D].
  torch::Tensor features(const torch::Tensor& x) const {
    const int64_t c = clients_, b = x.size(1);
    switch (kind_) {
      case StackKind::kCnn: {
        // The clients' channels side by side: [B, C * channels, H, W], one grouped convolution
        // per layer (groups = clients).
        auto y = x.transpose(0, 1).reshape({b, c * x.size(2), x.size(3), x.size(4)});
        for (int64_t i = 0; i < depth_; ++i) {
          const auto& w = params_[size_t(2 * i)];
          const auto& bias = params_[size_t(2 * i + 1)];
          y = torch::conv2d(y, w.reshape({c * w.size(1), w.size(2), w.size(3), w.size(4)}),
                            bias.reshape({-1}), 1, 1, 1, c);
          y = pool_[size_t(i)] ? modalities::relu_max_pool2(y) : torch::relu(y);
        }
        // Per client (channel, h, w) order, as nn::Flatten gives.
        y = y.reshape({b, c, -1}).transpose(0, 1);
        return stacked_linear(y, params_[size_t(2 * depth_)], params_[size_t(2 * depth_ + 1)]);
      }
      case StackKind::kMlp: {
        auto y = x.reshape({c, b, -1});
        for (int64_t i = 0; i < depth_; ++i)
          y = torch::relu(stacked_linear(y, params_[size_t(2 * i)], params_[size_t(2 * i + 1)]));
        return stacked_linear(y, params_[size_t(2 * depth_)], params_[size_t(2 * depth_ + 1)]);
      }
      case StackKind::kBow: {
        const auto& e = params_[0];  // [C, V, W]
        const int64_t v = e.size(1), width = e.size(2);
        const auto offset = torch::arange(c, x.options()).mul(v).view({c, 1, 1});
        // Pad positions are multiplied by zero, so the pad rows never receive a gradient: what
        // nn::Embedding's padding_idx does per client.
        const auto mask = x.ne(modalities::Tokenizer::kPad).unsqueeze(-1).to(e.scalar_type());
        auto y = e.reshape({c * v, width})
                     .index_select(0, (x + offset).reshape({-1}))
                     .view({c, b, x.size(2), width});
        y = (y * mask).sum(2);
        for (int64_t i = 0; i < depth_; ++i)
          y = torch::relu(
              stacked_linear(y, params_[size_t(1 + 2 * i)], params_[size_t(2 + 2 * i)]));
        return stacked_linear(y, params_[size_t(1 + 2 * depth_)], params_[size_t(2 + 2 * depth_)]);
      }
      default:
        MMFL_FAIL("unknown StackKind ", static_cast<int>(kind_));
    }
  }

  torch::Tensor logits(const torch::Tensor& z) const {
    const size_t n = params_.size();
    return stacked_linear(z, params_[n - 2], params_[n - 1]);
  }

 private:
  StackKind kind_;
  int64_t depth_;
  std::vector<bool> pool_;  // cnn: whether conv block i is followed by a 2x2 max-pool
  int64_t clients_;
  std::vector<int64_t> numels_;
  std::vector<torch::Tensor> params_;
};

std::unique_ptr<StackedTower> stack_image(const modalities::ImageEncoderConfig& cfg,
                                          const Tower& tmpl, int64_t h, int64_t w, int64_t clients,
                                          const torch::Device& dev) {
  std::vector<bool> pool;
  if (cfg.kind == modalities::ImageEncoderKind::kCnn) {
    // The pooling rule of modalities' CnnEncoder: pool while the map is at least 4x4.
    for (int64_t i = 0; i < cfg.depth; ++i) {
      pool.push_back(h >= 4 && w >= 4);
      if (pool.back()) h /= 2, w /= 2;
    }
    return std::make_unique<StackedTower>(tmpl, StackKind::kCnn, cfg.depth, pool, clients, dev);
  }
  return std::make_unique<StackedTower>(tmpl, StackKind::kMlp, cfg.depth, pool, clients, dev);
}

// Per-client cross entropy of logits [C, B, K] against y [C, B], mean over each client's valid
// rows (mask [C, B] bool; n [C] valid counts, at least 1) -> [C].
torch::Tensor masked_ce(const torch::Tensor& logits, const torch::Tensor& y,
                        const torch::Tensor& mask, const torch::Tensor& n) {
  const auto ce = -torch::log_softmax(logits, -1).gather(-1, y.unsqueeze(-1)).squeeze(-1);
  return torch::where(mask, ce, torch::zeros_like(ce)).sum(1) / n;
}

// Per-client symmetric InfoNCE (fusion::clip_loss) over each client's valid rows only: invalid
// columns get a logit far below any real one, so they take no probability.
torch::Tensor masked_clip(const torch::Tensor& zi, const torch::Tensor& zt,
                          const torch::Tensor& mask, const torch::Tensor& n, double temperature) {
  const auto opts = F::NormalizeFuncOptions().dim(-1);
  const auto a = F::normalize(zi, opts), b = F::normalize(zt, opts);
  const auto logits = torch::bmm(a, b.transpose(1, 2)) / temperature;  // [C, B, B]
  const auto cols = mask.logical_not().unsqueeze(1);
  auto one_way = [&](const torch::Tensor& l) {
    const auto diag = torch::log_softmax(l.masked_fill(cols, -1e9), -1).diagonal(0, 1, 2);
    return -torch::where(mask, diag, torch::zeros_like(diag)).sum(1) / n;
  };
  return 0.5 * (one_way(logits) + one_way(logits.transpose(1, 2)));
}

// Per-client optimizer state over stacked parameters, with torch::optim's SGD and Adam update
// rules; clients outside `active` are left exactly as they were (weights and state).
class StackedOptimizer {
 public:
  StackedOptimizer(const TrainConfig& t, std::vector<torch::Tensor> params, int64_t clients)
      : t_(t), params_(std::move(params)), steps_(size_t(clients), 0) {
    for (const auto& p : params_) {
      a_.push_back(torch::zeros_like(p));
      if (t.optimizer == OptimizerKind::kAdam) b_.push_back(torch::zeros_like(p));
    }
  }

  // Gradients become undefined, as torch::optim's zero_grad leaves them: a parameter that a
  // step's loss does not reach (the class heads in CreamFL's public-set pass) is then skipped
  // by step(), momentum included, as torch::optim::SGD skips it.
  void zero_grad() {
    for (auto& p : params_)
      p.mutable_grad().reset();
  }

  // active: [C] bool on the parameters' device; active_host: the same on the host.
  void step(const torch::Tensor& active, const std::vector<bool>& active_host) {
    torch::NoGradGuard no_grad;
    const int64_t c = int64_t(steps_.size());
    const bool all = std::all_of(active_host.begin(), active_host.end(), [](bool x) { return x; });
    if (t_.grad_clip > 0) clip(c);
    for (size_t i = 0; i < steps_.size(); ++i)
      steps_[i] += active_host[i] ? 1 : 0;
    for (size_t k = 0; k < params_.size(); ++k) {
      auto& p = params_[k];
      auto g = p.grad();
      if (!g.defined()) continue;
      if (t_.weight_decay != 0) g = g.add(p, t_.weight_decay);
      std::vector<int64_t> bshape(size_t(p.dim()), 1);
      bshape[0] = c;
      const auto m = active.view(bshape);
      switch (t_.optimizer) {
        case OptimizerKind::kSgd: {
          // torch::optim::SGD: buf = momentum * buf + g (buf starts as g); p -= lr * buf.
          auto& buf = a_[k];
          if (all) {
            buf.mul_(t_.momentum).add_(g);
            p.add_(buf, -t_.lr);
          } else {
            buf.copy_(torch::where(m, buf * t_.momentum + g, buf));
            p.copy_(torch::where(m, p.add(buf, -t_.lr), p));
          }
          break;
        }
        case OptimizerKind::kAdam: {
          // torch::optim::Adam's rule with each client's own step count.
          constexpr double b1 = 0.9, b2 = 0.999, eps = 1e-8;
          std::vector<double> bc1(static_cast<size_t>(c)), bc2(static_cast<size_t>(c));
          for (size_t i = 0; i < size_t(c); ++i) {
            const double s = double(std::max<int64_t>(steps_[i], 1));
            bc1[i] = t_.lr / (1 - std::pow(b1, s));
            bc2[i] = std::sqrt(1 - std::pow(b2, s));
          }
          const auto step_size = torch::tensor(bc1, p.options()).view(bshape);
          const auto sqrt_bc2 = torch::tensor(bc2, p.options()).view(bshape);
          auto& ea = a_[k];
          auto& es = b_[k];
          const auto new_a = ea * b1 + g * (1 - b1);
          const auto new_s = es * b2 + g * g * (1 - b2);
          const auto new_p = p - step_size * new_a / (new_s.sqrt() / sqrt_bc2 + eps);
          ea.copy_(all ? new_a : torch::where(m, new_a, ea));
          es.copy_(all ? new_s : torch::where(m, new_s, es));
          p.copy_(all ? new_p : torch::where(m, new_p, p));
          break;
        }
        default:
          MMFL_FAIL("unknown OptimizerKind ", static_cast<int>(t_.optimizer));
      }
    }
  }

 private:
  // clip_grad_norm_ per client: each client's gradient norm over all its parameters.
  void clip(int64_t c) {
    std::vector<torch::Tensor> norms;
    for (auto& p : params_)
      if (p.grad().defined()) norms.push_back(p.grad().reshape({c, -1}).norm(2, 1));
    if (norms.empty()) return;
    const auto total = torch::stack(norms).norm(2, 0);  // [C]
    const auto coef = (t_.grad_clip / (total + 1e-6)).clamp_max(1.0);
    for (auto& p : params_) {
      if (!p.grad().defined()) continue;
      std::vector<int64_t> bshape(size_t(p.dim()), 1);
      bshape[0] = c;
      p.mutable_grad().mul_(coef.view(bshape));
    }
  }

  const TrainConfig& t_;
  std::vector<torch::Tensor> params_;
  std::vector<torch::Tensor> a_, b_;  // SGD: momentum buffers; Adam: first and second moments
  std::vector<int64_t> steps_;
};

class BatchedExecutor : public Executor {
 public:
  BatchedExecutor(const Config& cfg, const FederatedData& data)
      : cfg_(cfg), data_(data), scratch_(cfg, data) {}
  std::string name() const override { return "batched"; }

  std::vector<Update> train(const std::vector<const ClientSpec*>& cohort, LocalTask& task,
                            int64_t round) override {
    std::vector<Update> out(cohort.size());
    // Groups of one architecture and client kind, in order of first appearance.
    std::vector<std::string> order;
    std::map<std::string, std::vector<size_t>> groups;
    for (size_t i = 0; i < cohort.size(); ++i) {
      const auto key = arch_key(task.arch(cohort[i]->kind)) + "#" + to_string(cohort[i]->kind);
      if (!groups.count(key)) order.push_back(key);
      groups[key].push_back(i);
    }
    for (const auto& key : order) {
      const auto& members = groups[key];
      const ClientKind kind = cohort[members[0]]->kind;
      const ClientArch arch = task.arch(kind);
      if (!stackable(arch)) {
        for (size_t i : members)
          out[i] = scratch_.run(*cohort[i], task, round);
        continue;
      }
      const int64_t chunk = chunk_size(arch, kind, task);
      for (size_t b = 0; b < members.size(); b += size_t(chunk)) {
        std::vector<size_t> part(members.begin() + long(b),
                                 members.begin() + long(std::min(members.size(), b + chunk)));
        std::vector<const ClientSpec*> specs;
        for (size_t i : part)
          specs.push_back(cohort[i]);
        auto ups = train_stacked(specs, arch, kind, task, round);
        for (size_t j = 0; j < part.size(); ++j)
          out[part[j]] = std::move(ups[j]);
      }
    }
    return out;
  }

 private:
  // Clients per stacked chunk within executor.max_memory_gb: weights, gradients and optimizer
  // state (4 copies), plus the activations of one batch kept for the backward pass (estimated
  // from the layer sizes, 3 saved tensors per layer).
  int64_t chunk_size(const ClientArch& arch, ClientKind kind, LocalTask& task) {
    GlobalModel& tmpl = scratch_.model_for(arch);
    int64_t params = 0, acts = 0;
    const int64_t b = std::max(cfg_.train.batch_size,
                               task.extra_pass() ? task.extra_pass()->batch_size : int64_t(0));
    if (holds_image(kind)) {
      params += tmpl.image->num_params();
      int64_t h = data_.height, w = data_.width, per = h * w;
      if (arch.image.kind == modalities::ImageEncoderKind::kCnn) {
        for (int64_t i = 0; i < arch.image.depth; ++i) {
          per += 3 * (arch.image.width << std::min<int64_t>(i, 4)) * h * w;
          if (h >= 4 && w >= 4) h /= 2, w /= 2;
        }
      } else {
        per += 3 * arch.image.width * arch.image.depth;
      }
      acts += b * (per + 3 * arch.image.embed_dim);
    }
    if (holds_text(kind)) {
      params += tmpl.text->num_params();
      acts += b * (3 * cfg_.data.max_tokens * arch.text.width +
                   3 * arch.text.width * arch.text.depth + 3 * arch.text.embed_dim);
    }
    const double per_client = 4.0 * (4.0 * double(params) + double(acts));
    const double budget = cfg_.executor.max_memory_gb * 1e9;
    return std::max<int64_t>(1, int64_t(budget / per_client));
  }

  struct Stack {
    std::unique_ptr<StackedTower> image, text;
  };

  // ClientView of client `c` of a stack, for the strategy's begin/finish hooks: features go
  // through a resident per-client tower loaded with that client's weights.
  class StackView : public ClientView {
   public:
    StackView(Stack& s, int64_t c, GlobalModel& scratch, int64_t batch)
        : s_(s), c_(c), scratch_(scratch), batch_(batch) {}
    torch::Tensor features(Modality m, const torch::Tensor& x) override {
      (m == Modality::kImage ? scratch_.image : scratch_.text)->load_flat(flat(m));
      return TowerView(scratch_, batch_).features(m, x);
    }
    torch::Tensor flat(Modality m) override {
      return (m == Modality::kImage ? s_.image : s_.text)->flat(c_);
    }

   private:
    Stack& s_;
    int64_t c_;
    GlobalModel& scratch_;
    int64_t batch_;
  };

  std::vector<Update> train_stacked(const std::vector<const ClientSpec*>& specs,
                                    const ClientArch& arch, ClientKind kind, LocalTask& task,
                                    int64_t round) {
    const int64_t c = int64_t(specs.size());
    const bool img = holds_image(kind), txt = holds_text(kind);
    const auto dev = data_.pool.images.device();
    const auto& t = cfg_.train;
    GlobalModel& tmpl = scratch_.model_for(arch);

    std::vector<std::unique_ptr<ClientJob>> jobs;
    for (const auto* s : specs)
      jobs.push_back(task.job(*s));
    Stack st;
    std::vector<torch::Tensor> params;
    if (img) {
      st.image = stack_image(arch.image, *tmpl.image, data_.height, data_.width, c, dev);
      std::vector<torch::Tensor> flats;
      for (auto& j : jobs)
        flats.push_back(j->image.to(dev));
      st.image->load(torch::stack(flats));
      params.insert(params.end(), st.image->params().begin(), st.image->params().end());
    }
    if (txt) {
      st.text = std::make_unique<StackedTower>(*tmpl.text, StackKind::kBow, arch.text.depth,
                                               std::vector<bool>{}, c, dev);
      std::vector<torch::Tensor> flats;
      for (auto& j : jobs)
        flats.push_back(j->text.to(dev));
      st.text->load(torch::stack(flats));
      params.insert(params.end(), st.text->params().begin(), st.text->params().end());
    }
    for (int64_t i = 0; i < c; ++i) {
      StackView v(st, i, tmpl, cfg_.eval_batch_size);
      jobs[size_t(i)]->begin(v);
    }

    StackedOptimizer opt(t, params, c);
    std::vector<std::mt19937_64> rngs;
    for (const auto* s : specs)
      rngs.push_back(make_rng(cfg_.seed, kStreamLocalOrder, uint64_t(round), uint64_t(s->id)));
    const auto fopts = data_.pool.images.options();
    auto loss_sum = torch::zeros({c}, fopts);
    std::vector<int64_t> steps(size_t(c), 0);
    const auto extra = task.extra_pass();
    std::vector<int64_t> extra_rows;
    if (extra) {
      extra_rows.resize(size_t(extra->split->size()));
      std::iota(extra_rows.begin(), extra_rows.end(), int64_t(0));
    }

    auto run_step = [&](const torch::Tensor& losses, const std::vector<bool>& act) {
      opt.zero_grad();
      losses.sum().backward();
      std::vector<uint8_t> a8(act.begin(), act.end());
      const auto active = torch::from_blob(a8.data(), {c}, torch::kUInt8).to(torch::kBool).to(dev);
      opt.step(active, act);
      loss_sum += losses.detach();
      for (size_t i = 0; i < act.size(); ++i)
        steps[i] += act[i] ? 1 : 0;
    };

    for (int64_t epoch = 0; epoch < t.epochs; ++epoch) {
      // Each client's own order, drawn in the same sequence as the one-client trainer draws it.
      std::vector<std::vector<int64_t>> orders;
      int64_t max_batches = 0;
      for (int64_t i = 0; i < c; ++i) {
        orders.push_back(shuffled(specs[size_t(i)]->indices, rngs[size_t(i)]));
        const int64_t nb = (int64_t(orders.back().size()) + t.batch_size - 1) / t.batch_size;
        max_batches = std::max(max_batches, nb);
      }
      for (int64_t s = 0; s < max_batches; ++s) {
        int64_t bmax = 0;
        for (const auto& o : orders)
          bmax = std::max(bmax, std::min(t.batch_size, int64_t(o.size()) - s * t.batch_size));
        std::vector<int64_t> idx(size_t(c * bmax), 0);
        std::vector<uint8_t> valid(size_t(c * bmax), 0);
        std::vector<bool> act(size_t(c), false);
        for (int64_t i = 0; i < c; ++i) {
          const auto& o = orders[size_t(i)];
          const int64_t from = s * t.batch_size;
          const int64_t n = std::max<int64_t>(0, std::min(t.batch_size, int64_t(o.size()) - from));
          act[size_t(i)] = n > 0;
          for (int64_t r = 0; r < n; ++r) {
            idx[size_t(i * bmax + r)] = o[size_t(from + r)];
            valid[size_t(i * bmax + r)] = 1;
          }
        }
        const auto rows = torch::tensor(idx, torch::kInt64).to(dev);
        const auto mask =
            torch::from_blob(valid.data(), {c, bmax}, torch::kUInt8).to(torch::kBool).to(dev);
        run_step(supervised(st, kind, rows, mask, c, bmax), act);
      }
      if (!extra) continue;
      const PairedSplit& sp = *extra->split;
      std::vector<std::vector<int64_t>> eorders;
      for (int64_t i = 0; i < c; ++i)
        eorders.push_back(shuffled(extra_rows, rngs[size_t(i)]));
      const int64_t n = int64_t(extra_rows.size());
      for (int64_t from = 0; from < n; from += extra->batch_size) {
        const int64_t b = std::min(extra->batch_size, n - from);
        std::vector<int64_t> idx;
        for (const auto& o : eorders)
          idx.insert(idx.end(), o.begin() + long(from), o.begin() + long(from + b));
        const auto rows = torch::tensor(idx, torch::kInt64).to(dev).view({c, b});
        const auto flat_rows = rows.reshape({-1});
        torch::Tensor zi, zt;
        if (img)
          zi = st.image->features(
              sp.images.index_select(0, flat_rows).view({c, b, 1, data_.height, data_.width}));
        if (txt) zt = st.text->features(sp.tokens.index_select(0, flat_rows).view({c, b, -1}));
        std::vector<torch::Tensor> losses;
        for (int64_t i = 0; i < c; ++i)
          losses.push_back(jobs[size_t(i)]->extra_loss(zi.defined() ? zi[i] : zi,
                                                       zt.defined() ? zt[i] : zt, rows[i]));
        run_step(torch::stack(losses), std::vector<bool>(size_t(c), true));
      }
    }

    const auto sums = loss_sum.cpu();
    std::vector<Update> out;
    for (int64_t i = 0; i < c; ++i) {
      const ClientSpec& spec = *specs[size_t(i)];
      Update u;
      u.client_id = spec.id;
      u.kind = spec.kind;
      u.num_samples = int64_t(spec.indices.size());
      u.loss = steps[size_t(i)] ? sums[i].item<double>() / double(steps[size_t(i)]) : 0.0;
      u.bytes_down = jobs[size_t(i)]->down.bytes();
      StackView v(st, i, tmpl, cfg_.eval_batch_size);
      jobs[size_t(i)]->finish(v, u);
      out.push_back(std::move(u));
    }
    return out;
  }

  // Per-client supervised loss [C] of one step: rows [C * B] of the pool, mask [C, B].
  torch::Tensor supervised(Stack& st, ClientKind kind, const torch::Tensor& rows,
                           const torch::Tensor& mask, int64_t c, int64_t b) {
    const auto& pool = data_.pool;
    const auto& t = cfg_.train;
    const auto y = pool.labels.index_select(0, rows).view({c, b});
    const auto n = mask.sum(1).to(pool.images.scalar_type()).clamp_min(1.0);
    auto loss = torch::zeros({c}, pool.images.options());
    torch::Tensor zi, zt;
    if (holds_image(kind)) {
      zi = st.image->features(
          pool.images.index_select(0, rows).view({c, b, 1, data_.height, data_.width}));
      loss = loss + masked_ce(st.image->logits(zi), y, mask, n);
    }
    if (holds_text(kind)) {
      zt = st.text->features(pool.tokens.index_select(0, rows).view({c, b, -1}));
      loss = loss + masked_ce(st.text->logits(zt), y, mask, n);
    }
    if (zi.defined() && zt.defined() && t.contrastive_weight > 0) {
      // A client whose batch has a single row skips the term, as the one-client loss does.
      const auto several = n.gt(1.0).to(loss.scalar_type());
      loss = loss + t.contrastive_weight * several * masked_clip(zi, zt, mask, n, t.temperature);
    }
    return loss;
  }

  const Config& cfg_;
  const FederatedData& data_;
  ClientTrainer scratch_;  // per-client towers: templates, views and the non-stackable fallback
};

}  // namespace

bool stackable(const ClientArch& arch) {
  return arch.text.kind == modalities::TextEncoderKind::kBow;
}

std::unique_ptr<Executor> make_batched_executor(const Config& cfg, const FederatedData& data) {
  return std::make_unique<BatchedExecutor>(cfg, data);
}

}  // namespace mmfl::engine
