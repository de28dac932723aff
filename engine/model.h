// A tower: one modality's encoder plus its class head. The global model is one tower per
// modality; FedAvg averages each tower over the clients that hold that modality.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>

#include <memory>
#include <vector>

#include "engine/config.h"
#include "fusion/lora/text_encoder.h"
#include "modalities/image/encoders.h"
#include "modalities/text/encoders.h"

namespace mmfl::engine {

class Tower : public torch::nn::Module {
 public:
  Tower(std::shared_ptr<modalities::Encoder> encoder, int64_t num_classes);
  torch::Tensor features(const torch::Tensor& x) { return encoder_->forward(x); }  // [B, D]
  torch::Tensor logits(const torch::Tensor& features) { return head_->forward(features); }
  // The trainable parameters (requires_grad; every parameter except a frozen pretrained base
  // and frozen adapter factors) as one flat fp32 vector (registration order) and back.
  torch::Tensor flat() const;
  void load_flat(const torch::Tensor& flat);
  int64_t num_params() const;
  std::vector<torch::Tensor> trainable_parameters() const;
  modalities::Encoder& encoder() { return *encoder_; }

 private:
  std::shared_ptr<modalities::Encoder> encoder_;
  torch::nn::Linear head_{nullptr};
};

struct GlobalModel {
  std::shared_ptr<Tower> image;
  std::shared_ptr<Tower> text;
};

// The MiniLM text tower's options from the run's config (model folder, LoRA options and rule).
fusion::MiniLmEncoderOptions minilm_options(const Config& cfg);

std::shared_ptr<Tower> make_image_tower(const modalities::ImageEncoderConfig& enc, int64_t h,
                                        int64_t w, int64_t num_classes);
// `cfg` is needed by the kind 'minilm' (the pretrained base's folder and the LoRA options).
std::shared_ptr<Tower> make_text_tower(const modalities::TextEncoderConfig& enc, int64_t vocab,
                                       int64_t max_tokens, int64_t num_classes,
                                       const Config* cfg = nullptr);

}  // namespace mmfl::engine
