#include "engine/moma.h"

#include <torch/nn/functional/loss.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include "engine/comm/communicator.h"
#include "engine/comm/distribute.h"
#include "engine/npy.h"
#include "fusion/contrastive.h"
#include "mmfl/error.h"

namespace mmfl::engine {

namespace F = torch::nn::functional;

torch::Tensor MomaNet::get(const std::string& group) const {
  torch::NoGradGuard no_grad;
  const auto& g = groups.at(index.at(group));
  std::vector<torch::Tensor> parts;
  for (const auto& s : g.slices)
    parts.push_back(s.view().detach().reshape({-1}));
  return torch::cat(parts).to(torch::kFloat32).clone();
}

void MomaNet::set(const std::string& group, const torch::Tensor& flat) {
  torch::NoGradGuard no_grad;
  const auto it = index.find(group);
  MMFL_CHECK(it != index.end(), "MoMa model has no parameter group '", group, "'");
  const auto& g = groups[it->second];
  MMFL_CHECK(flat.dim() == 1 && flat.size(0) == g.numel(), "MoMa group '", group, "' expects ",
             g.numel(), " values, got a tensor of shape ", flat.sizes());
  int64_t at = 0;
  for (const auto& s : g.slices) {
    auto v = s.view();
    v.copy_(flat.narrow(0, at, v.numel()).view_as(v));
    at += v.numel();
  }
}

std::map<std::string, torch::Tensor> MomaNet::get_all() const {
  std::map<std::string, torch::Tensor> out;
  for (const auto& g : groups)
    out[g.name] = get(g.name);
  return out;
}

std::vector<torch::Tensor> MomaNet::parameters() const {
  std::vector<torch::Tensor> out;
  std::set<const void*> seen;
  for (const auto& g : groups)
    for (const auto& s : g.slices)
      if (seen.insert(s.param.unsafeGetTensorImpl()).second) out.push_back(s.param);
  return out;
}

int64_t MomaNet::num_params() const {
  int64_t n = 0;
  for (const auto& p : parameters())
    n += p.numel();
  return n;
}

std::unique_ptr<MomaNet> make_moma_net(const Config& cfg, const FederatedData& data) {
  auto net = std::make_unique<MomaNet>();
  {
    std::lock_guard<std::mutex> lock(torch_init_mutex());
    torch::manual_seed(cfg.seed);
    net->core =
        std::make_shared<fusion::MomaModel>(cfg.moe, data.tokenizer->size(), cfg.data.max_tokens,
                                            data.height, data.width, cfg.model.embed_dim);
    using Side = fusion::MomaEncoder::Side;
    net->towers.image = std::make_shared<Tower>(
        std::make_shared<fusion::MomaEncoder>(net->core, Side::kImage), data.num_classes);
    net->towers.text = std::make_shared<Tower>(
        std::make_shared<fusion::MomaEncoder>(net->core, Side::kText), data.num_classes);
  }
  const auto dev = data.pool.images.device();
  net->towers.image->to(dev);  // the towers hold the core: both moves cover every parameter
  net->towers.text->to(dev);
  auto head = [](Tower& t) -> std::shared_ptr<torch::nn::Module> {
    for (const auto& item : t.named_children())
      if (item.key() == "head") return item.value();
    MMFL_FAIL("MoMa tower without a class head");
  };
  net->groups = net->core->groups(head(*net->towers.image), head(*net->towers.text));
  for (size_t i = 0; i < net->groups.size(); ++i)
    net->index[net->groups[i].name] = i;
  return net;
}

MomaAggregateReport aggregate_moma(const std::vector<Update>& updates,
                                   std::map<std::string, torch::Tensor>& global,
                                   comm::Communicator* c) {
  MomaAggregateReport rep;
  std::set<int64_t> skipped;
  // Every group's weighted fp64 sum over this rank's updates and its total weight: summed over
  // the ranks in one all-reduce (the groups and the weights side by side), then each group is
  // the sum over its total, rounded once.
  std::vector<torch::Tensor> sums;
  std::vector<double> totals;
  for (auto& [name, value] : global) {
    const bool expert = is_expert_group(name);
    torch::Tensor sum = torch::zeros({value.numel()}, value.options().dtype(torch::kFloat64));
    double total = 0;
    bool any = false;
    for (const auto& u : updates) {
      if (u.diverged) continue;
      const auto it = u.up.dense.find(name);
      if (it == u.up.dense.end()) continue;
      double w = double(u.num_samples);
      if (expert) {
        const auto cnt = u.up.dense.find(name + kTokensSuffix);
        MMFL_CHECK(cnt != u.up.dense.end(), "client ", u.client_id, " sent expert '", name,
                   "' without its token count '", name, kTokensSuffix, "'");
        w = cnt->second.to(torch::kFloat64).sum().item<double>();
      }
      if (w <= 0) continue;
      const auto x = it->second.reshape({-1}).to(torch::kFloat64);
      MMFL_CHECK(x.numel() == value.numel(), "client ", u.client_id, " sent group '", name, "' of ",
                 x.numel(), " values; the model's has ", value.numel());
      if (!torch::isfinite(x).all().item<bool>()) {
        skipped.insert(u.client_id);
        continue;
      }
      // The first term is w x itself (0 + w x is exact), as a one-rank sum would start.
      sum = any ? sum + w * x : w * x;
      any = true;
      total += w;
    }
    sums.push_back(sum);
    totals.push_back(total);
  }
  if (c != nullptr && c->size() > 1) {
    sums.push_back(torch::tensor(totals, torch::kFloat64)
                       .to(sums.empty() ? torch::Device(torch::kCPU) : sums[0].device()));
    auto all = torch::cat(sums);
    c->all_reduce_sum(all);
    int64_t off = 0;
    for (size_t g = 0; g + 1 < sums.size(); ++g) {
      sums[g] = all.narrow(0, off, sums[g].numel());
      off += sums[g].numel();
    }
    const auto t = all.narrow(0, off, int64_t(totals.size())).cpu();
    for (size_t g = 0; g < totals.size(); ++g)
      totals[g] = t[int64_t(g)].item<double>();
  }
  size_t g = 0;
  for (auto& [name, value] : global) {
    const double total = totals[g];
    if (total > 0) value = (sums[g] / total).to(value.dtype());
    if (is_expert_group(name)) ++(total > 0 ? rep.experts_updated : rep.experts_untouched);
    ++g;
  }
  rep.skipped.assign(skipped.begin(), skipped.end());
  if (c != nullptr) rep.skipped = comm::gather_ids(*c, rep.skipped);
  return rep;
}

MomaStrategy::MomaStrategy(const Config& cfg, const FederatedData& data, std::string run_dir)
    : cfg_(cfg), data_(data), run_dir_(std::move(run_dir)) {
  global_ = make_moma_net(cfg, data);
  local_ = make_moma_net(cfg, data);  // overwritten from the global groups for each client
}

Update MomaStrategy::train_client(const ClientSpec& spec, int64_t round,
                                  std::vector<std::vector<fusion::MoeGroupTrace>>* trace) {
  auto& net = *local_;
  for (const auto& g : global_->groups)
    net.set(g.name, global_->get(g.name));
  const bool img = holds_image(spec.kind), txt = holds_text(spec.kind);
  Update u;
  u.client_id = spec.id;
  u.kind = spec.kind;
  u.num_samples = int64_t(spec.indices.size());
  // What the client downloads: the shared layers, its modalities' layers, their experts.
  std::vector<std::string> held;
  for (const auto& g : net.groups) {
    const bool group_image = g.name == "image" || g.name.find(".image.") != std::string::npos;
    const bool group_text = g.name == "text" || g.name.find(".text.") != std::string::npos;
    if ((group_image && !img) || (group_text && !txt)) continue;
    held.push_back(g.name);
  }
  Payload down;
  for (const auto& name : held)
    down.dense[name] = global_->get(name);
  u.bytes_down = down.bytes();

  const auto& t = cfg_.train;
  auto opt = make_optimizer(t, t.lr, net.parameters());
  const auto dev = data_.pool.images.device();
  auto rng = make_rng(cfg_.seed, kStreamLocalOrder, uint64_t(round), uint64_t(spec.id));
  const int64_t E = net.core->moe(0).experts(), layers = cfg_.moe.layers;
  std::vector<int64_t> tokens(size_t(layers * E), 0);
  auto loss_sum = torch::zeros({}, data_.pool.images.options());
  int64_t steps = 0;
  net.towers.image->train();
  net.towers.text->train();
  for (int64_t epoch = 0; epoch < t.epochs; ++epoch) {
    for (const auto& rows : shuffled_batches(spec.indices, t.batch_size, rng, dev)) {
      const auto y = data_.pool.labels.index_select(0, rows);
      const auto out = net.core->forward(
          img ? data_.pool.images.index_select(0, rows) : torch::Tensor(),
          txt ? data_.pool.tokens.index_select(0, rows) : torch::Tensor(), trace && steps == 0);
      if (trace && steps == 0) *trace = out.trace;
      auto loss = cfg_.moe.balance_weight * out.aux;
      if (img) loss = loss + F::cross_entropy(net.towers.image->logits(out.image), y);
      if (txt) loss = loss + F::cross_entropy(net.towers.text->logits(out.text), y);
      if (img && txt && t.contrastive_weight > 0 && rows.size(0) > 1)
        loss = loss + t.contrastive_weight * fusion::clip_loss(out.image, out.text, t.temperature);
      optimizer_step(*opt, loss, t);
      loss_sum += loss.detach();
      ++steps;
      for (size_t i = 0; i < tokens.size(); ++i)
        tokens[i] += out.tokens[i];
    }
  }
  u.loss = steps ? loss_sum.item<double>() / double(steps) : 0.0;
  // Experts follow the shared, image and text groups, in the order of MomaOutput::tokens.
  for (const auto& name : held) {
    const size_t k = net.index.at(name);
    if (!is_expert_group(name)) {
      u.up.dense[name] = net.get(name);
      continue;
    }
    const int64_t n = tokens[k - 3];
    if (n == 0) continue;  // an expert the client never routed a token to is not sent
    u.up.dense[name] = net.get(name);
    u.up.dense[name + kTokensSuffix] = torch::tensor({n}, torch::kInt64);
  }
  bool finite = std::isfinite(u.loss);
  for (const auto& [name, v] : u.up.dense)
    finite = finite && torch::isfinite(v).all().item<bool>();
  if (!finite) {
    u.diverged = true;
    u.up = Payload();
  }
  return u;
}

namespace {

// Per expert group of the model ("image", "text" or "shared"): tokens per expert summed over
// layers, and the balance statistics per layer averaged over layers.
// Tokens per expert (layers x experts, the groups' order) over `updates`; summed over the ranks
// when c has several.
std::vector<int64_t> expert_tokens(const MomaNet& net, const std::vector<Update>& updates,
                                   int64_t layers, comm::Communicator* c) {
  const int64_t E = net.core->moe(0).experts();
  std::vector<int64_t> tokens(size_t(layers * E), 0);
  for (const auto& u : updates)
    for (size_t k = 3; k < net.groups.size(); ++k) {
      const auto it = u.up.dense.find(net.groups[k].name + kTokensSuffix);
      if (it != u.up.dense.end()) tokens[k - 3] += it->second.sum().item<int64_t>();
    }
  if (c != nullptr && c->size() > 1) {
    auto t = torch::tensor(tokens, torch::kInt64);
    c->all_reduce_sum(t);
    std::copy_n(t.data_ptr<int64_t>(), tokens.size(), tokens.begin());
  }
  return tokens;
}

void load_metrics(const MomaNet& net, const std::vector<int64_t>& tokens, int64_t layers,
                  nlohmann::json& extra) {
  const auto& moe = net.core->moe(0);
  const int64_t E = moe.experts();
  for (size_t g = 0; g < moe.group_names().size(); ++g) {
    const auto& name = moe.group_names()[g];
    const int64_t n = moe.group_experts(g), b = moe.group_begin(g);
    std::vector<int64_t> per_expert(size_t(n), 0);
    double max_mean = 0, cv = 0;
    int64_t counted = 0;
    for (int64_t l = 0; l < layers; ++l) {
      double sum = 0, sq = 0, mx = 0;
      for (int64_t e = 0; e < n; ++e) {
        const double c = double(tokens[size_t(l * E + b + e)]);
        per_expert[size_t(e)] += int64_t(c);
        sum += c;
        sq += c * c;
        mx = std::max(mx, c);
      }
      if (sum <= 0) continue;
      const double mean = sum / double(n);
      max_mean += mx / mean;
      cv += std::sqrt(std::max(0.0, sq / double(n) - mean * mean)) / mean;
      ++counted;
    }
    extra["moe_tokens_" + name] = per_expert;
    if (counted > 0) {
      extra["moe_max_mean_" + name] = max_mean / double(counted);
      extra["moe_cv_" + name] = cv / double(counted);
    }
  }
}

}  // namespace

RoundStats MomaStrategy::run_round(const std::vector<const ClientSpec*>& cohort, int64_t round) {
  auto& world = comm::world();
  const auto mine = comm::local_share(cohort, world, comm::Placement::kCost);
  const bool dump = cfg_.moe.dump_round == round;
  std::vector<Update> updates;
  std::map<int64_t, std::vector<std::vector<fusion::MoeGroupTrace>>> traces;
  for (const auto* c : mine)
    updates.push_back(train_client(*c, round, dump ? &traces[c->id] : nullptr));
  // The dump round writes every client's counts and the traces of rank 0's clients: it gathers
  // the updates (every rank then aggregates all of them alike). Other rounds reduce per-group
  // partial sums and weights in one all-reduce (aggregate_moma).
  if (dump) updates = comm::gather_updates(world, std::move(updates), data_.pool.images.device());
  comm::Communicator* reduce = dump ? nullptr : &world;
  if (dump && world.rank() == 0) {
    // Rank 0 writes the run directory: every client's counts, the routing traces of the
    // clients it trained (all of them in a one-rank run).
    const auto dir = std::filesystem::path(run_dir_) / ("moe_round_" + std::to_string(round));
    std::filesystem::create_directories(dir);
    const auto& moe = global_->core->moe(0);
    const int64_t layers = cfg_.moe.layers, E = moe.experts();
    auto counts = torch::zeros({int64_t(updates.size()), layers, E}, torch::kInt64);
    auto ids = torch::zeros({int64_t(updates.size())}, torch::kInt64);
    for (size_t i = 0; i < updates.size(); ++i) {
      const auto& u = updates[i];
      ids[int64_t(i)] = u.client_id;
      for (size_t k = 3; k < global_->groups.size(); ++k) {
        const auto it = u.up.dense.find(global_->groups[k].name + kTokensSuffix);
        if (it != u.up.dense.end())
          counts[int64_t(i)][int64_t(k - 3) / E][int64_t(k - 3) % E] =
              it->second.sum().item<int64_t>();
      }
      const std::string c = "client_" + std::to_string(u.client_id);
      const auto tr_it = traces.find(u.client_id);
      if (tr_it == traces.end()) continue;
      for (size_t l = 0; l < tr_it->second.size(); ++l)
        for (const auto& tr : tr_it->second[l]) {
          const std::string p = c + "_layer" + std::to_string(l) + "_" + tr.group;
          if (tr.scores.defined())
            write_npy((dir / (p + "_scores.npy")).string(), tr.scores.cpu().contiguous());
          write_npy((dir / (p + "_order.npy")).string(), tr.order.cpu().contiguous());
          write_npy((dir / (p + "_offsets.npy")).string(),
                    torch::tensor(tr.offsets, torch::kInt64));
        }
    }
    write_npy((dir / "tokens.npy").string(), counts);
    write_npy((dir / "clients.npy").string(), ids);
    nlohmann::json j;
    j["layers"] = layers;
    j["experts_per_layer"] = E;
    auto groups = nlohmann::json::array();
    for (size_t g = 0; g < moe.group_names().size(); ++g)
      groups.push_back({{"name", moe.group_names()[g]},
                        {"first_expert", moe.group_begin(g)},
                        {"experts", moe.group_experts(g)}});
    j["groups"] = groups;
    std::ofstream((dir / "layout.json").string()) << j.dump(2) << "\n";
  }
  auto flat = global_->get_all();
  const auto rep = aggregate_moma(updates, flat, reduce);
  for (const auto& [name, v] : flat)
    global_->set(name, v);
  RoundStats s = dump ? round_stats(updates) : round_stats(comm::gather_records(world, updates));
  for (auto id : rep.skipped)
    if (std::find(s.skipped.begin(), s.skipped.end(), id) == s.skipped.end())
      s.skipped.push_back(id);
  s.extra["moe_experts_updated"] = rep.experts_updated;
  s.extra["moe_experts_untouched"] = rep.experts_untouched;
  // The sampled clients holding each modality, as the other strategies' rows have them.
  int64_t image_clients = 0, text_clients = 0;
  for (const auto* c : cohort) {
    image_clients += holds_image(c->kind) ? 1 : 0;
    text_clients += holds_text(c->kind) ? 1 : 0;
  }
  s.extra["image_clients"] = image_clients;
  s.extra["text_clients"] = text_clients;
  load_metrics(*global_, expert_tokens(*global_, updates, cfg_.moe.layers, reduce), cfg_.moe.layers,
               s.extra);
  return s;
}

EvalResult MomaStrategy::evaluate() {
  return engine::evaluate(global_->towers, data_, cfg_.eval_batch_size);
}

void MomaStrategy::save(Checkpoint& ck) const {
  for (const auto& g : global_->groups)
    ck.tensors["moma/" + g.name] = global_->get(g.name).cpu();
}

void MomaStrategy::load(const Checkpoint& ck) {
  for (const auto& g : global_->groups) {
    const auto it = ck.tensors.find("moma/" + g.name);
    MMFL_CHECK(it != ck.tensors.end(), "checkpoint lacks 'moma/", g.name,
               "', a parameter group of this MoMa model (was it written by another config?)");
    global_->set(g.name, it->second.to(global_->core->parameters()[0].device()));
  }
}

nlohmann::json MomaStrategy::describe() const {
  const auto& o = cfg_.moe;
  int64_t expert_params = 0, active = 0;
  for (const auto& g : global_->groups)
    if (is_expert_group(g.name)) expert_params += g.numel();
  // Active FFN parameters per token: one expert (top-1 or capacity T/E) of every layer.
  const int64_t one_expert = 2 * o.d_model * o.ffn + o.ffn + o.d_model;
  active = global_->num_params() - expert_params + o.layers * one_expert;
  return {{"params", global_->num_params()},
          {"expert_params", expert_params},
          {"active_params_per_token", active},
          {"ffn_kind", fusion::to_string(o.ffn_kind)},
          {"image_routing", fusion::to_string(o.image.routing)},
          {"text_routing", fusion::to_string(o.text.routing)},
          {"impl", fusion::to_string(o.impl)},
          {"executor", "moma (sequential, in the strategy)"}};
}

}  // namespace mmfl::engine
