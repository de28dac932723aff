// LoRA (Hu et al., 2021): a frozen linear layer W plus a trainable low-rank update,
//   y = x W^T + b + (alpha / r) * dropout(x) A^T B^T,   A: [r, in], B: [out, r],
// with B initialised to zero so that the adapted model starts equal to its base. Models built for
// adaptation (fusion/lora/minilm.h) use LoraLinear for their linear layers; apply_lora() then
// gives adapters to the layers whose names match the config's patterns and freezes the rest.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace mmfl::fusion {

struct LoraOptions {
  int64_t rank = 8;
  double alpha = 16.0;   // the update is scaled by alpha / rank
  double dropout = 0.0;  // on the adapter's input only (the base path sees x unchanged)
  // Which layers get adapters, matched against each LoraLinear's module path
  // ("encoder.layer.0.attention.self.query"): a pattern with '*' is a glob over the whole path
  // ('*' spans dots), a plain name matches the path or its last components ("query",
  // "self.query"); "all-linear" (alone) takes every LoraLinear.
  std::vector<std::string> targets = {"query", "value"};
  uint64_t seed = 0;  // A's initialization, per layer from (seed, layer index)
};

// A linear layer with parameters `weight` [out, in] and `bias` [out] (the names a checkpoint
// uses) that can carry a LoRA adapter (`lora_A`, `lora_B`). Without one it is torch::nn::Linear.
class LoraLinearImpl : public torch::nn::Module {
 public:
  LoraLinearImpl(int64_t in_features, int64_t out_features, bool bias = true);

  torch::Tensor forward(const torch::Tensor& x);  // [..., in] -> [..., out]

  // Adds an adapter of this rank: A uniform in +-1/sqrt(in) (what nn.Linear and PEFT use), drawn
  // from `seed`; B zero. Throws if the layer has one already or rank is out of [1, min(in, out)].
  void add_adapter(int64_t rank, double alpha, double dropout, uint64_t seed);
  bool has_adapter() const { return lora_A.defined(); }
  // W + (alpha / r) B A: the weight of a plain linear layer that computes the same function.
  torch::Tensor merged_weight() const;
  // Folds the adapter into the base weight (W <- W + (alpha / r) B A) and sets B to zero, so the
  // function is unchanged and the adapter trains on from the merged base (FLoRA-style rounds).
  void merge();

  int64_t in_features, out_features;
  torch::Tensor weight, bias;    // the base
  torch::Tensor lora_A, lora_B;  // [r, in], [out, r]; undefined without an adapter
  double scale = 0.0;            // alpha / r
  double dropout = 0.0;
};
TORCH_MODULE(LoraLinear);

// Checks the options (rank >= 1, alpha > 0, dropout in [0, 1), a valid target list), throwing
// with `key_prefix` + the option's name ("lora.rank") so that config errors name the key.
void validate_lora_options(const LoraOptions& o, const std::string& key_prefix = "lora.");

// Whether the module path `name` is chosen by `pattern` (see LoraOptions::targets).
bool lora_target_matches(const std::string& name, const std::string& pattern);

// Freezes every parameter of `root` (requires_grad false), then adds an adapter to each
// LoraLinear under it that the targets choose. Returns their paths. A pattern that chooses no
// layer is an error listing the layers there are.
std::vector<std::string> apply_lora(torch::nn::Module& root, const LoraOptions& options);

// The adapters' parameters (lora_A, lora_B of every adapted layer), in module order.
std::vector<torch::Tensor> lora_parameters(torch::nn::Module& root);

// merge() on every adapted layer under `root`.
void merge_lora(torch::nn::Module& root);

}  // namespace mmfl::fusion
