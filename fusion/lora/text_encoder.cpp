#include "fusion/lora/text_encoder.h"

#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <set>

#include <ATen/CPUGeneratorImpl.h>

#include "mmfl/error.h"

namespace mmfl::fusion {

namespace {

// The pretrained model of a folder, read once per process and never written: every encoder's
// frozen parameters alias its tensors.
struct Pretrained {
  MiniLm model{nullptr};
  std::map<std::string, torch::Tensor> params;
  int64_t pad_id = 0;
};

std::shared_ptr<const Pretrained> pretrained(const std::string& dir) {
  static std::mutex mu;
  static std::map<std::string, std::shared_ptr<const Pretrained>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(dir);
  if (it != cache.end()) return it->second;
  auto p = std::make_shared<Pretrained>();
  {
    // Building the module draws its (overwritten) initial weights from the global generator; a
    // run must not draw differently depending on whether this process had the model cached.
    auto gen = at::detail::getDefaultCPUGenerator();
    const auto state = gen.get_state();
    p->model = load_minilm(dir);
    gen.set_state(state);
  }
  for (auto& item : p->model->named_parameters(/*recurse=*/true)) {
    item.value().set_requires_grad(false);
    p->params.emplace(item.key(), item.value());
  }
  const auto tok = modalities::WordPieceTokenizer::load(dir + "/vocab.txt");
  MMFL_CHECK(tok.size() == p->model->config().vocab_size, "vocabulary '", dir, "/vocab.txt' has ",
             tok.size(), " tokens but config.json's vocab_size is ", p->model->config().vocab_size);
  p->pad_id = tok.pad_id();
  return cache.emplace(dir, std::move(p)).first->second;
}

}  // namespace

MiniLmEncoder::MiniLmEncoder(const MiniLmEncoderOptions& o) : embed_dim_(o.embed_dim) {
  MMFL_CHECK(o.embed_dim >= 1, "MiniLM text tower: embed_dim ", o.embed_dim, " must be >= 1");
  const auto pre = pretrained(o.dir);
  pad_id_ = pre->pad_id;
  base_ = register_module("base", MiniLm(pre->model->config()));
  proj_ = register_module("proj", torch::nn::Linear(pre->model->config().hidden, o.embed_dim));
  if (o.adapters) {
    apply_lora(*base_, o.lora);  // freezes the base, adds the adapters
  } else {
    for (auto& p : base_->parameters())
      p.set_requires_grad(false);
  }
  // Which base tensors belong to adapted layers (kept private when they may be merged into).
  std::set<std::string> owned;
  for (const auto& item : base_->named_modules(/*name_prefix=*/"", /*include_self=*/false)) {
    auto layer = std::dynamic_pointer_cast<LoraLinearImpl>(item.value());
    if (!layer || !layer->has_adapter()) continue;
    adapted_.emplace_back(layer);
    adapted_names_.push_back(item.key());
    if (o.freeze_a) layer->lora_A.set_requires_grad(false);
    if (o.own_adapted_base) {
      owned.insert(item.key() + ".weight");
      owned.insert(item.key() + ".bias");
    }
  }
  torch::NoGradGuard no_grad;
  for (auto& item : base_->named_parameters(/*recurse=*/true)) {
    const auto it = pre->params.find(item.key());
    if (it == pre->params.end()) continue;  // an adapter's lora_A / lora_B
    if (owned.count(item.key()))
      item.value().copy_(it->second);
    else
      item.value().set_data(it->second);
  }
  base_->eval();
}

void MiniLmEncoder::train(bool on) {
  torch::nn::Module::train(on);
  base_->eval();
}

torch::Tensor MiniLmEncoder::forward(const torch::Tensor& ids) {
  MMFL_CHECK(ids.dim() == 2, "MiniLM text tower expects token ids [batch, tokens], got ",
             ids.sizes());
  auto mask = ids.ne(pad_id_).to(torch::kInt64);
  // Columns past the batch's longest text hold padding only: dropped, they change nothing
  // (masked in attention and pooling) and cost a third of the work on short captions.
  const int64_t len = std::max<int64_t>(1, mask.sum(1).max().item<int64_t>());
  if (len < ids.size(1))
    return proj_->forward(base_->embed(ids.narrow(1, 0, len), mask.narrow(1, 0, len)));
  return proj_->forward(base_->embed(ids, mask));
}

std::vector<int64_t> encode_padded(const modalities::WordPieceTokenizer& tok,
                                   const std::string& text, int64_t max_len) {
  auto ids = tok.encode(text, max_len);
  ids.resize(size_t(max_len), tok.pad_id());
  return ids;
}

}  // namespace mmfl::fusion
