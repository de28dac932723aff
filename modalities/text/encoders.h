// Text encoders: token ids [B, L] (int64, 0 = <pad>) -> features [B, embed_dim].
// Bag of words (embedding, masked mean pooling, MLP) or a small transformer.
#pragma once

#include <memory>
#include <string>

#include "modalities/image/encoders.h"

namespace mmfl::modalities {

// kMiniLm: the pretrained all-MiniLM-L6-v2 with LoRA adapters and a trained projection
// (fusion/lora/text_encoder.h); the engine builds it, make_text_encoder cannot.
enum class TextEncoderKind { kBow, kTransformer, kMiniLm };

struct TextEncoderConfig {
  TextEncoderKind kind = TextEncoderKind::kBow;
  int64_t width = 128;  // embedding width (and transformer model width)
  int64_t depth = 1;    // BoW: hidden MLP layers after pooling; transformer: encoder layers
  int64_t heads = 4;    // transformer only; must divide width
  int64_t embed_dim = 64;
};

std::string to_string(TextEncoderKind kind);
// "bow" | "transformer" | "minilm"
TextEncoderKind text_encoder_kind_from(const std::string& name);

std::shared_ptr<Encoder> make_text_encoder(const TextEncoderConfig& cfg, int64_t vocab_size,
                                           int64_t max_len);

}  // namespace mmfl::modalities
