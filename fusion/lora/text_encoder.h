// The text tower of federated LoRA: the pretrained all-MiniLM-L6-v2 (frozen), LoRA adapters on
// the layers the config chooses, and a trained linear projection of the sentence embedding to
// the run's embed_dim. Token ids are WordPiece ids ([CLS] ... [SEP], padded with [PAD]).
//
// Every instance shares the pretrained weights in memory (one read-only copy per model folder
// and process; a CPU tower adds only its adapters and projection), except the base weights of
// the adapted layers where `own_adapted_base` asks for private copies: the rules that merge
// the clients' adapters into the base each round (stack, product) change those.
// The base always runs in eval mode (no dropout): local training is then a deterministic
// function of the client's data order, whichever thread or executor trains it.
#pragma once

#include <torch/nn/modules/linear.h>
#include <torch/types.h>

#include <string>
#include <vector>

#include "fusion/lora/lora.h"
#include "fusion/lora/minilm.h"
#include "modalities/image/encoders.h"

namespace mmfl::fusion {

struct MiniLmEncoderOptions {
  std::string dir;  // model folder, resolved (resolve_minilm_dir)
  int64_t embed_dim = 64;
  bool adapters = true;   // false: the frozen base with only the projection trained
  bool freeze_a = false;  // A stays at its shared random initialization (FFA-LoRA)
  bool own_adapted_base = false;
  LoraOptions lora;
};

class MiniLmEncoder : public modalities::Encoder {
 public:
  explicit MiniLmEncoder(const MiniLmEncoderOptions& o);

  // ids [B, L] int64 (WordPiece, [PAD] = padding) -> [B, embed_dim]: the projection of the
  // L2-normalized mean-pooled sentence embedding.
  torch::Tensor forward(const torch::Tensor& ids) override;
  int64_t embed_dim() const override { return embed_dim_; }
  void train(bool on = true) override;  // the base stays in eval mode

  MiniLm& base() { return base_; }
  // The adapted layers, in module order, and their paths.
  const std::vector<LoraLinear>& adapted() const { return adapted_; }
  const std::vector<std::string>& adapted_names() const { return adapted_names_; }

 private:
  MiniLm base_{nullptr};
  torch::nn::Linear proj_{nullptr};
  std::vector<LoraLinear> adapted_;
  std::vector<std::string> adapted_names_;
  int64_t embed_dim_ = 0;
  int64_t pad_id_ = 0;
};

// WordPiece ids of `text` ([CLS] ... [SEP], at most max_len) padded with [PAD] to max_len.
std::vector<int64_t> encode_padded(const modalities::WordPieceTokenizer& tok,
                                   const std::string& text, int64_t max_len);

}  // namespace mmfl::fusion
