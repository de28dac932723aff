#include "engine/lora.h"

#include <torch/nn/utils/clip_grad.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>

#include "engine/comm/distribute.h"
#include "engine/npy.h"
#include "fusion/lora/text_encoder.h"
#include "fusion/ops/aggregate.h"
#include "fusion/ops/sparse.h"
#include "mmfl/error.h"

namespace mmfl::engine {

namespace {

constexpr uint64_t kStreamLoraRestart = 41;  // stack/product: each round's fresh A

bool merges(LoraRule r) {
  return r == LoraRule::kStack || r == LoraRule::kProduct;
}

fusion::MiniLmEncoder& minilm(Tower& t) {
  auto* e = dynamic_cast<fusion::MiniLmEncoder*>(&t.encoder());
  MMFL_CHECK(e, "strategy lora: the text tower is not the MiniLM encoder");
  return *e;
}

torch::Tensor positions(const std::vector<std::pair<int64_t, int64_t>>& ranges) {
  std::vector<torch::Tensor> parts;
  for (const auto& [at, n] : ranges)
    parts.push_back(torch::arange(at, at + n, torch::kInt64));
  return parts.empty() ? torch::empty({0}, torch::kInt64) : torch::cat(parts);
}

// The k entries of x [n] of largest magnitude (ties: the lower index), indices ascending, and
// what is left (x with those entries zeroed).
std::pair<SparsePacket, torch::Tensor> top_k(const torch::Tensor& x, int64_t k) {
  auto packed = fusion::ops::topk_by_magnitude(x.contiguous().unsqueeze(0), k);
  SparsePacket p;
  p.indices = packed.indices[0];
  p.values = packed.values[0];
  p.dense_numel = x.numel();
  return {std::move(p), packed.residual[0]};
}

// out = sum_c w_c scatter(packet_c); every packet holds the same k.
torch::Tensor sparse_mean(const std::vector<const SparsePacket*>& packets,
                          const std::vector<double>& w, int64_t n) {
  std::vector<torch::Tensor> idx, val;
  for (const auto* p : packets) {
    idx.push_back(p->indices);
    val.push_back(p->values);
  }
  return fusion::ops::sparse_weighted_sum(torch::stack(idx), torch::stack(val),
                                          torch::tensor(std::vector<float>(w.begin(), w.end())), n);
}

// What every client of a round receives, and the context its job needs.
struct RoundContext {
  const Config* cfg = nullptr;
  const LoraLayout* layout = nullptr;
  ClientStateStore* states = nullptr;
  Tower* global_text = nullptr;
  torch::Tensor image;       // the global image tower, flat
  torch::Tensor text_start;  // the text tower as clients start it (broadcast adapter)
  Payload text_down;         // the text groups every text-holding client downloads
};

struct LoraJob : ClientJob {
  const RoundContext* ctx = nullptr;
  int64_t id = 0;

  void begin(ClientView& model) override {
    if (!text.defined() || !merges(ctx->cfg->lora_fed.rule)) return;
    // The base as the previous rounds' merges left it.
    Tower* t = model.tower(Modality::kText);
    MMFL_CHECK(t, "strategy lora: the executor holds no resident text tower for client ", id);
    auto& dst = minilm(*t);
    auto& src = minilm(*ctx->global_text);
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < dst.adapted().size(); ++i)
      dst.adapted()[i]->weight.copy_(src.adapted()[i]->weight);
  }

  void finish(ClientView& model, Update& u) override {
    torch::Tensor img, txt;
    if (image.defined()) img = model.flat(Modality::kImage);
    if (text.defined()) txt = model.flat(Modality::kText);
    for (const auto& t : {img, txt})
      if (t.defined() && !torch::isfinite(t).all().item<bool>()) {
        u.diverged = true;  // sends nothing; its residual and personal state stay as they were
        return;
      }
    if (img.defined()) u.up.dense["image"] = img;
    if (!txt.defined()) return;
    txt = txt.cpu();  // the text groups are small (adapters, projection, head): kept on the CPU
    const auto& L = *ctx->layout;
    const auto& f = ctx->cfg->lora_fed;
    u.up.dense["text.head"] = txt.index_select(0, L.head);
    ClientState state;
    if (auto kept = ctx->states->find(id)) state = *kept;
    bool keep = false;
    if (L.personal.numel() > 0) {
      state["B"] = txt.index_select(0, L.personal);
      keep = true;
    }
    if (L.sent.numel() > 0) {
      const auto trained = txt.index_select(0, L.sent);
      if (merges(f.rule)) {
        u.up.dense["text.adapter"] = trained;  // the factors themselves
      } else {
        auto delta = trained - text.index_select(0, L.sent);
        if (f.upload_density == 1.0) {
          u.up.dense["text.adapter"] = delta;
        } else {
          const auto r = state.find("residual");
          if (f.error_feedback && r != state.end()) delta = delta + r->second;
          const int64_t k = fusion::ops::topk_count(f.upload_density, delta.numel(),
                                                    "config key 'lora.upload_density'");
          auto [packet, residual] = top_k(delta, k);
          if (f.error_feedback) {
            state["residual"] = residual;
            keep = true;
          }
          u.up.sparse["text.adapter"] = std::move(packet);
        }
      }
    }
    if (keep) ctx->states->put(id, state);
  }
};

class LoraTask : public LocalTask {
 public:
  explicit LoraTask(const RoundContext& ctx) : ctx_(ctx) {}
  ClientArch arch(ClientKind) const override {
    return {ctx_.cfg->model.image, ctx_.cfg->model.text};
  }
  std::unique_ptr<ClientJob> job(const ClientSpec& spec) override {
    auto j = std::make_unique<LoraJob>();
    j->ctx = &ctx_;
    j->id = spec.id;
    if (holds_image(spec.kind)) j->image = j->down.dense["image"] = ctx_.image;
    if (holds_text(spec.kind)) {
      j->down.dense.insert(ctx_.text_down.dense.begin(), ctx_.text_down.dense.end());
      j->down.sparse.insert(ctx_.text_down.sparse.begin(), ctx_.text_down.sparse.end());
      j->text = ctx_.text_start;
      const auto& L = *ctx_.layout;
      if (L.personal.numel() > 0) {  // fedsa: the client's own B (zero before its first round)
        j->text = j->text.clone();
        const auto kept = ctx_.states->find(spec.id);
        const auto b =
            kept && kept->count("B") ? kept->at("B") : torch::zeros({L.personal.numel()});
        j->text.index_copy_(0, L.personal, b);
      }
    }
    return j;
  }

 private:
  const RoundContext& ctx_;
};

// Weighted mean of the rows of `rows` [C, n] (fp64 accumulation), NaN-free by construction.
torch::Tensor weighted_mean(const std::vector<torch::Tensor>& rows, const std::vector<double>& w) {
  std::vector<float> wf(w.begin(), w.end());
  const auto stacked = torch::stack(rows);
  return fusion::ops::weighted_sum(stacked, torch::tensor(wf, stacked.options()));
}

}  // namespace

// Trains the text-holding clients of a cohort together: at each step, every client that still
// has a batch contributes its rows to one forward and backward pass of the shared base, its
// adapters applied to its own rows by the multi-adapter kernels (LoraLinear cohort mode); the
// projection, head, image tower and optimizer stay per client. Each client sees the batches
// the one-client trainer would give it (same seeded order) and its loss is its own, so its
// update equals that trainer's up to the rounding of the larger products.
class LoraCohortTrainer {
 public:
  LoraCohortTrainer(const Config& cfg, const FederatedData& data) : cfg_(cfg), data_(data) {}

  std::vector<Update> train(const std::vector<const ClientSpec*>& clients, LocalTask& task,
                            Tower& driver, int64_t round) {
    const auto& t = cfg_.train;
    const auto dev = data_.pool.images.device();
    const size_t C = clients.size();
    while (models_.size() < C) {
      GlobalModel m;
      {
        std::lock_guard<std::mutex> lock(torch_init_mutex());
        m.image = make_image_tower(cfg_.model.image, data_.height, data_.width, data_.num_classes);
        m.text =
            make_text_tower(cfg_.model.text, 0, cfg_.data.max_tokens, data_.num_classes, &cfg_);
      }
      m.image->to(dev);
      m.text->to(dev);
      models_.push_back(std::move(m));
    }
    struct Client {
      std::unique_ptr<ClientJob> job;
      std::unique_ptr<torch::optim::Optimizer> opt;
      std::vector<torch::Tensor> params;
      std::vector<torch::Tensor> batches;  // every epoch's, in order
      torch::Tensor loss_sum;
      int64_t steps = 0;
    };
    std::vector<Client> cs(C);
    size_t longest = 0;
    for (size_t c = 0; c < C; ++c) {
      const auto& spec = *clients[c];
      auto& cl = cs[c];
      auto& m = models_[c];
      cl.job = task.job(spec);
      if (cl.job->image.defined()) {
        m.image->load_flat(cl.job->image);
        for (auto& p : m.image->trainable_parameters())
          cl.params.push_back(p);
      }
      m.text->load_flat(cl.job->text);
      for (auto& p : m.text->trainable_parameters())
        cl.params.push_back(p);
      TowerView view(m, cfg_.eval_batch_size);
      cl.job->begin(view);
      cl.opt = make_optimizer(t, t.lr, cl.params);
      auto rng = make_rng(cfg_.seed, kStreamLocalOrder, uint64_t(round), uint64_t(spec.id));
      for (int64_t e = 0; e < t.epochs; ++e)
        for (auto& b : shuffled_batches(spec.indices, t.batch_size, rng, dev))
          cl.batches.push_back(b);
      cl.loss_sum = torch::zeros({}, data_.pool.images.options());
      longest = std::max(longest, cl.batches.size());
      m.image->train();
      m.text->train();
    }
    auto& drv = minilm(driver);
    for (size_t step = 0; step < longest; ++step) {
      std::vector<size_t> act;
      std::vector<int64_t> offsets = {0};
      std::vector<torch::Tensor> ids;
      for (size_t c = 0; c < C; ++c) {
        if (step >= cs[c].batches.size()) continue;
        act.push_back(c);
        ids.push_back(data_.pool.tokens.index_select(0, cs[c].batches[step]));
        offsets.push_back(offsets.back() + ids.back().size(0));
      }
      for (size_t l = 0; l < drv.adapted().size(); ++l) {
        std::vector<torch::Tensor> A, B;
        for (size_t c : act) {
          auto& enc = minilm(*models_[c].text);
          A.push_back(enc.adapted()[l]->lora_A);
          B.push_back(enc.adapted()[l]->lora_B);
        }
        drv.adapted()[l].ptr()->set_cohort(torch::stack(A), torch::stack(B), offsets);
      }
      const auto z = drv.sentence(torch::cat(ids));
      torch::Tensor total;
      for (size_t i = 0; i < act.size(); ++i) {
        auto& m = models_[act[i]];
        const auto zt =
            minilm(*m.text).project(z.narrow(0, offsets[i], offsets[i + 1] - offsets[i]));
        const auto loss =
            supervised_loss(m, clients[act[i]]->kind, data_.pool, cs[act[i]].batches[step], t, zt);
        cs[act[i]].loss_sum += loss.detach();
        ++cs[act[i]].steps;
        total = total.defined() ? total + loss : loss;
      }
      for (size_t c : act)
        cs[c].opt->zero_grad();
      total.backward();
      for (size_t c : act) {
        if (t.grad_clip > 0) torch::nn::utils::clip_grad_norm_(cs[c].params, t.grad_clip);
        cs[c].opt->step();
      }
    }
    for (auto& layer : drv.adapted())
      layer.ptr()->clear_cohort();
    std::vector<Update> out(C);
    for (size_t c = 0; c < C; ++c) {
      auto& u = out[c];
      u.client_id = clients[c]->id;
      u.kind = clients[c]->kind;
      u.num_samples = int64_t(clients[c]->indices.size());
      u.loss = cs[c].steps ? cs[c].loss_sum.item<double>() / double(cs[c].steps) : 0.0;
      u.bytes_down = cs[c].job->down.bytes();
      TowerView view(models_[c], cfg_.eval_batch_size);
      cs[c].job->finish(view, u);
    }
    return out;
  }

 private:
  const Config& cfg_;
  const FederatedData& data_;
  std::vector<GlobalModel> models_;  // one resident model per cohort slot, reused every round
};

LoraLayout lora_layout(Tower& text_tower, LoraRule rule) {
  LoraLayout L;
  std::map<std::string, std::pair<int64_t, int64_t>> pos;
  std::vector<std::pair<int64_t, int64_t>> a, b, head;
  for (const auto& item : text_tower.named_parameters(/*recurse=*/true)) {
    const auto& p = item.value();
    if (!p.requires_grad()) continue;
    const std::string& name = item.key();
    pos[name] = {L.numel, p.numel()};
    L.slots.push_back(
        {{"name", name}, {"offset", L.numel}, {"numel", p.numel()}, {"shape", p.sizes().vec()}});
    const auto ends = [&](const std::string& s) {
      return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
    };
    (ends(".lora_A") ? a : ends(".lora_B") ? b : head).push_back({L.numel, p.numel()});
    L.numel += p.numel();
  }
  auto& enc = minilm(text_tower);
  for (size_t i = 0; i < enc.adapted().size(); ++i) {
    const auto& layer = enc.adapted()[i];
    LoraLayout::Layer l;
    l.name = enc.adapted_names()[i];
    const std::string full = "encoder.base." + l.name;
    if (pos.count(full + ".lora_A")) l.a_offset = pos.at(full + ".lora_A").first;
    if (pos.count(full + ".lora_B")) l.b_offset = pos.at(full + ".lora_B").first;
    l.rank = layer->lora_A.size(0);
    l.in = layer->in_features;
    l.out = layer->out_features;
    l.scale = layer->scale;
    L.layers.push_back(l);
  }
  std::vector<std::pair<int64_t, int64_t>> sent, personal;
  switch (rule) {
    case LoraRule::kNone:
      break;
    case LoraRule::kFfa:  // A is frozen, not in the flat vector
      sent = b;
      break;
    case LoraRule::kFedSa:
      sent = a;
      personal = b;
      break;
    default:  // fedavg, stack, product: A and B in flat order
      sent = a;
      sent.insert(sent.end(), b.begin(), b.end());
      std::sort(sent.begin(), sent.end());
  }
  L.sent = positions(sent);
  // Where each layer's A and B start inside the sent vector (its ranges, concatenated in order).
  int64_t at = 0;
  for (const auto& [offset, n] : sent) {
    for (auto& l : L.layers) {
      if (l.a_offset == offset) l.a_sent = at;
      if (l.b_offset == offset) l.b_sent = at;
    }
    at += n;
  }
  L.personal = positions(personal);
  L.head = positions(head);
  return L;
}

torch::Tensor lora_merged_delta(LoraRule rule, const torch::Tensor& A, const torch::Tensor& B,
                                const torch::Tensor& w, double scale) {
  MMFL_CHECK(A.dim() == 3 && B.dim() == 3 && A.size(0) == B.size(0) && A.size(1) == B.size(2) &&
                 w.dim() == 1 && w.size(0) == A.size(0),
             "lora_merged_delta: A [C, r, in], B [C, out, r], w [C] expected, got ", A.sizes(),
             ", ", B.sizes(), ", ", w.sizes());
  const int64_t C = A.size(0), r = A.size(1), in = A.size(2), out = B.size(1);
  const auto wb = B * w.view({C, 1, 1});
  switch (rule) {
    case LoraRule::kStack:  // [w_1 B_1 | ... | w_C B_C] [A_1; ...; A_C]
      return scale * wb.permute({1, 0, 2}).reshape({out, C * r}).mm(A.reshape({C * r, in}));
    case LoraRule::kProduct: {
      auto d = torch::zeros({out, in}, A.options());
      for (int64_t c = 0; c < C; ++c)
        d += wb[c].mm(A[c]);
      return scale * d;
    }
    case LoraRule::kFedAvg:
    case LoraRule::kFfa:
    case LoraRule::kFedSa:
      return scale * wb.sum(0).mm((A * w.view({C, 1, 1})).sum(0));
    default:
      MMFL_FAIL("lora_merged_delta: rule '", to_string(rule), "' has no adapters");
  }
}

LoraStrategy::LoraStrategy(const Config& cfg, const FederatedData& data, std::string run_dir)
    : cfg_(cfg),
      data_(data),
      run_dir_(std::move(run_dir)),
      executor_(make_executor(cfg, data)),
      states_(int64_t(cfg.state.max_memory_gb * 1e9),
              (std::filesystem::path(run_dir_) / "state").string(), comm::world().rank(),
              comm::world().size()) {
  const auto dev = data.pool.images.device();
  torch::manual_seed(cfg.seed);
  global_.image = make_image_tower(cfg.model.image, data.height, data.width, data.num_classes);
  global_.text = make_text_tower(cfg.model.text, data.tokenizer->size(), cfg.data.max_tokens,
                                 data.num_classes, &cfg);
  global_.image->to(dev);
  global_.text->to(dev);
  layout_ = lora_layout(*global_.text, cfg.lora_fed.rule);
  // Densities given as counts are checked against the adapter now, before the run directory is
  // written, not in the first round.
  if (!merges(cfg.lora_fed.rule) && layout_.sent.numel() > 0) {
    fusion::ops::topk_count(cfg.lora_fed.upload_density, layout_.sent.numel(),
                            "config key 'lora.upload_density'");
    fusion::ops::topk_count(cfg.lora_fed.download_density, layout_.sent.numel(),
                            "config key 'lora.download_density'");
  }
  const auto& mode = cfg.lora_fed.cohort;
  if (cfg.lora_fed.rule != LoraRule::kNone && (mode == "on" || (mode == "auto" && dev.is_cuda())))
    cohort_ = std::make_unique<LoraCohortTrainer>(cfg, data);
  if (layout_.sent.numel() > 0)
    broadcast_ = global_.text->flat().cpu().index_select(0, layout_.sent);
}

LoraStrategy::~LoraStrategy() = default;

void LoraStrategy::merge_into_base(const std::vector<Update>& updates, const std::vector<double>& w,
                                   int64_t round) {
  // The clients' factors, per layer, in update order; `updates` hold text adapters only.
  auto& enc = minilm(*global_.text);
  const auto wt = torch::tensor(std::vector<float>(w.begin(), w.end()));
  std::vector<torch::Tensor> down;
  auto text_flat = global_.text->flat().cpu();
  auto rng = make_rng(cfg_.seed, kStreamLoraRestart, uint64_t(round));
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < layout_.layers.size(); ++i) {
    const auto& l = layout_.layers[i];
    std::vector<torch::Tensor> As, Bs;
    const int64_t ai = l.a_sent, bi = l.b_sent;
    for (const auto& u : updates) {
      const auto& v = u.up.dense.at("text.adapter").cpu();
      As.push_back(v.narrow(0, ai, l.rank * l.in).view({l.rank, l.in}));
      Bs.push_back(v.narrow(0, bi, l.out * l.rank).view({l.out, l.rank}));
    }
    const auto A = torch::stack(As), B = torch::stack(Bs);
    const auto delta = lora_merged_delta(cfg_.lora_fed.rule, A, B, wt, l.scale);
    auto& weight = enc.adapted()[i]->weight;
    weight.add_(delta.to(weight.device()));
    if (cfg_.lora_fed.rule == LoraRule::kStack) {
      down.push_back((B * wt.view({-1, 1, 1})).reshape({-1}));
      down.push_back(A.reshape({-1}));
    } else {
      down.push_back(delta.reshape({-1}));
    }
    // Fresh adapters (B zero: the merged model's function is unchanged), A drawn from the round's
    // seed, which every client can draw too (not sent).
    std::uniform_real_distribution<float> uni(-1.0f / std::sqrt(float(l.in)),
                                              1.0f / std::sqrt(float(l.in)));
    auto a_new = torch::empty({l.rank * l.in});
    auto* ap = a_new.data_ptr<float>();
    for (int64_t j = 0; j < a_new.numel(); ++j)
      ap[j] = uni(rng);
    text_flat.narrow(0, l.a_offset, l.rank * l.in).copy_(a_new);
    text_flat.narrow(0, l.b_offset, l.out * l.rank).zero_();
  }
  global_.text->load_flat(text_flat);
  merge_down_ = torch::cat(down);
}

RoundStats LoraStrategy::run_round(const std::vector<const ClientSpec*>& cohort, int64_t round) {
  const auto& f = cfg_.lora_fed;
  auto text_flat = global_.text->flat().cpu();
  RoundContext ctx;
  ctx.cfg = &cfg_;
  ctx.layout = &layout_;
  ctx.states = &states_;
  ctx.global_text = global_.text.get();
  ctx.image = global_.image->flat();
  ctx.text_down.dense["text.head"] = text_flat.index_select(0, layout_.head);
  torch::Tensor adapter;  // the server's sent entries
  if (layout_.sent.numel() > 0) {
    adapter = text_flat.index_select(0, layout_.sent);
    if (merges(f.rule)) {
      // Fresh A from the round's seed (not sent); the merge of the last round's factors is.
      if (merge_down_.defined()) ctx.text_down.dense["text.merge"] = merge_down_;
      broadcast_ = adapter;
    } else if (f.download_density == 1.0) {
      ctx.text_down.dense["text.adapter"] = adapter;
      broadcast_ = adapter;
    } else {
      const int64_t k = fusion::ops::topk_count(f.download_density, adapter.numel(),
                                                "config key 'lora.download_density'");
      auto packet = top_k(adapter - broadcast_, k).first;
      broadcast_ = broadcast_.index_add(0, packet.indices.to(torch::kInt64), packet.values);
      ctx.text_down.sparse["text.adapter"] = std::move(packet);
    }
  }
  ctx.text_start = text_flat.clone();
  if (broadcast_.defined()) ctx.text_start.index_copy_(0, layout_.sent, broadcast_);

  LoraTask task(ctx);
  std::vector<Update> updates;
  // Each rank trains the clients whose residuals and personal layers it holds.
  auto& world = comm::world();
  const auto mine = comm::local_share(cohort, world, comm::Placement::kOwner);
  if (cohort_) {
    // Text-holding clients in one cohort pass, image-only ones by the executor; cohort order.
    std::vector<const ClientSpec*> text, image;
    for (const auto* c : mine)
      (holds_text(c->kind) ? text : image).push_back(c);
    auto ut = cohort_->train(text, task, *global_.text, round);
    auto ui = executor_->train(image, task, round);
    size_t it = 0, ii = 0;
    for (const auto* c : mine)
      updates.push_back(std::move(holds_text(c->kind) ? ut[it++] : ui[ii++]));
  } else {
    updates = executor_->train(mine, task, round);
  }
  // The personal B of fedsa stays on the rank of its client: this rank's share of the cohort's
  // weighted mean, summed over the ranks below.
  std::vector<int64_t> local_ids;
  for (const auto& u : updates)
    local_ids.push_back(u.client_id);
  updates = comm::gather_updates(world, std::move(updates), global_.text->flat().device());
  const auto rep = FedAvg::aggregate(updates, global_);  // the image tower
  RoundStats s = round_stats(updates);
  for (auto id : rep.skipped)
    if (std::find(s.skipped.begin(), s.skipped.end(), id) == s.skipped.end())
      s.skipped.push_back(id);

  // The text tower: weights by samples over the clients that trained it.
  std::vector<const Update*> txt;
  double total = 0;
  for (const auto& u : updates)
    if (!u.diverged && u.up.dense.count("text.head")) {
      txt.push_back(&u);
      total += double(u.num_samples);
    }
  std::vector<double> w;
  for (const auto* u : txt)
    w.push_back(double(u->num_samples) / total);
  torch::Tensor mean_delta;
  if (!txt.empty()) {
    std::vector<torch::Tensor> heads;
    for (const auto* u : txt)
      heads.push_back(u->up.dense.at("text.head"));
    text_flat.index_copy_(0, layout_.head, weighted_mean(heads, w));
    if (layout_.sent.numel() > 0 && !merges(f.rule)) {
      if (f.upload_density == 1.0) {
        std::vector<torch::Tensor> deltas;
        for (const auto* u : txt)
          deltas.push_back(u->up.dense.at("text.adapter"));
        mean_delta = weighted_mean(deltas, w);
      } else {
        std::vector<const SparsePacket*> packets;
        for (const auto* u : txt)
          packets.push_back(&u->up.sparse.at("text.adapter"));
        mean_delta = sparse_mean(packets, w, adapter.numel());
      }
      adapter = adapter + mean_delta;
      text_flat.index_copy_(0, layout_.sent, adapter);
    }
    if (layout_.personal.numel() > 0) {  // fedsa: evaluated with the cohort's mean B
      std::vector<torch::Tensor> bs;
      std::vector<double> wb;
      for (size_t i = 0; i < txt.size(); ++i)
        if (std::find(local_ids.begin(), local_ids.end(), txt[i]->client_id) != local_ids.end()) {
          bs.push_back(states_.find(txt[i]->client_id)->at("B"));
          wb.push_back(w[i]);
        }
      auto mean_b = bs.empty() ? torch::zeros({layout_.personal.numel()}) : weighted_mean(bs, wb);
      world.all_reduce_sum(mean_b);
      text_flat.index_copy_(0, layout_.personal, mean_b);
    }
    global_.text->load_flat(text_flat);
    if (merges(f.rule)) {
      std::vector<Update> chosen;
      for (const auto* u : txt)
        chosen.push_back(*u);
      merge_into_base(chosen, w, round);
    }
  }
  s.extra["image_clients"] = rep.image_clients;
  s.extra["text_clients"] = int64_t(txt.size());
  // The adapters' share of the traffic (the rest: image tower, projection and head).
  int64_t adapter_up = 0;
  for (const auto& u : updates) {
    if (auto it = u.up.dense.find("text.adapter"); it != u.up.dense.end())
      adapter_up += tensor_bytes(it->second);
    if (auto it = u.up.sparse.find("text.adapter"); it != u.up.sparse.end())
      adapter_up += tensor_bytes(it->second.indices) + tensor_bytes(it->second.values);
  }
  Payload adapter_down;
  for (const auto& [name, t] : ctx.text_down.dense)
    if (name != "text.head") adapter_down.dense[name] = t;
  adapter_down.sparse = ctx.text_down.sparse;
  s.extra["adapter_bytes_up"] = adapter_up;
  // Every text-holding client downloads them, a diverged one too.
  int64_t text_holders = 0;
  for (const auto& u : updates)
    text_holders += holds_text(u.kind) ? 1 : 0;
  s.extra["adapter_bytes_down"] = adapter_down.bytes() * text_holders;
  // Rank 0 writes the run directory (its clients' residuals and personal B only).
  if (round == f.dump_round && world.rank() == 0) dump(round, updates, mean_delta, adapter);
  return s;
}

void LoraStrategy::dump(int64_t round, const std::vector<Update>& updates,
                        const torch::Tensor& mean_delta, const torch::Tensor& adapter) const {
  const auto dir = std::filesystem::path(run_dir_) / ("lora_round_" + std::to_string(round));
  std::filesystem::create_directories(dir);
  auto put = [&](const std::string& name, const torch::Tensor& t) {
    if (t.defined() && t.numel() > 0) write_npy((dir / name).string(), t.cpu().contiguous());
  };
  for (const auto& u : updates) {
    const std::string c = "client_" + std::to_string(u.client_id);
    if (auto it = u.up.sparse.find("text.adapter"); it != u.up.sparse.end()) {
      put(c + "_indices.npy", it->second.indices.to(torch::kInt64));
      put(c + "_values.npy", it->second.values);
    }
    if (auto it = u.up.dense.find("text.adapter"); it != u.up.dense.end())
      put(c + (merges(cfg_.lora_fed.rule) ? "_factors.npy" : "_delta.npy"), it->second);
    if (auto kept = const_cast<ClientStateStore&>(states_).find(u.client_id)) {
      if (kept->count("residual")) put(c + "_residual.npy", kept->at("residual"));
      if (kept->count("B")) put(c + "_personal_B.npy", kept->at("B"));
    }
  }
  put("mean_delta.npy", mean_delta);
  put("adapter.npy", adapter);
  put("merge.npy", merge_down_);
  nlohmann::json j;
  j["rule"] = to_string(cfg_.lora_fed.rule);
  j["slots"] = layout_.slots;
  j["sent_positions"] = layout_.sent.numel();
  auto layers = nlohmann::json::array();
  for (const auto& l : layout_.layers)
    layers.push_back({{"name", l.name},
                      {"a_offset", l.a_offset},
                      {"b_offset", l.b_offset},
                      {"a_sent", l.a_sent},
                      {"b_sent", l.b_sent},
                      {"rank", l.rank},
                      {"in", l.in},
                      {"out", l.out},
                      {"scale", l.scale}});
  j["layers"] = layers;
  std::ofstream((dir / "layout.json").string()) << j.dump(2) << "\n";
  write_npy((dir / "sent_positions.npy").string(), layout_.sent);
}

EvalResult LoraStrategy::evaluate() {
  return engine::evaluate(global_, data_, cfg_.eval_batch_size);
}

void LoraStrategy::save(Checkpoint& ck) const {
  ck.tensors["image"] = global_.image->flat().cpu();
  ck.tensors["text"] = global_.text->flat().cpu();
  if (broadcast_.defined()) ck.tensors["lora/broadcast"] = broadcast_.cpu();
  if (merge_down_.defined()) ck.tensors["lora/merge_down"] = merge_down_.cpu();
  if (merges(cfg_.lora_fed.rule)) {
    auto& enc = minilm(*global_.text);
    for (size_t i = 0; i < enc.adapted().size(); ++i)
      ck.tensors["lora/base/" + std::to_string(i)] = enc.adapted()[i]->weight.detach().cpu();
  }
  states_.save(ck);
}

void LoraStrategy::load(const Checkpoint& ck) {
  MMFL_CHECK(ck.tensors.count("image") && ck.tensors.count("text"),
             "checkpoint lacks the 'image' or 'text' tower of a LoRA run");
  global_.image->load_flat(ck.tensors.at("image"));
  global_.text->load_flat(ck.tensors.at("text"));
  if (ck.tensors.count("lora/broadcast")) broadcast_ = ck.tensors.at("lora/broadcast").clone();
  merge_down_ = ck.tensors.count("lora/merge_down") ? ck.tensors.at("lora/merge_down").clone()
                                                    : torch::Tensor();
  if (merges(cfg_.lora_fed.rule)) {
    auto& enc = minilm(*global_.text);
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < enc.adapted().size(); ++i) {
      const std::string key = "lora/base/" + std::to_string(i);
      MMFL_CHECK(ck.tensors.count(key), "checkpoint lacks '", key,
                 "', the merged base weight of adapted layer ", enc.adapted_names()[i]);
      auto& wgt = enc.adapted()[i]->weight;
      const auto& t = ck.tensors.at(key);
      MMFL_CHECK(t.numel() == wgt.numel(), "checkpoint tensor '", key, "' has ", t.numel(),
                 " elements, expected ", wgt.numel(), " (", wgt.sizes(), ")");
      wgt.copy_(t.reshape(wgt.sizes()));
    }
  }
  states_.load(ck);
}

nlohmann::json LoraStrategy::describe() const {
  auto& enc = minilm(*global_.text);
  int64_t base = 0;
  for (const auto& p : enc.base()->parameters())
    if (!p.requires_grad()) base += p.numel();
  return {{"image_tower_params", global_.image->num_params()},
          {"text_trainable_params", global_.text->num_params()},
          {"text_frozen_params", base},
          {"adapter_params_sent", layout_.sent.numel()},
          {"adapted_layers", enc.adapted_names()},
          {"rule", to_string(cfg_.lora_fed.rule)},
          {"executor", executor_->name()},
          {"cohort_pass", bool(cohort_)}};
}

}  // namespace mmfl::engine
