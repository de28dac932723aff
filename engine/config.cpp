#include "engine/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <future>
#include <memory>
#include <sstream>
#include <thread>

#include "mmfl/error.h"
#include "modalities/file_io.h"

namespace mmfl::engine {

namespace {

// The widest encoder a config may give (and the server model's derived width at most).
constexpr int64_t kMaxEncoderWidth = 65536;

// One YAML mapping being read: remembers which keys were asked for, so leftovers are reported
// as unknown, and records every resolved value into `out` for the run directory.
class Section {
 public:
  Section(YAML::Node node, std::string path, YAML::Node out)
      : node_(std::move(node)), path_(std::move(path)), out_(std::move(out)) {
    MMFL_CHECK(!node_.IsDefined() || node_.IsNull() || node_.IsMap(), "config key '",
               path_.empty() ? "<root>" : path_, "' must be a mapping of keys to values");
  }

  template <typename T>
  T get(const std::string& key, T def) {
    keys_.push_back(key);
    T value = def;
    YAML::Node v = node_.IsMap() ? node_[key] : YAML::Node();
    if (v.IsDefined() && !v.IsNull()) {
      MMFL_CHECK(v.IsScalar(), "config key '", full(key), "' must be a single value");
      try {
        value = v.as<T>();
      } catch (const YAML::Exception&) {
        MMFL_FAIL("config key '", full(key), "': expected ", type_name<T>(), ", got '", v.Scalar(),
                  "'");
      }
    }
    out_[key] = value;
    return value;
  }

  int64_t get_int(const std::string& key, int64_t def, int64_t lo, int64_t hi) {
    const int64_t v = get<int64_t>(key, def);
    MMFL_CHECK(v >= lo && v <= hi, "config key '", full(key), "' = ", v, " is out of range [", lo,
               ", ", hi, "]");
    return v;
  }
  double get_double(const std::string& key, double def, double lo, double hi) {
    const double v = get<double>(key, def);
    MMFL_CHECK(std::isfinite(v) && v >= lo && v <= hi, "config key '", full(key), "' = ", v,
               " is out of range [", lo, ", ", hi, "]");
    return v;
  }
  std::string get_choice(const std::string& key, const std::string& def,
                         const std::vector<std::string>& allowed) {
    const std::string v = get<std::string>(key, def);
    if (std::find(allowed.begin(), allowed.end(), v) == allowed.end()) {
      MMFL_FAIL("config key '", full(key), "' = '", v, "': allowed values are ", join(allowed));
    }
    return v;
  }

  Section child(const std::string& key) {
    keys_.push_back(key);
    YAML::Node sub = node_.IsMap() ? node_[key] : YAML::Node();
    out_[key] = YAML::Node(YAML::NodeType::Map);
    return Section(sub, full(key), out_[key]);
  }

  const std::string& path() const { return path_; }

  // Every key present must have been asked for.
  void finish() const {
    if (!node_.IsMap()) return;
    for (const auto& kv : node_) {
      // A complex key (`? {a: b}`, `[x]: 1`) names nothing mmfl reads (fuzz_config found that it
      // escaped as yaml-cpp's conversion error, an "internal error").
      MMFL_CHECK(kv.first.IsScalar(), "config",
                 path_.empty() ? std::string() : " section '" + path_ + "'",
                 " has a key that is not a plain name at line ", kv.first.Mark().line + 1);
      const std::string k = kv.first.Scalar();
      if (std::find(keys_.begin(), keys_.end(), k) == keys_.end()) {
        MMFL_FAIL("unknown config key '", full(k), "'; allowed keys",
                  path_.empty() ? "" : " in '" + path_ + "'", ": ", join(keys_));
      }
    }
  }

 private:
  std::string full(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }
  static std::string join(const std::vector<std::string>& v) {
    std::string s;
    for (size_t i = 0; i < v.size(); ++i)
      s += (i ? ", " : "") + v[i];
    return s;
  }
  template <typename T>
  static const char* type_name() {
    if constexpr (std::is_same_v<T, bool>) return "true or false";
    if constexpr (std::is_integral_v<T>) return "an integer";
    if constexpr (std::is_floating_point_v<T>) return "a number";
    return "a string";
  }

  YAML::Node node_;
  std::string path_;
  YAML::Node out_;
  std::vector<std::string> keys_;
};

void apply_override(YAML::Node& root, const std::string& assignment) {
  const auto eq = assignment.find('=');
  MMFL_CHECK(eq != std::string::npos && eq > 0, "--set '", assignment,
             "': expected key=value, for example --set train.lr=0.01");
  const std::string path = assignment.substr(0, eq);
  const std::string value = assignment.substr(eq + 1);
  std::vector<std::string> parts;
  std::stringstream ss(path);
  for (std::string p; std::getline(ss, p, '.');) {
    MMFL_CHECK(!p.empty(), "--set '", assignment, "': empty part in key path '", path, "'");
    parts.push_back(p);
  }
  // (getline does not return the empty part after a last '.')
  MMFL_CHECK(path.back() != '.', "--set '", assignment, "': empty part in key path '", path, "'");
  // yaml-cpp's operator[] on nodes aliases; walk with explicit copies of child handles.
  std::vector<YAML::Node> chain = {root};
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    YAML::Node next = chain.back()[parts[i]];
    if (!next.IsDefined() || next.IsNull()) {
      chain.back()[parts[i]] = YAML::Node(YAML::NodeType::Map);
      next = chain.back()[parts[i]];
    }
    MMFL_CHECK(next.IsMap(), "--set '", assignment, "': '", parts[i], "' is not a section");
    chain.push_back(next);
  }
  MMFL_CHECK(!value.empty(), "--set '", assignment, "': empty value for '", path,
             "'; give a value (for example --set ", path, "=...) or drop the --set");
  YAML::Node parsed;
  try {
    const auto docs = load_yaml_all(value, "--set '" + assignment + "'");
    MMFL_CHECK(docs.size() <= 1, "--set '", assignment, "': the value holds ", docs.size(),
               " YAML documents");
    if (!docs.empty()) parsed = docs[0];
  } catch (const YAML::Exception& e) {
    MMFL_FAIL("--set '", assignment, "': cannot parse the value: ", e.msg);
  }
  MMFL_CHECK(parsed.IsDefined() && !parsed.IsNull(), "--set '", assignment, "': the value of '",
             path, "' is null; give a value or drop the --set to keep the default");
  chain.back()[parts.back()] = parsed;
}

modalities::ImageEncoderConfig parse_image_encoder(Section& parent, const std::string& key,
                                                   modalities::ImageEncoderConfig def) {
  Section e = parent.child(key);
  def.kind = modalities::image_encoder_kind_from(
      e.get_choice("kind", modalities::to_string(def.kind), {"cnn", "mlp"}));
  def.width = e.get_int("width", def.width, 1, kMaxEncoderWidth);
  def.depth = e.get_int("depth", def.depth, 0, 16);
  e.finish();
  return def;
}

modalities::TextEncoderConfig parse_text_encoder(Section& parent, const std::string& key,
                                                 modalities::TextEncoderConfig def) {
  Section e = parent.child(key);
  def.kind = modalities::text_encoder_kind_from(
      e.get_choice("kind", modalities::to_string(def.kind), {"bow", "transformer", "minilm"}));
  def.width = e.get_int("width", def.width, 1, kMaxEncoderWidth);
  def.depth = e.get_int("depth", def.depth, 0, 16);
  def.heads = e.get_int("heads", def.heads, 1, 256);
  e.finish();
  MMFL_CHECK(def.kind != modalities::TextEncoderKind::kTransformer ||
                 (def.width % def.heads == 0 && def.depth >= 1),
             "config key '", e.path(), "': a transformer needs depth >= 1 and heads (", def.heads,
             ") dividing width (", def.width, ")");
  return def;
}

bool same(const modalities::ImageEncoderConfig& a, const modalities::ImageEncoderConfig& b) {
  return a.kind == b.kind && a.width == b.width && a.depth == b.depth;
}
bool same(const modalities::TextEncoderConfig& a, const modalities::TextEncoderConfig& b) {
  return a.kind == b.kind && a.width == b.width && a.depth == b.depth && a.heads == b.heads;
}

}  // namespace

std::string to_string(ExecutorKind k) {
  switch (k) {
    case ExecutorKind::kAuto:
      return "auto";
    case ExecutorKind::kSequential:
      return "sequential";
    case ExecutorKind::kParallel:
      return "parallel";
    case ExecutorKind::kBatched:
      return "batched";
    default:
      MMFL_FAIL("unknown ExecutorKind ", static_cast<int>(k));
  }
}

std::string to_string(CommBackend b) {
  switch (b) {
    case CommBackend::kAuto:
      return "auto";
    case CommBackend::kLocal:
      return "local";
    case CommBackend::kMpi:
      return "mpi";
    case CommBackend::kNccl:
      return "nccl";
    default:
      MMFL_FAIL("unknown CommBackend ", static_cast<int>(b));
  }
}

std::string to_string(StrategyKind s) {
  switch (s) {
    case StrategyKind::kFedAvg:
      return "fedavg";
    case StrategyKind::kCreamFl:
      return "creamfl";
    case StrategyKind::kPublicOnly:
      return "public_only";
    case StrategyKind::kLora:
      return "lora";
    case StrategyKind::kMoma:
      return "moma";
    default:
      MMFL_FAIL("unknown StrategyKind ", static_cast<int>(s));
  }
}

std::string to_string(LoraRule r) {
  switch (r) {
    case LoraRule::kNone:
      return "none";
    case LoraRule::kFedAvg:
      return "fedavg";
    case LoraRule::kFfa:
      return "ffa";
    case LoraRule::kFedSa:
      return "fedsa";
    case LoraRule::kStack:
      return "stack";
    case LoraRule::kProduct:
      return "product";
    default:
      MMFL_FAIL("unknown LoraRule ", static_cast<int>(r));
  }
}

std::string to_string(DeviceChoice d) {
  switch (d) {
    case DeviceChoice::kAuto:
      return "auto";
    case DeviceChoice::kCpu:
      return "cpu";
    case DeviceChoice::kCuda:
      return "cuda";
    default:
      MMFL_FAIL("unknown DeviceChoice ", static_cast<int>(d));
  }
}

DeviceChoice device_choice_from(const std::string& s) {
  if (s == "auto") return DeviceChoice::kAuto;
  if (s == "cpu") return DeviceChoice::kCpu;
  if (s == "cuda") return DeviceChoice::kCuda;
  MMFL_FAIL("device '", s, "': allowed values are auto, cpu, cuda");
}

Config parse_config(const YAML::Node& root, const std::string& origin) {
  MMFL_CHECK(root.IsMap(), "config '", origin, "' must be a YAML mapping at the top level");
  YAML::Node out(YAML::NodeType::Map);
  Section top(root, "", out);
  Config c;
  c.name = top.get<std::string>("name", c.name);
  MMFL_CHECK(!c.name.empty() && c.name.find('/') == std::string::npos, "config key 'name' = '",
             c.name, "' must be non-empty and contain no '/'");
  for (const char ch : c.name)
    MMFL_CHECK(static_cast<unsigned char>(ch) >= 0x20 && ch != 0x7f,
               "config key 'name' holds a control character (byte ",
               int(static_cast<unsigned char>(ch)), "); run directories are named after it");
  c.seed = top.get<uint64_t>("seed", c.seed);
  c.rounds = top.get_int("rounds", c.rounds, 1, 1000000);
  c.device = device_choice_from(top.get_choice("device", "auto", {"auto", "cpu", "cuda"}));

  {
    Section s = top.child("data");
    auto& d = c.data;
    d.root = s.get<std::string>("root", d.root);
    d.caption_seed = s.get<uint64_t>("caption_seed", d.caption_seed);
    d.public_size = s.get_int("public_size", d.public_size, 0, 50000);
    d.train_limit = s.get_int("train_limit", d.train_limit, 0, 60000);
    d.test_limit = s.get_int("test_limit", d.test_limit, 0, 10000);
    d.retrieval_pairs = s.get_int("retrieval_pairs", d.retrieval_pairs, 10, 10000);
    d.max_tokens = s.get_int("max_tokens", d.max_tokens, 4, 256);
    MMFL_CHECK(d.test_limit == 0 || d.retrieval_pairs <= d.test_limit,
               "config key 'data.retrieval_pairs' = ", d.retrieval_pairs,
               " is more than the test images it is drawn from (data.test_limit = ", d.test_limit,
               "); lower data.retrieval_pairs or raise data.test_limit");
    s.finish();
  }
  {
    Section s = top.child("population");
    auto& p = c.population;
    p.clients = s.get_int("clients", p.clients, 1, 10000000);
    {
      Section m = s.child("modality_mix");
      p.mix.image = m.get_double("image", p.mix.image, 0, 1);
      p.mix.text = m.get_double("text", p.mix.text, 0, 1);
      p.mix.paired = m.get_double("paired", p.mix.paired, 0, 1);
      m.finish();
      const double sum = p.mix.image + p.mix.text + p.mix.paired;
      MMFL_CHECK(std::abs(sum - 1.0) < 1e-6, "config keys 'population.modality_mix.*' sum to ", sum,
                 "; image + text + paired must be 1");
    }
    const std::string part =
        s.get_choice("partition", "dirichlet", {"iid", "dirichlet", "resample"});
    p.partition = part == "iid"         ? Partition::kIid
                  : part == "dirichlet" ? Partition::kDirichlet
                                        : Partition::kResample;
    p.alpha = s.get_double("alpha", p.alpha, 1e-3, 1e6);
    p.quantity_skew = s.get_double("quantity_skew", p.quantity_skew, 0, 5);
    p.min_samples = s.get_int("min_samples", p.min_samples, 1, 100000);
    s.finish();
  }
  {
    Section s = top.child("sampling");
    c.clients_per_round = s.get_int("clients_per_round", c.clients_per_round, 1, 1000000);
    s.finish();
    MMFL_CHECK(c.clients_per_round <= c.population.clients,
               "config key "
               "'sampling.clients_per_round' = ",
               c.clients_per_round,
               " exceeds "
               "'population.clients' = ",
               c.population.clients);
  }
  {
    Section s = top.child("model");
    auto& m = c.model;
    m.embed_dim = s.get_int("embed_dim", m.embed_dim, 1, 65536);
    m.image.embed_dim = m.text.embed_dim = m.embed_dim;
    m.image = parse_image_encoder(s, "image_encoder", m.image);
    m.text = parse_text_encoder(s, "text_encoder", m.text);
    for (int k = 0; k < 3; ++k) {
      m.kind_image[k] = m.image;
      m.kind_text[k] = m.text;
    }
    {
      Section kinds = s.child("kinds");
      Section img = kinds.child("image");
      m.kind_image[0] = parse_image_encoder(img, "image_encoder", m.image);
      img.finish();
      Section txt = kinds.child("text");
      m.kind_text[1] = parse_text_encoder(txt, "text_encoder", m.text);
      txt.finish();
      Section pair = kinds.child("paired");
      m.kind_image[2] = parse_image_encoder(pair, "image_encoder", m.image);
      m.kind_text[2] = parse_text_encoder(pair, "text_encoder", m.text);
      pair.finish();
      kinds.finish();
    }
    for (int k = 0; k < 3; ++k)
      m.heterogeneous |= !same(m.kind_image[k], m.image) || !same(m.kind_text[k], m.text);
    {
      // The server model defaults to the clients' encoders at twice the width (within the
      // widths a config may give, so that a default never fails a check the user cannot see).
      Section srv = s.child("server");
      auto wide_img = m.image;
      wide_img.width = std::min(2 * wide_img.width, kMaxEncoderWidth);
      auto wide_txt = m.text;
      wide_txt.width = std::min(2 * wide_txt.width, kMaxEncoderWidth);
      m.server_image = parse_image_encoder(srv, "image_encoder", wide_img);
      m.server_text = parse_text_encoder(srv, "text_encoder", wide_txt);
      srv.finish();
    }
    m.pretrained_text_path = s.get<std::string>("pretrained_text_path", m.pretrained_text_path);
    s.finish();
  }
  {
    Section s = top.child("train");
    auto& t = c.train;
    t.optimizer = s.get_choice("optimizer", "sgd", {"sgd", "adam"}) == "sgd" ? OptimizerKind::kSgd
                                                                             : OptimizerKind::kAdam;
    t.lr = s.get_double("lr", t.lr, 1e-9, 100);
    t.momentum = s.get_double("momentum", t.momentum, 0, 0.999);
    t.weight_decay = s.get_double("weight_decay", t.weight_decay, 0, 1);
    t.epochs = s.get_int("epochs", t.epochs, 1, 1000);
    t.batch_size = s.get_int("batch_size", t.batch_size, 1, 1 << 20);
    t.contrastive_weight = s.get_double("contrastive_weight", t.contrastive_weight, 0, 1000);
    t.temperature = s.get_double("temperature", t.temperature, 1e-4, 100);
    t.grad_clip = s.get_double("grad_clip", t.grad_clip, 0, 1e6);
    s.finish();
  }
  {
    Section s = top.child("strategy");
    const std::string name =
        s.get_choice("name", "fedavg", {"fedavg", "creamfl", "public_only", "lora", "moma"});
    c.strategy = name == "fedavg"    ? StrategyKind::kFedAvg
                 : name == "creamfl" ? StrategyKind::kCreamFl
                 : name == "lora"    ? StrategyKind::kLora
                 : name == "moma"    ? StrategyKind::kMoma
                                     : StrategyKind::kPublicOnly;
    s.finish();
    const bool minilm = c.model.text.kind == modalities::TextEncoderKind::kMiniLm;
    MMFL_CHECK(c.strategy != StrategyKind::kLora || minilm,
               "'strategy.name' = 'lora' adapts the pretrained text base; set "
               "model.text_encoder.kind: minilm");
    MMFL_CHECK(c.strategy == StrategyKind::kLora || !minilm,
               "model.text_encoder.kind 'minilm' (the pretrained base with adapters) is trained "
               "by strategy.name: lora");
    MMFL_CHECK(!c.model.heterogeneous || !minilm,
               "model.kinds: the MiniLM text tower is one architecture for every client kind");
    MMFL_CHECK(c.strategy != StrategyKind::kFedAvg || !c.model.heterogeneous,
               "config key 'model.kinds' gives client kinds different encoders, but "
               "'strategy.name' = 'fedavg' averages weights and needs one architecture per "
               "modality; use strategy.name: creamfl for heterogeneous clients");
    MMFL_CHECK(c.strategy == StrategyKind::kFedAvg || c.strategy == StrategyKind::kLora ||
                   c.strategy == StrategyKind::kMoma || c.data.public_size > 0,
               "config key 'data.public_size' = 0, but strategy '", name,
               "' trains on the server's public set; give it at least one sample");
  }
  {
    Section s = top.child("creamfl");
    auto& k = c.creamfl;
    k.kd_weight = s.get_double("kd_weight", k.kd_weight, 0, 1000);
    k.interintra_weight = s.get_double("interintra_weight", k.interintra_weight, 0, 1000);
    k.reg_temperature = s.get_double("reg_temperature", k.reg_temperature, 1e-4, 100);
    k.ensemble_temperature =
        s.get_double("ensemble_temperature", k.ensemble_temperature, 1e-4, 100);
    k.ensemble = s.get_choice("agg_method", "con_w", {"con_w", "mean"}) == "con_w"
                     ? EnsembleMethod::kContrastive
                     : EnsembleMethod::kMean;
    k.renormalize = s.get<bool>("renormalize", k.renormalize);
    k.server_epochs = s.get_int("server_epochs", k.server_epochs, 0, 1000);
    k.server_lr = s.get_double("server_lr", k.server_lr, 1e-9, 100);
    k.public_batch_size = s.get_int("public_batch_size", k.public_batch_size, 2, 1 << 20);
    k.dump_round = s.get_int("dump_round", k.dump_round, 0, c.rounds);
    MMFL_CHECK(k.dump_round == 0 || c.strategy != StrategyKind::kPublicOnly,
               "config key 'creamfl.dump_round' dumps the clients' representations and their "
               "ensemble; strategy public_only has none (use strategy creamfl)");
    s.finish();
  }
  {
    Section s = top.child("executor");
    auto& e = c.executor;
    const std::string kind =
        s.get_choice("kind", "auto", {"auto", "sequential", "parallel", "batched"});
    e.kind = kind == "auto"         ? ExecutorKind::kAuto
             : kind == "sequential" ? ExecutorKind::kSequential
             : kind == "parallel"   ? ExecutorKind::kParallel
                                    : ExecutorKind::kBatched;
    e.workers = s.get_int("workers", e.workers, 0, 4096);
    e.max_memory_gb = s.get_double("max_memory_gb", e.max_memory_gb, 1e-3, 1e5);
    s.finish();
  }
  {
    Section s = top.child("state");
    c.state.max_memory_gb = s.get_double("max_memory_gb", c.state.max_memory_gb, 0, 1e5);
    s.finish();
  }
  {
    Section s = top.child("comm");
    auto& m = c.comm;
    const std::string b = s.get_choice("backend", "auto", {"auto", "local", "mpi", "nccl"});
    for (auto k : {CommBackend::kAuto, CommBackend::kLocal, CommBackend::kMpi, CommBackend::kNccl})
      if (to_string(k) == b) m.backend = k;
    m.timeout_s = s.get_double("timeout_s", m.timeout_s, 0.1, 1e6);
    s.finish();
  }
  {
    Section s = top.child("lora");
    auto& l = c.lora;
    l.rank = s.get_int("rank", l.rank, 1, 4096);
    l.alpha = s.get_double("alpha", l.alpha, 1e-6, 1e6);
    l.dropout = s.get_double("dropout", l.dropout, 0, 0.99);
    // A comma-separated list (one YAML scalar, so that --set takes it too).
    std::string joined;
    for (const auto& t : l.targets)
      joined += (joined.empty() ? "" : ",") + t;
    joined = s.get<std::string>("targets", joined);
    l.targets.clear();
    for (size_t start = 0;;) {  // every piece, empty ones too ("query," is an error)
      const size_t comma = std::min(joined.find(',', start), joined.size());
      const std::string t = joined.substr(start, comma - start);
      const auto b = t.find_first_not_of(" \t"), e = t.find_last_not_of(" \t");
      l.targets.push_back(b == std::string::npos ? "" : t.substr(b, e - b + 1));
      if (comma == joined.size()) break;
      start = comma + 1;
    }
    l.seed = c.seed;
    auto& f = c.lora_fed;
    const std::string rule = s.get_choice("rule", to_string(f.rule),
                                          {"none", "fedavg", "ffa", "fedsa", "stack", "product"});
    for (auto r : {LoraRule::kNone, LoraRule::kFedAvg, LoraRule::kFfa, LoraRule::kFedSa,
                   LoraRule::kStack, LoraRule::kProduct})
      if (to_string(r) == rule) f.rule = r;
    f.upload_density = s.get_double("upload_density", f.upload_density, 1e-9, 1e12);
    f.download_density = s.get_double("download_density", f.download_density, 1e-9, 1e12);
    for (const auto& [key, v] : {std::pair<std::string, double>{"upload_density", f.upload_density},
                                 {"download_density", f.download_density}})
      MMFL_CHECK(v <= 1.0 || v == std::floor(v), "config key 'lora.", key, "' = ", v,
                 ": give a fraction in (0, 1] or a whole count of entries");
    f.error_feedback = s.get<bool>("error_feedback", f.error_feedback);
    f.dump_round = s.get_int("dump_round", f.dump_round, 0, c.rounds);
    f.cohort = s.get_choice("cohort", f.cohort, {"auto", "on", "off"});
    s.finish();
    fusion::validate_lora_options(l, "lora.");
    const bool merges = f.rule == LoraRule::kStack || f.rule == LoraRule::kProduct;
    MMFL_CHECK(!merges || (f.upload_density == 1.0 && f.download_density == 1.0),
               "config key 'lora.rule' = '", rule,
               "' sends the clients' factors and merges them into the base each round; sparse "
               "deltas (lora.upload_density, lora.download_density < 1) need rule fedavg, ffa "
               "or fedsa");
    MMFL_CHECK(f.rule != LoraRule::kNone || (f.upload_density == 1.0 && f.download_density == 1.0),
               "config key 'lora.rule' = 'none' trains no adapters; lora.upload_density and "
               "lora.download_density have nothing to sparsify");
  }
  {
    Section s = top.child("moe");
    auto& m = c.moe;
    m.d_model = s.get_int("d_model", m.d_model, 1, 8192);
    m.layers = s.get_int("layers", m.layers, 1, 64);
    m.heads = s.get_int("heads", m.heads, 1, 256);
    m.ffn = s.get_int("ffn", m.ffn, 1, 65536);
    m.patch = s.get_int("patch", m.patch, 1, 1024);
    MMFL_CHECK(m.d_model % m.heads == 0, "config key 'moe.heads' = ", m.heads,
               " must divide 'moe.d_model' = ", m.d_model);
    m.ffn_kind = s.get_choice("ffn_kind", "modality", {"modality", "shared"}) == "shared"
                     ? fusion::MoeFfnKind::kShared
                     : fusion::MoeFfnKind::kModality;
    m.impl = s.get_choice("impl", "fused", {"fused", "loop"}) == "loop" ? fusion::MoeImpl::kLoop
                                                                        : fusion::MoeImpl::kFused;
    m.balance_weight = s.get_double("balance_weight", m.balance_weight, 0, 1000);
    m.dump_round = s.get_int("dump_round", m.dump_round, 0, c.rounds);
    const bool shared = m.ffn_kind == fusion::MoeFfnKind::kShared;
    for (const std::string mod : {"image", "text"}) {
      Section g = s.child(mod);
      auto& o = mod == "image" ? m.image : m.text;
      // Under moe.ffn_kind: shared every token goes through one dense FFN: the groups are
      // one dense expert, and other values are refused rather than ignored.
      const std::string routing = g.get_choice("routing", shared ? "dense" : "expert_choice",
                                               {"expert_choice", "token_choice", "dense"});
      o.routing = routing == "dense"          ? fusion::MoeRoutingKind::kDense
                  : routing == "token_choice" ? fusion::MoeRoutingKind::kTokenChoice
                                              : fusion::MoeRoutingKind::kExpertChoice;
      const bool dense = o.routing == fusion::MoeRoutingKind::kDense;
      o.experts = g.get_int("experts", dense ? 1 : 4, 1, 1024);
      o.top_k = g.get_int("top_k", 1, 1, 1024);
      g.finish();
      const std::string k = "config key 'moe." + mod + ".";
      MMFL_CHECK(
          !dense || o.experts == 1, k, "experts' = ", o.experts,
          ": routing 'dense' is one FFN for the modality; set experts: 1 or another routing");
      MMFL_CHECK(o.top_k <= o.experts, k, "top_k' = ", o.top_k, " exceeds its experts (", o.experts,
                 ")");
      MMFL_CHECK(o.routing == fusion::MoeRoutingKind::kTokenChoice || o.top_k == 1, k,
                 "top_k' = ", o.top_k, " applies to routing 'token_choice' only (routing is '",
                 routing, "')");
      MMFL_CHECK(!shared || dense, k, "routing' = '", routing,
                 "', but 'moe.ffn_kind' = 'shared' sends every token through one dense FFN; "
                 "use moe.ffn_kind: modality for expert groups");
    }
    s.finish();
  }
  {
    Section s = top.child("eval");
    c.eval_every = s.get_int("every", c.eval_every, 1, 1000000);
    c.eval_batch_size = s.get_int("batch_size", c.eval_batch_size, 1, 1 << 20);
    s.finish();
  }
  {
    Section s = top.child("checkpoint");
    c.checkpoint_every = s.get_int("every", c.checkpoint_every, 1, 1000000);
    c.checkpoint_keep = s.get_int("keep", c.checkpoint_keep, 1, 1000);
    s.finish();
  }
  top.finish();
  YAML::Emitter em;
  em << out;
  c.resolved_yaml = std::string(em.c_str()) + "\n";
  return c;
}

namespace {

// yaml-cpp keeps a duplicated key twice in a mapping and answers lookups with the first; mmfl
// refuses it, naming the key path and the line of the second occurrence.
void check_duplicate_keys(const YAML::Node& node, const std::string& path) {
  if (node.IsSequence()) {
    for (size_t i = 0; i < node.size(); ++i)
      check_duplicate_keys(node[i], path + "[" + std::to_string(i) + "]");
    return;
  }
  if (!node.IsMap()) return;
  std::vector<std::string> seen;
  for (const auto& kv : node) {
    const std::string k = kv.first.IsScalar() ? kv.first.Scalar() : "<complex key>";
    const std::string full = path.empty() ? k : path + "." + k;
    MMFL_CHECK(std::find(seen.begin(), seen.end(), k) == seen.end(), "config key '", full,
               "' appears twice (again at line ", kv.first.Mark().line + 1, "); keep one of them");
    seen.push_back(k);
    check_duplicate_keys(kv.second, full);
  }
}

// A loaded YAML tree as a walk sees it: an alias (*name) stands for its anchor's whole subtree
// at every use, so ten levels of ten aliases each are 10^10 values from a few hundred bytes, and
// every walk over the tree (the duplicate-key check, the config's sections, the report's flatten)
// would take hours. Counting stops at the first value past the budget, so the check itself is
// bounded. Real configs hold a few hundred values and nest a few levels.
constexpr size_t kMaxYamlValues = 100000;
constexpr int kMaxYamlDepth = 64;

void check_yaml_size(const YAML::Node& node, const std::string& what, int depth, size_t& count) {
  MMFL_CHECK(++count <= kMaxYamlValues, what, " holds more than ", kMaxYamlValues,
             " YAML values (keys and values; each use of an alias *name counts its anchor's "
             "values again); a config has a few hundred (where aliases nest, write the repeated "
             "values out instead)");
  MMFL_CHECK(depth <= kMaxYamlDepth, what, " nests YAML collections more than ", kMaxYamlDepth,
             " levels deep; a config nests a few");
  if (node.IsSequence()) {
    for (const auto& v : node)
      check_yaml_size(v, what, depth + 1, count);
  } else if (node.IsMap()) {
    for (const auto& kv : node) {
      check_yaml_size(kv.first, what, depth + 1, count);
      check_yaml_size(kv.second, what, depth + 1, count);
    }
  }
}

std::vector<YAML::Node> checked_size(std::vector<YAML::Node> docs, const std::string& what) {
  size_t count = 0;
  for (const auto& d : docs)
    check_yaml_size(d, what, 0, count);
  return docs;
}

}  // namespace

std::vector<YAML::Node> load_yaml_all(const std::string& text, const std::string& what,
                                      double deadline_s) {
#ifdef MMFL_YAML_INLINE
  // The fuzzer parses inline, so that a parser that loops is its timeout, on the input that did it.
  (void)deadline_s;
  return checked_size(YAML::LoadAll(text), what);
#else
  auto task = std::make_shared<std::packaged_task<std::vector<YAML::Node>()> >(
      [text] { return YAML::LoadAll(text); });
  auto result = task->get_future();
  std::thread([task] { (*task)(); }).detach();
  MMFL_CHECK(
      result.wait_for(std::chrono::duration<double>(deadline_s)) == std::future_status::ready, what,
      ": the YAML parser did not finish within ", deadline_s,
      " s: yaml-cpp 0.7 loops forever on some malformed YAML, such as a ',' before a "
      "closing '}' or ']' outside a '{...}' or '[...]'; check the syntax there");
  return checked_size(result.get(), what);
#endif
}

Config parse_config_text(const std::string& yaml, const std::vector<std::string>& overrides) {
  std::vector<YAML::Node> docs;
  try {
    docs = load_yaml_all(yaml, "config");
  } catch (const YAML::Exception& e) {
    MMFL_FAIL("config: YAML syntax error at line ", e.mark.line + 1, ", column ", e.mark.column + 1,
              ": ", e.msg);
  }
  MMFL_CHECK(docs.size() <= 1, "config holds ", docs.size(),
             " YAML documents (separated by '---'); an experiment is one mapping in one document");
  MMFL_CHECK(!docs.empty() && docs[0].IsDefined() && !docs[0].IsNull(),
             "config is empty; an experiment is a YAML mapping such as 'name: my-run' (every "
             "key has a default, see configs/quickstart.yaml)");
  YAML::Node root = docs[0];
  MMFL_CHECK(root.IsMap(), "config must be a YAML mapping of keys to values at the top level");
  check_duplicate_keys(root, "");
  for (const auto& o : overrides)
    apply_override(root, o);
  Config c = parse_config(root, "<text>");
  // Whether the config (not its defaults) sets `key` in `node`; const: lookups do not insert.
  auto has = [](const YAML::Node& node, const char* key) {
    return node.IsMap() && node[key].IsDefined() && !node[key].IsNull();
  };
  const YAML::Node& given = root;
  auto model_has = [&](const char* key) { return has(given["model"], key); };
  const auto s = c.strategy;
  if (has(given, "lora") && s != StrategyKind::kLora)
    c.unused_sections.push_back("'lora' (read by strategy lora)");
  if (has(given, "moe") && s != StrategyKind::kMoma)
    c.unused_sections.push_back("'moe' (read by strategy moma)");
  const bool creamfl_like = s == StrategyKind::kCreamFl || s == StrategyKind::kPublicOnly;
  if (has(given, "creamfl") && !creamfl_like)
    c.unused_sections.push_back("'creamfl' (read by strategies creamfl and public_only)");
  if (model_has("server") && !creamfl_like)
    c.unused_sections.push_back("'model.server' (the server model of creamfl and public_only)");
  if (s == StrategyKind::kMoma)
    for (const char* key : {"image_encoder", "text_encoder", "kinds"})
      if (model_has(key))
        c.unused_sections.push_back(std::string("'model.") + key +
                                    "' (MoMa builds its transformer from 'moe:' and "
                                    "model.embed_dim)");
  return c;
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  // Real configs are a few kB; 1 MiB bounds the read before anything is allocated.
  const std::string text = modalities::read_regular_file(path, uint64_t(1) << 20, "config file");
  try {
    return parse_config_text(text, overrides);
  } catch (const Error& e) {
    throw Error(path + ": " + e.reason(), __FILE__, __LINE__);
  }
}

}  // namespace mmfl::engine
