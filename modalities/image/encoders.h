// Image encoders: images [B, 1, H, W] (float, normalized) -> features [B, embed_dim].
// Width and depth are configurable so that clients can hold encoders of different sizes.
#pragma once

#include <torch/nn/module.h>
#include <torch/types.h>

#include <memory>
#include <string>

namespace mmfl::modalities {

// Every encoder of every modality maps its input to features [B, embed_dim].
struct Encoder : torch::nn::Module {
  virtual torch::Tensor forward(const torch::Tensor& x) = 0;
  virtual int64_t embed_dim() const = 0;
};

enum class ImageEncoderKind { kCnn, kMlp };

struct ImageEncoderConfig {
  ImageEncoderKind kind = ImageEncoderKind::kCnn;
  int64_t width = 16;  // CNN: channels of the first block (doubling per block); MLP: hidden units
  int64_t depth = 2;   // CNN: conv blocks (conv3x3, ReLU, 2x2 max-pool); MLP: hidden layers
  int64_t embed_dim = 64;
};

std::string to_string(ImageEncoderKind kind);
ImageEncoderKind image_encoder_kind_from(const std::string& name);  // "cnn" | "mlp"

std::shared_ptr<Encoder> make_image_encoder(const ImageEncoderConfig& cfg, int64_t height,
                                            int64_t width);

}  // namespace mmfl::modalities
