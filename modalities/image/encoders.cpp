#include "modalities/image/encoders.h"

#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/pooling.h>

#include <vector>

#include "mmfl/error.h"
#include "modalities/image/pool.h"

namespace mmfl::modalities {

std::string to_string(ImageEncoderKind kind) {
  switch (kind) {
    case ImageEncoderKind::kCnn:
      return "cnn";
    case ImageEncoderKind::kMlp:
      return "mlp";
    default:
      MMFL_FAIL("unknown ImageEncoderKind ", static_cast<int>(kind));
  }
}

ImageEncoderKind image_encoder_kind_from(const std::string& name) {
  if (name == "cnn") return ImageEncoderKind::kCnn;
  if (name == "mlp") return ImageEncoderKind::kMlp;
  MMFL_FAIL("image encoder kind '", name, "': allowed values are cnn, mlp");
}

namespace {

namespace nn = torch::nn;

class CnnEncoder : public Encoder {
 public:
  CnnEncoder(const ImageEncoderConfig& cfg, int64_t h, int64_t w) : embed_dim_(cfg.embed_dim) {
    int64_t channels = 1;
    // The layers sit in one Sequential (their parameter names, body.<index>.*, are the
    // checkpoint's), but forward runs them itself so that ReLU and max-pool run fused.
    for (int64_t i = 0; i < cfg.depth; ++i) {
      const int64_t out = cfg.width << std::min<int64_t>(i, 4);
      convs_.push_back(nn::Conv2d(nn::Conv2dOptions(channels, out, 3).padding(1)));
      body_->push_back(convs_.back());
      body_->push_back(nn::ReLU());
      // Pool while the map is large enough; deeper blocks keep the size.
      const bool pool = h >= 4 && w >= 4;
      pool_.push_back(pool);
      if (pool) {
        body_->push_back(nn::MaxPool2d(nn::MaxPool2dOptions(2)));
        h /= 2;
        w /= 2;
      }
      channels = out;
    }
    body_->push_back(nn::Flatten());
    head_ = nn::Linear(channels * h * w, cfg.embed_dim);
    body_->push_back(head_);
    register_module("body", body_);
  }
  torch::Tensor forward(const torch::Tensor& x) override {
    auto y = x;
    for (size_t i = 0; i < convs_.size(); ++i) {
      y = convs_[i]->forward(y);
      y = pool_[i] ? relu_max_pool2(y) : torch::relu(y);
    }
    return head_->forward(y.flatten(1));
  }
  int64_t embed_dim() const override { return embed_dim_; }

 private:
  nn::Sequential body_;
  std::vector<nn::Conv2d> convs_;
  std::vector<bool> pool_;
  nn::Linear head_{nullptr};
  int64_t embed_dim_;
};

class MlpEncoder : public Encoder {
 public:
  MlpEncoder(const ImageEncoderConfig& cfg, int64_t h, int64_t w) : embed_dim_(cfg.embed_dim) {
    body_->push_back(nn::Flatten());
    int64_t in = h * w;
    for (int64_t i = 0; i < cfg.depth; ++i) {
      body_->push_back(nn::Linear(in, cfg.width));
      body_->push_back(nn::ReLU());
      in = cfg.width;
    }
    body_->push_back(nn::Linear(in, cfg.embed_dim));
    register_module("body", body_);
  }
  torch::Tensor forward(const torch::Tensor& x) override { return body_->forward(x); }
  int64_t embed_dim() const override { return embed_dim_; }

 private:
  nn::Sequential body_;
  int64_t embed_dim_;
};

}  // namespace

std::shared_ptr<Encoder> make_image_encoder(const ImageEncoderConfig& cfg, int64_t height,
                                            int64_t width) {
  MMFL_CHECK(cfg.width >= 1 && cfg.depth >= 0 && cfg.embed_dim >= 1,
             "image encoder needs width >= 1, depth >= 0, embed_dim >= 1 (got ", cfg.width, ", ",
             cfg.depth, ", ", cfg.embed_dim, ")");
  switch (cfg.kind) {
    case ImageEncoderKind::kCnn:
      return std::make_shared<CnnEncoder>(cfg, height, width);
    case ImageEncoderKind::kMlp:
      return std::make_shared<MlpEncoder>(cfg, height, width);
    default:
      MMFL_FAIL("unknown ImageEncoderKind ", static_cast<int>(cfg.kind));
  }
}

}  // namespace mmfl::modalities
