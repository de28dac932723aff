#include "engine/creamfl.h"

#include <torch/nn/functional/loss.h>
#include <torch/nn/functional/normalization.h>

#include <cmath>
#include <filesystem>

#include "engine/comm/distribute.h"
#include "engine/npy.h"
#include "fusion/creamfl.h"
#include "mmfl/error.h"

namespace mmfl::engine {

namespace {

namespace F = torch::nn::functional;
constexpr uint64_t kStreamClientInit = 6;
constexpr uint64_t kStreamServerOrder = 8;

torch::Tensor normalized(const torch::Tensor& x) {
  return F::normalize(x, F::NormalizeFuncOptions().dim(1));
}

std::vector<int64_t> iota_vec(int64_t n) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    v[size_t(i)] = i;
  return v;
}

GlobalModel make_towers(const modalities::ImageEncoderConfig& img,
                        const modalities::TextEncoderConfig& txt, const FederatedData& data,
                        int64_t max_tokens) {
  GlobalModel m;
  m.image = make_image_tower(img, data.height, data.width, data.num_classes);
  m.text = make_text_tower(txt, data.tokenizer->size(), max_tokens, data.num_classes);
  const auto dev = data.pool.images.device();
  m.image->to(dev);
  m.text->to(dev);
  return m;
}

std::vector<torch::Tensor> params_of(GlobalModel& m, ClientKind kind) {
  std::vector<torch::Tensor> p;
  if (holds_image(kind))
    for (auto& t : m.image->parameters())
      p.push_back(t);
  if (holds_text(kind))
    for (auto& t : m.text->parameters())
      p.push_back(t);
  return p;
}

}  // namespace

CreamFlStrategy::CreamFlStrategy(const Config& cfg, const FederatedData& data, std::string run_dir)
    : cfg_(cfg),
      data_(data),
      states_(int64_t(cfg.state.max_memory_gb * 1e9),
              (std::filesystem::path(run_dir) / "state").string(), comm::world().rank(),
              comm::world().size()),
      run_dir_(std::move(run_dir)) {
  torch::manual_seed(cfg.seed);
  server_ = make_towers(cfg.model.server_image, cfg.model.server_text, data, cfg.data.max_tokens);
  for (int k = 0; k < 3; ++k) {
    const auto kind = static_cast<ClientKind>(k);
    const auto m =
        make_towers(cfg.model.kind_image[k], cfg.model.kind_text[k], data, cfg.data.max_tokens);
    client_params_[size_t(k)] = (holds_image(kind) ? m.image->num_params() : 0) +
                                (holds_text(kind) ? m.text->num_params() : 0);
  }
  executor_ = make_executor(cfg, data);
}

torch::Tensor CreamFlStrategy::features(Tower& tower, bool image) {
  tower.eval();
  const auto& x = image ? data_.public_set.images : data_.public_set.tokens;
  return normalized(batched_features(tower, x, cfg_.eval_batch_size));
}

CreamFlStrategy::ClientModel CreamFlStrategy::state_of(const ClientSpec& spec) {
  if (auto kept = states_.find(spec.id)) {
    ClientModel m;
    if (kept->count("image")) m.image = kept->at("image");
    if (kept->count("text")) m.text = kept->at("text");
    return m;
  }
  // A client's first round: its own initialization, a function of (seed, client id) only.
  const int k = static_cast<int>(spec.kind);
  auto rng = make_rng(cfg_.seed, kStreamClientInit, uint64_t(spec.id));
  ClientModel st;
  std::lock_guard<std::mutex> lock(torch_init_mutex());
  torch::manual_seed(rng());
  if (holds_image(spec.kind))
    st.image =
        make_image_tower(cfg_.model.kind_image[k], data_.height, data_.width, data_.num_classes)
            ->flat();
  if (holds_text(spec.kind))
    st.text = make_text_tower(cfg_.model.kind_text[k], data_.tokenizer->size(),
                              cfg_.data.max_tokens, data_.num_classes)
                  ->flat();
  return st;
}

void CreamFlStrategy::keep_state(int64_t id, const ClientModel& st) {
  ClientState s;
  if (st.image.defined()) s["image"] = st.image;
  if (st.text.defined()) s["text"] = st.text;
  states_.put(id, s);
}

// CreamFL's local task: each client starts from its own persistent model, takes a pass over the
// public set with the inter- and intra-modal regularizers after each private epoch, and sends
// its features of every public sample.
class CreamFlStrategy::Task : public LocalTask {
 public:
  Task(CreamFlStrategy& s, torch::Tensor g_img, torch::Tensor g_txt)
      : s_(s), g_img_(std::move(g_img)), g_txt_(std::move(g_txt)) {}

  ClientArch arch(ClientKind kind) const override {
    const int k = static_cast<int>(kind);
    return {s_.cfg_.model.kind_image[k], s_.cfg_.model.kind_text[k]};
  }

  std::optional<ExtraPass> extra_pass() const override {
    if (s_.cfg_.creamfl.interintra_weight <= 0) return std::nullopt;
    return ExtraPass{&s_.data_.public_set, s_.cfg_.creamfl.public_batch_size};
  }

  std::unique_ptr<ClientJob> job(const ClientSpec& spec) override {
    auto j = std::make_unique<Job>(*this, spec.id);
    const auto st = s_.state_of(spec);
    j->image = st.image;
    j->text = st.text;
    // Both regularizers of every client need both global feature sets.
    if (extra_pass()) {
      j->down.reps["image"] = g_img_;
      j->down.reps["text"] = g_txt_;
    }
    return j;
  }

 private:
  struct Job : ClientJob {
    Job(Task& t, int64_t id) : task(t), id(id) {}

    void begin(ClientView& model) override {
      // z_old: the client's own public features from the start of the round (frozen copy).
      if (!task.extra_pass()) return;
      const auto& p = task.s_.data_.public_set;
      if (image.defined()) old_img = normalized(model.features(Modality::kImage, p.images));
      if (text.defined()) old_txt = normalized(model.features(Modality::kText, p.tokens));
    }

    torch::Tensor extra_loss(const torch::Tensor& z_img, const torch::Tensor& z_txt,
                             const torch::Tensor& rows) override {
      const auto& c = task.s_.cfg_.creamfl;
      torch::Tensor loss;
      auto add = [&](const torch::Tensor& t) { loss = loss.defined() ? loss + t : t; };
      if (z_img.defined()) {
        const auto z = normalized(z_img);
        add(fusion::inter_modal_loss(z, task.g_txt_, rows, c.reg_temperature) +
            fusion::intra_modal_loss(z, task.g_img_.index_select(0, rows),
                                     old_img.index_select(0, rows), c.reg_temperature));
      }
      if (z_txt.defined()) {
        const auto z = normalized(z_txt);
        add(fusion::inter_modal_loss(z, task.g_img_, rows, c.reg_temperature) +
            fusion::intra_modal_loss(z, task.g_txt_.index_select(0, rows),
                                     old_txt.index_select(0, rows), c.reg_temperature));
      }
      return c.interintra_weight * loss;
    }

    void finish(ClientView& model, Update& u) override {
      const auto& p = task.s_.data_.public_set;
      const torch::Tensor new_img = image.defined()
                                        ? normalized(model.features(Modality::kImage, p.images))
                                        : torch::Tensor();
      const torch::Tensor new_txt =
          text.defined() ? normalized(model.features(Modality::kText, p.tokens)) : torch::Tensor();
      // A client whose training diverged sends nothing and keeps its state from before the
      // round, so one bad client can neither poison the ensemble nor stay broken.
      if ((new_img.defined() && !torch::isfinite(new_img).all().item<bool>()) ||
          (new_txt.defined() && !torch::isfinite(new_txt).all().item<bool>())) {
        u.diverged = true;
        return;
      }
      ClientModel st;
      if (new_img.defined()) {
        st.image = model.flat(Modality::kImage).cpu();
        u.up.reps["image"] = new_img;
      }
      if (new_txt.defined()) {
        st.text = model.flat(Modality::kText).cpu();
        u.up.reps["text"] = new_txt;
      }
      task.s_.keep_state(id, st);
    }

    Task& task;
    int64_t id;
    torch::Tensor old_img, old_txt;
  };

  CreamFlStrategy& s_;
  torch::Tensor g_img_, g_txt_;
};

double CreamFlStrategy::server_train(int64_t round) {
  if (cfg_.creamfl.server_epochs == 0) return 0.0;
  server_.image->train();
  server_.text->train();
  auto opt =
      make_optimizer(cfg_.train, cfg_.creamfl.server_lr, params_of(server_, ClientKind::kPaired));
  auto rng = make_rng(cfg_.seed, kStreamServerOrder, uint64_t(round));
  const auto rows_all = iota_vec(data_.public_set.size());
  const auto dev = data_.pool.images.device();
  auto sum = torch::zeros({}, data_.pool.images.options());
  int64_t steps = 0;
  for (int64_t e = 0; e < cfg_.creamfl.server_epochs; ++e) {
    for (const auto& rows : shuffled_batches(rows_all, cfg_.creamfl.public_batch_size, rng, dev)) {
      const auto loss =
          supervised_loss(server_, ClientKind::kPaired, data_.public_set, rows, cfg_.train);
      optimizer_step(*opt, loss, cfg_.train);
      sum += loss.detach();
      ++steps;
    }
  }
  return steps ? sum.item<double>() / double(steps) : 0.0;
}

double CreamFlStrategy::distill(const torch::Tensor& target_img, const torch::Tensor& target_txt) {
  if (!target_img.defined() && !target_txt.defined()) return 0.0;
  const auto& c = cfg_.creamfl;
  server_.image->train();
  server_.text->train();
  auto opt = make_optimizer(cfg_.train, c.server_lr, params_of(server_, ClientKind::kPaired));
  const auto dev = data_.pool.images.device();
  auto sum = torch::zeros({}, data_.pool.images.options());
  int64_t steps = 0;
  const int64_t n = data_.public_set.size();
  for (int64_t i = 0; i < n; i += c.public_batch_size) {
    const auto rows = torch::arange(i, std::min(n, i + c.public_batch_size),
                                    torch::TensorOptions().dtype(torch::kInt64).device(dev));
    auto loss = torch::zeros({}, data_.pool.images.options());
    // Each term only for a modality that some sampled client held this round.
    if (target_img.defined()) {
      const auto out =
          normalized(server_.image->features(data_.public_set.images.index_select(0, rows)));
      loss = loss + c.kd_weight * F::mse_loss(out, target_img.index_select(0, rows));
    }
    if (target_txt.defined()) {
      const auto out =
          normalized(server_.text->features(data_.public_set.tokens.index_select(0, rows)));
      loss = loss + c.kd_weight * F::mse_loss(out, target_txt.index_select(0, rows));
    }
    optimizer_step(*opt, loss, cfg_.train);
    sum += loss.detach();
    ++steps;
  }
  return sum.item<double>() / double(steps);
}

RoundStats CreamFlStrategy::run_round(const std::vector<const ClientSpec*>& cohort, int64_t round) {
  RoundStats s;
  const bool public_only = cfg_.strategy == StrategyKind::kPublicOnly;
  torch::Tensor a_img, a_txt, w_img, w_txt, g_img, g_txt;
  std::vector<Update> reps;
  if (!public_only) {
    g_img = next_g_img_.defined() ? next_g_img_ : features(*server_.image, true);
    g_txt = next_g_txt_.defined() ? next_g_txt_ : features(*server_.text, false);
    Task task(*this, g_img, g_txt);
    // Each rank trains the clients whose models it holds; every rank then has every client's
    // representations (one all-gather) and runs the same server step.
    auto& world = comm::world();
    reps = comm::gather_updates(
        world,
        executor_->train(comm::local_share(cohort, world, comm::Placement::kOwner), task, round),
        data_.pool.images.device());
    s = round_stats(reps);
    std::vector<torch::Tensor> li, lt;
    for (const auto& r : reps) {
      if (r.up.reps.count("image")) li.push_back(r.up.reps.at("image"));
      if (r.up.reps.count("text")) lt.push_back(r.up.reps.at("text"));
    }
    const auto& c = cfg_.creamfl;
    const auto weighting = c.ensemble == EnsembleMethod::kContrastive
                               ? kernels::EnsembleWeighting::kContrastive
                               : kernels::EnsembleWeighting::kMean;
    // Image side: clients' image features scored against the global TEXT features; and v.v.
    if (!li.empty()) {
      auto e =
          fusion::ops::creamfl_ensemble(torch::stack(li), g_txt, c.ensemble_temperature, weighting);
      a_img = c.renormalize ? normalized(e.out) : e.out;
      w_img = e.weights;
      s.extra["ensemble_img_max_weight"] = w_img.amax(0).mean().item<double>();
    }
    if (!lt.empty()) {
      auto e =
          fusion::ops::creamfl_ensemble(torch::stack(lt), g_img, c.ensemble_temperature, weighting);
      a_txt = c.renormalize ? normalized(e.out) : e.out;
      w_txt = e.weights;
      s.extra["ensemble_txt_max_weight"] = w_txt.amax(0).mean().item<double>();
    }
    s.extra["image_clients"] = int64_t(li.size());
    s.extra["text_clients"] = int64_t(lt.size());
  }
  const double server_loss = server_train(round);
  s.extra["server_loss"] = server_loss;
  MMFL_CHECK(std::isfinite(server_loss), "round ", round,
             ": the server's training loss is not "
             "finite (training diverged); lower creamfl.server_lr or set train.grad_clip");
  // A finite loss can still be a diverged one: with train.grad_clip set, creamfl.server_lr at its
  // maximum keeps the loss finite at 1e7-1e9 while the server ends below chance accuracy (the run
  // finished with exit 0). A model that predicts nothing scores about ln(classes) per tower plus
  // the contrastive term's ln(batch); 100 times that is far beyond any model that learns.
  const double chance =
      2.0 * std::log(double(data_.num_classes)) +
      cfg_.train.contrastive_weight * std::log(double(cfg_.creamfl.public_batch_size));
  MMFL_CHECK(server_loss <= 100.0 * chance, "round ", round, ": the server's training loss ",
             server_loss, " is over 100 times the chance level (", chance,
             "): training diverged; lower creamfl.server_lr (now ", cfg_.creamfl.server_lr,
             ") or train.grad_clip (now ", cfg_.train.grad_clip, ")");
  if (!public_only) {
    const double distill_loss = distill(a_img, a_txt);
    s.extra["distill_loss"] = distill_loss;
    MMFL_CHECK(std::isfinite(distill_loss), "round ", round,
               ": the distillation loss is not "
               "finite (training diverged); lower creamfl.server_lr or set train.grad_clip");
    if (round == cfg_.creamfl.dump_round && comm::world().rank() == 0)
      dump(round, reps, g_img, g_txt, w_img, w_txt, a_img, a_txt);
  }
  refresh_server_features(s);
  return s;
}

void CreamFlStrategy::refresh_server_features(RoundStats& s) {
  next_g_img_ = features(*server_.image, true);
  next_g_txt_ = features(*server_.text, false);
  // Reported: the spread of the unit-norm features over the public set, the mean over dimensions
  // of the standard deviation across samples (about 1 / sqrt(D) for features spread over the
  // sphere, 0 when every sample maps to one point).
  for (const auto& [name, f] :
       {std::pair<const char*, torch::Tensor>{"image", next_g_img_}, {"text", next_g_txt_}}) {
    s.extra[std::string("server_") + name + "_spread"] =
        f.size(0) > 1 ? f.std(0).mean().item<double>() : 0.0;
  }
}

void CreamFlStrategy::dump(int64_t round, const std::vector<Update>& reps,
                           const torch::Tensor& g_img, const torch::Tensor& g_txt,
                           const torch::Tensor& w_img, const torch::Tensor& w_txt,
                           const torch::Tensor& a_img, const torch::Tensor& a_txt) const {
  const auto dir = std::filesystem::path(run_dir_) / ("dump_round_" + std::to_string(round));
  std::filesystem::create_directories(dir);
  auto put = [&](const std::string& name, const torch::Tensor& t) {
    if (t.defined()) write_npy((dir / name).string(), t);
  };
  std::vector<int64_t> img_ids, txt_ids;
  std::vector<torch::Tensor> li, lt;
  for (const auto& r : reps) {
    const auto i = r.up.reps.find("image"), t = r.up.reps.find("text");
    if (i != r.up.reps.end()) img_ids.push_back(r.client_id), li.push_back(i->second);
    if (t != r.up.reps.end()) txt_ids.push_back(r.client_id), lt.push_back(t->second);
  }
  put("global_image.npy", g_img);
  put("global_text.npy", g_txt);
  if (!li.empty()) {
    put("image_client_ids.npy", torch::tensor(img_ids, torch::kInt64));
    put("image_local.npy", torch::stack(li));
  }
  if (!lt.empty()) {
    put("text_client_ids.npy", torch::tensor(txt_ids, torch::kInt64));
    put("text_local.npy", torch::stack(lt));
  }
  put("image_weights.npy", w_img);
  put("text_weights.npy", w_txt);
  put("image_ensemble.npy", a_img);
  put("text_ensemble.npy", a_txt);
}

EvalResult CreamFlStrategy::evaluate() {
  return engine::evaluate(server_, data_, cfg_.eval_batch_size);
}

void CreamFlStrategy::save(Checkpoint& ck) const {
  ck.tensors["image"] = server_.image->flat().cpu();
  ck.tensors["text"] = server_.text->flat().cpu();
  states_.save(ck);
}

void CreamFlStrategy::load(const Checkpoint& ck) {
  MMFL_CHECK(ck.tensors.count("image") && ck.tensors.count("text"),
             "checkpoint lacks the server's 'image' or 'text' tower");
  server_.image->load_flat(ck.tensors.at("image"));
  server_.text->load_flat(ck.tensors.at("text"));
  next_g_img_ = next_g_txt_ = torch::Tensor();
  states_.load(ck);
}

nlohmann::json CreamFlStrategy::describe() const {
  nlohmann::json j = {{"server_image_params", server_.image->num_params()},
                      {"server_text_params", server_.text->num_params()}};
  const char* kinds[3] = {"image", "text", "paired"};
  for (int k = 0; k < 3; ++k)
    j[std::string("client_") + kinds[k] + "_params"] = client_params_[size_t(k)];
  j["executor"] = executor_->name();
  return j;
}

}  // namespace mmfl::engine
