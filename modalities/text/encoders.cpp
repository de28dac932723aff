#include "modalities/text/encoders.h"

#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/transformer.h>
#include <torch/nn/modules/transformercoder.h>
#include <torch/nn/modules/transformerlayer.h>

#include <cmath>

#include "mmfl/error.h"
#include "modalities/text/tokenizer.h"

namespace mmfl::modalities {

std::string to_string(TextEncoderKind kind) {
  switch (kind) {
    case TextEncoderKind::kBow:
      return "bow";
    case TextEncoderKind::kTransformer:
      return "transformer";
    case TextEncoderKind::kMiniLm:
      return "minilm";
    default:
      MMFL_FAIL("unknown TextEncoderKind ", static_cast<int>(kind));
  }
}

TextEncoderKind text_encoder_kind_from(const std::string& name) {
  if (name == "bow") return TextEncoderKind::kBow;
  if (name == "transformer") return TextEncoderKind::kTransformer;
  if (name == "minilm") return TextEncoderKind::kMiniLm;
  MMFL_FAIL("text encoder kind '", name, "': allowed values are bow, transformer, minilm");
}

namespace {

namespace nn = torch::nn;

// Embeddings start at the scale of a linear layer's output (std 1/sqrt(width)) rather than
// N(0, 1): with unit-scale rows, SGD at the lrs that suit the image towers barely moves them
// within the few local steps a federated client takes.
void init_embedding(nn::Embedding& e) {
  torch::NoGradGuard no_grad;
  e->weight.normal_(0.0, 1.0 / std::sqrt(double(e->weight.size(1))));
  e->weight[Tokenizer::kPad].zero_();
}

// Mean over the non-pad positions: x [B, L, W], mask [B, L] (true = token) -> [B, W].
torch::Tensor masked_mean(const torch::Tensor& x, const torch::Tensor& mask) {
  auto m = mask.unsqueeze(-1).to(x.dtype());
  return (x * m).sum(1) / m.sum(1).clamp_min(1.0);
}

class BowEncoder : public Encoder {
 public:
  BowEncoder(const TextEncoderConfig& cfg, int64_t vocab) : embed_dim_(cfg.embed_dim) {
    embed_ = register_module(
        "embed",
        nn::Embedding(nn::EmbeddingOptions(vocab, cfg.width).padding_idx(Tokenizer::kPad)));
    init_embedding(embed_);
    for (int64_t i = 0; i < cfg.depth; ++i) {
      mlp_->push_back(nn::Linear(cfg.width, cfg.width));
      mlp_->push_back(nn::ReLU());
    }
    mlp_->push_back(nn::Linear(cfg.width, cfg.embed_dim));
    register_module("mlp", mlp_);
  }
  torch::Tensor forward(const torch::Tensor& ids) override {
    // Sum, not mean, over the words: a linear model on word counts, whose gradients do not
    // shrink with caption length (pad rows are zero, so padding adds nothing).
    return mlp_->forward(embed_->forward(ids).sum(1));
  }
  int64_t embed_dim() const override { return embed_dim_; }

 private:
  nn::Embedding embed_{nullptr};
  nn::Sequential mlp_;
  int64_t embed_dim_;
};

class TransformerEncoder : public Encoder {
 public:
  TransformerEncoder(const TextEncoderConfig& cfg, int64_t vocab, int64_t max_len)
      : embed_dim_(cfg.embed_dim) {
    embed_ = register_module(
        "embed",
        nn::Embedding(nn::EmbeddingOptions(vocab, cfg.width).padding_idx(Tokenizer::kPad)));
    init_embedding(embed_);
    pos_ = register_parameter("pos", torch::randn({max_len, cfg.width}) * 0.02);
    auto layer = nn::TransformerEncoderLayerOptions(cfg.width, cfg.heads)
                     .dim_feedforward(2 * cfg.width)
                     .dropout(0.0);  // no dropout: keeps CPU runs exactly reproducible
    layers_ = register_module(
        "layers", nn::TransformerEncoder(nn::TransformerEncoderOptions(layer, cfg.depth)));
    out_ = register_module("out", nn::Linear(cfg.width, cfg.embed_dim));
  }
  torch::Tensor forward(const torch::Tensor& ids) override {
    const auto mask = ids.ne(Tokenizer::kPad);
    auto x = embed_->forward(ids) + pos_.narrow(0, 0, ids.size(1)).unsqueeze(0);
    // nn::TransformerEncoder takes [L, B, W] and a key padding mask that is true at pads.
    x = layers_->forward(x.transpose(0, 1), {}, mask.logical_not()).transpose(0, 1);
    return out_->forward(masked_mean(x, mask));
  }
  int64_t embed_dim() const override { return embed_dim_; }

 private:
  nn::Embedding embed_{nullptr};
  torch::Tensor pos_;
  nn::TransformerEncoder layers_{nullptr};
  nn::Linear out_{nullptr};
  int64_t embed_dim_;
};

}  // namespace

std::shared_ptr<Encoder> make_text_encoder(const TextEncoderConfig& cfg, int64_t vocab_size,
                                           int64_t max_len) {
  MMFL_CHECK(cfg.width >= 1 && cfg.depth >= 0 && cfg.embed_dim >= 1,
             "text encoder needs width >= 1, depth >= 0, embed_dim >= 1 (got ", cfg.width, ", ",
             cfg.depth, ", ", cfg.embed_dim, ")");
  switch (cfg.kind) {
    case TextEncoderKind::kBow:
      return std::make_shared<BowEncoder>(cfg, vocab_size);
    case TextEncoderKind::kTransformer:
      MMFL_CHECK(cfg.heads >= 1 && cfg.width % cfg.heads == 0, "transformer text encoder: heads (",
                 cfg.heads, ") must divide width (", cfg.width, ")");
      MMFL_CHECK(cfg.depth >= 1, "transformer text encoder needs depth >= 1");
      return std::make_shared<TransformerEncoder>(cfg, vocab_size, max_len);
    case TextEncoderKind::kMiniLm:
      MMFL_FAIL(
          "text encoder kind 'minilm' is the pretrained base with LoRA adapters; the "
          "engine builds it (engine/model.h make_text_tower with the run's config)");
    default:
      MMFL_FAIL("unknown TextEncoderKind ", static_cast<int>(cfg.kind));
  }
}

}  // namespace mmfl::modalities
