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

#include "fusion/lora/options.h"

namespace mmfl::fusion {

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

  // Cohort mode: the rows of the input belong to different clients, each with its own adapter,
  // computed in one pass by fusion::ops::multi_lora_linear over the shared frozen base.
  // A [C, r, in] and B [C, out, r] (r = this layer's rank, same device as the weight; the layer's
  // own lora_A / lora_B are not used meanwhile); offsets: C + 1 non-decreasing offsets into the
  // input's leading dimension (x [R, ..., in]: client c owns x[offsets[c] .. offsets[c+1]-1], e.g.
  // its sequences), offsets[0] = 0, offsets[C] = R. The update is scaled by this layer's alpha / r.
  // Adapter dropout is not supported in cohort mode: forward() throws while training with
  // dropout > 0 (in eval mode dropout is the identity and cohort mode runs).
  void set_cohort(torch::Tensor A, torch::Tensor B, std::vector<int64_t> offsets);
  void clear_cohort();
  bool has_cohort() const { return cohort_A_.defined(); }

  int64_t in_features, out_features;
  torch::Tensor weight, bias;    // the base
  torch::Tensor lora_A, lora_B;  // [r, in], [out, r]; undefined without an adapter
  double scale = 0.0;            // alpha / r
  double dropout = 0.0;

 private:
  torch::Tensor forward_cohort(const torch::Tensor& x);
  torch::Tensor cohort_A_, cohort_B_;  // [C, r, in], [C, out, r]; undefined outside cohort mode
  std::vector<int64_t> cohort_offsets_;
};
TORCH_MODULE(LoraLinear);

// Freezes every parameter of `root` (requires_grad false), then adds an adapter to each
// LoraLinear under it that the targets choose. Returns their paths. A pattern that chooses no
// layer is an error listing the layers there are.
std::vector<std::string> apply_lora(torch::nn::Module& root, const LoraOptions& options);

// The adapters' parameters (lora_A, lora_B of every adapted layer), in module order.
std::vector<torch::Tensor> lora_parameters(torch::nn::Module& root);

// The LoraLinear layers under `root` (itself included) that carry an adapter, in module order (the
// order of lora_parameters()).
std::vector<LoraLinear> adapted_layers(torch::nn::Module& root);

// merge() on every adapted layer under `root`.
void merge_lora(torch::nn::Module& root);

}  // namespace mmfl::fusion
