#include "engine/creamfl.h"

#include <torch/nn/functional/loss.h>
#include <torch/nn/functional/normalization.h>

#include <cmath>
#include <filesystem>

#include "engine/npy.h"
#include "fusion/creamfl.h"
#include "mmfl/error.h"

namespace mmfl::engine {

namespace {

namespace F = torch::nn::functional;
constexpr uint64_t kStreamClientInit = 6;
constexpr uint64_t kStreamCreamOrder = 7;
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
    : cfg_(cfg), data_(data), run_dir_(std::move(run_dir)) {
  torch::manual_seed(cfg.seed);
  server_ = make_towers(cfg.model.server_image, cfg.model.server_text, data, cfg.data.max_tokens);
  for (int k = 0; k < 3; ++k)
    work_[size_t(k)] =
        make_towers(cfg.model.kind_image[k], cfg.model.kind_text[k], data, cfg.data.max_tokens);
}

torch::Tensor CreamFlStrategy::features(Tower& tower, bool image) {
  tower.eval();
  const auto& x = image ? data_.public_set.images : data_.public_set.tokens;
  return normalized(batched_features(tower, x, cfg_.eval_batch_size));
}

CreamFlStrategy::ClientState& CreamFlStrategy::state_of(const ClientSpec& spec) {
  auto it = states_.find(spec.id);
  if (it != states_.end()) return it->second;
  // A client's first round: its own initialization, a function of (seed, client id) only.
  const int k = static_cast<int>(spec.kind);
  auto rng = make_rng(cfg_.seed, kStreamClientInit, uint64_t(spec.id));
  torch::manual_seed(rng());
  ClientState st;
  if (holds_image(spec.kind))
    st.image =
        make_image_tower(cfg_.model.kind_image[k], data_.height, data_.width, data_.num_classes)
            ->flat();
  if (holds_text(spec.kind))
    st.text = make_text_tower(cfg_.model.kind_text[k], data_.tokenizer->size(),
                              cfg_.data.max_tokens, data_.num_classes)
                  ->flat();
  return states_.emplace(spec.id, std::move(st)).first->second;
}

CreamFlStrategy::ClientReps CreamFlStrategy::train_client(const ClientSpec& spec, int64_t round,
                                                          const torch::Tensor& g_img,
                                                          const torch::Tensor& g_txt) {
  const bool img = holds_image(spec.kind), txt = holds_text(spec.kind);
  GlobalModel& m = work_[size_t(static_cast<int>(spec.kind))];
  ClientState& st = state_of(spec);
  if (img) m.image->load_flat(st.image);
  if (txt) m.text->load_flat(st.text);
  // z_old: the client's own public features from the start of the round (frozen copy).
  const torch::Tensor old_img = img ? features(*m.image, true) : torch::Tensor();
  const torch::Tensor old_txt = txt ? features(*m.text, false) : torch::Tensor();

  const auto& t = cfg_.train;
  const auto& c = cfg_.creamfl;
  const auto dev = data_.pool.images.device();
  auto opt = make_optimizer(t, t.lr, params_of(m, spec.kind));
  auto rng = make_rng(cfg_.seed, kStreamCreamOrder, uint64_t(round), uint64_t(spec.id));
  const auto public_rows = iota_vec(data_.public_set.size());
  auto loss_sum = torch::zeros({}, data_.pool.images.options());
  int64_t steps = 0;
  auto step = [&](const torch::Tensor& loss) {
    optimizer_step(*opt, loss, t);
    loss_sum += loss.detach();
    ++steps;
  };
  for (int64_t epoch = 0; epoch < t.epochs; ++epoch) {
    m.image->train();
    m.text->train();
    for (const auto& rows : shuffled_batches(spec.indices, t.batch_size, rng, dev))
      step(supervised_loss(m, spec.kind, data_.pool, rows, t));
    if (c.interintra_weight <= 0) continue;
    // CreamFL local regularization over the public set (paired clients: both modalities).
    for (const auto& rows : shuffled_batches(public_rows, c.public_batch_size, rng, dev)) {
      auto loss = torch::zeros({}, data_.pool.images.options());
      if (img) {
        const auto z = normalized(m.image->features(data_.public_set.images.index_select(0, rows)));
        loss = loss + fusion::inter_modal_loss(z, g_txt, rows, c.reg_temperature) +
               fusion::intra_modal_loss(z, g_img.index_select(0, rows),
                                        old_img.index_select(0, rows), c.reg_temperature);
      }
      if (txt) {
        const auto z = normalized(m.text->features(data_.public_set.tokens.index_select(0, rows)));
        loss = loss + fusion::inter_modal_loss(z, g_img, rows, c.reg_temperature) +
               fusion::intra_modal_loss(z, g_txt.index_select(0, rows),
                                        old_txt.index_select(0, rows), c.reg_temperature);
      }
      step(c.interintra_weight * loss);
    }
  }
  ClientReps r;
  r.id = spec.id;
  r.loss = steps ? loss_sum.item<double>() / double(steps) : 0.0;
  const torch::Tensor new_img = img ? features(*m.image, true) : torch::Tensor();
  const torch::Tensor new_txt = txt ? features(*m.text, false) : torch::Tensor();
  // A client whose training diverged sends nothing and keeps its state from before the round,
  // so one bad client can neither poison the ensemble nor stay broken.
  if ((img && !torch::isfinite(new_img).all().item<bool>()) ||
      (txt && !torch::isfinite(new_txt).all().item<bool>())) {
    r.diverged = true;
    return r;
  }
  if (img) {
    st.image = m.image->flat().cpu();
    r.image = new_img;
  }
  if (txt) {
    st.text = m.text->flat().cpu();
    r.text = new_txt;
  }
  return r;
}

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
  std::vector<ClientReps> reps;
  if (!public_only) {
    g_img = features(*server_.image, true);
    g_txt = features(*server_.text, false);
    const int64_t rep_bytes = g_img.numel() * 4;
    int64_t trained = 0;
    for (const ClientSpec* spec : cohort) {
      reps.push_back(train_client(*spec, round, g_img, g_txt));
      const auto& r = reps.back();
      if (r.diverged) {
        s.skipped.push_back(r.id);
        continue;
      }
      s.train_loss += r.loss;
      ++trained;
      s.bytes_down += 2 * rep_bytes;  // G_img and G_txt: both regularizers need both
      s.bytes_up += (r.image.defined() ? rep_bytes : 0) + (r.text.defined() ? rep_bytes : 0);
    }
    s.clients = int64_t(cohort.size());
    if (trained > 0) s.train_loss /= double(trained);
    std::vector<torch::Tensor> li, lt;
    for (const auto& r : reps) {
      if (r.image.defined()) li.push_back(r.image);
      if (r.text.defined()) lt.push_back(r.text);
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
  if (!public_only) {
    const double distill_loss = distill(a_img, a_txt);
    s.extra["distill_loss"] = distill_loss;
    MMFL_CHECK(std::isfinite(distill_loss), "round ", round,
               ": the distillation loss is not "
               "finite (training diverged); lower creamfl.server_lr or set train.grad_clip");
    if (round == cfg_.creamfl.dump_round)
      dump(round, reps, g_img, g_txt, w_img, w_txt, a_img, a_txt);
  }
  return s;
}

void CreamFlStrategy::dump(int64_t round, const std::vector<ClientReps>& reps,
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
    if (r.image.defined()) img_ids.push_back(r.id), li.push_back(r.image);
    if (r.text.defined()) txt_ids.push_back(r.id), lt.push_back(r.text);
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
  for (const auto& [id, st] : states_) {
    if (st.image.defined()) ck.tensors["client/" + std::to_string(id) + "/image"] = st.image;
    if (st.text.defined()) ck.tensors["client/" + std::to_string(id) + "/text"] = st.text;
  }
}

void CreamFlStrategy::load(const Checkpoint& ck) {
  MMFL_CHECK(ck.tensors.count("image") && ck.tensors.count("text"),
             "checkpoint lacks the server's 'image' or 'text' tower");
  server_.image->load_flat(ck.tensors.at("image"));
  server_.text->load_flat(ck.tensors.at("text"));
  states_.clear();
  for (const auto& [name, t] : ck.tensors) {
    if (name.rfind("client/", 0) != 0) continue;
    const auto slash = name.find('/', 7);
    MMFL_CHECK(slash != std::string::npos, "checkpoint tensor '", name,
               "' is not client/<id>/<tower>");
    const int64_t id = std::stoll(name.substr(7, slash - 7));
    const std::string tower = name.substr(slash + 1);
    MMFL_CHECK(tower == "image" || tower == "text", "checkpoint tensor '", name,
               "': unknown tower");
    (tower == "image" ? states_[id].image : states_[id].text) = t;
  }
}

nlohmann::json CreamFlStrategy::describe() const {
  nlohmann::json j = {{"server_image_params", server_.image->num_params()},
                      {"server_text_params", server_.text->num_params()}};
  const char* kinds[3] = {"image", "text", "paired"};
  for (int k = 0; k < 3; ++k) {
    const ClientKind kind = static_cast<ClientKind>(k);
    j[std::string("client_") + kinds[k] + "_params"] =
        (holds_image(kind) ? work_[size_t(k)].image->num_params() : 0) +
        (holds_text(kind) ? work_[size_t(k)].text->num_params() : 0);
  }
  return j;
}

}  // namespace mmfl::engine
