#include "engine/model.h"

#include <vector>

#include "fusion/lora/text_encoder.h"
#include "mmfl/error.h"

namespace mmfl::engine {

fusion::MiniLmEncoderOptions minilm_options(const Config& cfg) {
  fusion::MiniLmEncoderOptions o;
  o.dir = fusion::resolve_minilm_dir(cfg.model.pretrained_text_path,
                                     "set config key model.pretrained_text_path");
  o.embed_dim = cfg.model.embed_dim;
  o.lora = cfg.lora;
  o.adapters = cfg.lora_fed.rule != LoraRule::kNone;
  o.freeze_a = cfg.lora_fed.rule == LoraRule::kFfa;
  o.own_adapted_base =
      cfg.lora_fed.rule == LoraRule::kStack || cfg.lora_fed.rule == LoraRule::kProduct;
  return o;
}

Tower::Tower(std::shared_ptr<modalities::Encoder> encoder, int64_t num_classes)
    : encoder_(register_module("encoder", std::move(encoder))) {
  head_ = register_module("head", torch::nn::Linear(encoder_->embed_dim(), num_classes));
}

std::vector<torch::Tensor> Tower::trainable_parameters() const {
  std::vector<torch::Tensor> out;
  for (const auto& p : parameters())
    if (p.requires_grad()) out.push_back(p);
  return out;
}

torch::Tensor Tower::flat() const {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> parts;
  for (const auto& p : trainable_parameters())
    parts.push_back(p.detach().reshape({-1}));
  return torch::cat(parts).to(torch::kFloat32);
}

void Tower::load_flat(const torch::Tensor& flat) {
  torch::NoGradGuard no_grad;
  MMFL_CHECK(flat.dim() == 1 && flat.size(0) == num_params(), "tower expects ", num_params(),
             " parameters, got a tensor of shape ", flat.sizes());
  // Copies (never aliases) so a tower can be reloaded from a shared global vector.
  int64_t at = 0;
  for (auto& p : trainable_parameters()) {
    p.copy_(flat.narrow(0, at, p.numel()).view_as(p));
    at += p.numel();
  }
}

int64_t Tower::num_params() const {
  int64_t n = 0;
  for (const auto& p : trainable_parameters())
    n += p.numel();
  return n;
}

std::shared_ptr<Tower> make_image_tower(const modalities::ImageEncoderConfig& enc, int64_t h,
                                        int64_t w, int64_t num_classes) {
  return std::make_shared<Tower>(modalities::make_image_encoder(enc, h, w), num_classes);
}

std::shared_ptr<Tower> make_text_tower(const modalities::TextEncoderConfig& enc, int64_t vocab,
                                       int64_t max_tokens, int64_t num_classes, const Config* cfg) {
  if (enc.kind == modalities::TextEncoderKind::kMiniLm) {
    MMFL_CHECK(cfg, "make_text_tower: the MiniLM text tower needs the run's config");
    return std::make_shared<Tower>(std::make_shared<fusion::MiniLmEncoder>(minilm_options(*cfg)),
                                   num_classes);
  }
  return std::make_shared<Tower>(modalities::make_text_encoder(enc, vocab, max_tokens),
                                 num_classes);
}

}  // namespace mmfl::engine
