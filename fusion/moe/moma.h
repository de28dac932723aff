// The early-fusion transformer of MoMa (Lin et al., 2024) at CPU scale: image patch tokens and
// caption tokens pass through pre-norm blocks whose FFN is a modality-aware mixture of experts.
// Every token goes only to its modality's expert group; one MoE call serves both groups. Image
// and text are separate sequences for attention (no cross-modal attention), so a pooled image
// feature carries no caption information and retrieval on uni-modal encodings stays honest.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/types.h>

#include <memory>
#include <string>
#include <vector>

#include "fusion/moe/options.h"
#include "modalities/image/encoders.h"

namespace mmfl::fusion {

std::string to_string(MoeRoutingKind k);
std::string to_string(MoeFfnKind k);
std::string to_string(MoeImpl k);

// What one group's router did in one MoE call (for moe.dump_round and the tests).
struct MoeGroupTrace {
  std::string group;             // "image", "text" or "shared"
  torch::Tensor scores;          // [T_g, E_g] float: sigmoid (expert choice) or softmax (token
                                 // choice) of the router logits; undefined for dense
  torch::Tensor order;           // [S_g] int64: group-local token of each slot, grouped by expert
  std::vector<int64_t> offsets;  // E_g + 1
};

struct MoeLayerOutput {
  torch::Tensor y;              // [T, d]
  torch::Tensor aux;            // scalar: Switch load-balancing loss of token-choice groups
  std::vector<int64_t> tokens;  // per expert (all groups, in expert order): slots it processed
  std::vector<MoeGroupTrace> trace;
};

// One modality-aware MoE FFN: expert weights of every group stacked in one tensor per matrix
// ([E, f, d] etc., image experts first), so that one moe_ffn call serves every group.
class ModalityMoe : public torch::nn::Module {
 public:
  explicit ModalityMoe(const MoeOptions& o);
  // x [T, d]; rows[g] int64 [T_g]: increasing rows of x that belong to group g (groups in
  // group_names() order; every row in exactly one group).
  MoeLayerOutput forward(const torch::Tensor& x, const std::vector<torch::Tensor>& rows,
                         bool trace = false);

  const std::vector<std::string>& group_names() const { return names_; }
  int64_t group_begin(size_t g) const { return begin_[g]; }  // first expert of group g
  int64_t group_experts(size_t g) const { return begin_[g + 1] - begin_[g]; }
  int64_t experts() const { return begin_.back(); }
  torch::nn::Linear router(size_t g) const { return routers_[g]; }  // null for dense groups

  torch::Tensor w1, b1, w2, b2;  // [E, f, d], [E, f], [E, d, f], [E, d]

 private:
  MoeImpl impl_;
  std::vector<std::string> names_;
  std::vector<MoeGroupOptions> groups_;
  std::vector<int64_t> begin_;  // groups + 1 expert offsets
  std::vector<torch::nn::Linear> routers_;
};

struct MomaOutput {
  torch::Tensor image, text;    // pooled and projected features [B, embed_dim] (undefined:
                                // modality not given)
  torch::Tensor aux;            // scalar balancing loss summed over layers
  std::vector<int64_t> tokens;  // [layers x experts] row-major: slots each expert processed
  std::vector<std::vector<MoeGroupTrace>> trace;  // per layer, when asked for
};

// One slice of a parameter: the whole tensor (row < 0) or its row `row` (one expert's weights).
struct ParamSlice {
  torch::Tensor param;
  int64_t row = -1;
  torch::Tensor view() const { return row < 0 ? param : param[row]; }
};
// A named set of parameters that travels as one dense group.
struct ParamGroup {
  std::string name;
  std::vector<ParamSlice> slices;
  int64_t numel() const;
};

class MomaModel : public torch::nn::Module {
 public:
  // Images [B, 1, height, width] cut into patch x patch patches; tokens [B, max_tokens] with 0
  // as padding (ignored by attention, pooling and the experts).
  MomaModel(const MoeOptions& o, int64_t vocab, int64_t max_tokens, int64_t height, int64_t width,
            int64_t embed_dim);
  // Either input may be undefined (a uni-modal client); both go through each MoE layer in one
  // call. `trace`: record every layer's routing.
  MomaOutput forward(const torch::Tensor& images, const torch::Tensor& tokens, bool trace = false);

  // Parameter groups: "shared" (attention, norms), "image" (patch embedding, image position
  // embedding, image projection, image routers), "text" (likewise) and one group per expert
  // "moe.<layer>.<group>.<expert>". `heads` adds the class heads given to image and text.
  std::vector<ParamGroup> groups(const std::shared_ptr<torch::nn::Module>& image_head,
                                 const std::shared_ptr<torch::nn::Module>& text_head) const;

  const MoeOptions& options() const { return o_; }
  int64_t embed_dim() const { return embed_dim_; }
  const ModalityMoe& moe(size_t layer) const { return *blocks_[layer].moe; }

 private:
  struct Block {
    torch::nn::LayerNorm ln1{nullptr}, ln2{nullptr};
    torch::nn::Linear qkv{nullptr}, out{nullptr};
    std::shared_ptr<ModalityMoe> moe;
  };
  torch::Tensor attend(Block& b, const torch::Tensor& h, const torch::Tensor& key_mask);

  MoeOptions o_;
  int64_t embed_dim_, height_, width_, max_tokens_;
  torch::nn::Linear patch_embed_{nullptr}, image_proj_{nullptr}, text_proj_{nullptr};
  torch::nn::Embedding text_embed_{nullptr};
  torch::Tensor image_pos_, text_pos_;
  std::vector<Block> blocks_;
  torch::nn::LayerNorm final_ln_{nullptr};
};

// One modality's view of a MomaModel as an Encoder (the engine's towers and evaluation).
class MomaEncoder : public modalities::Encoder {
 public:
  enum class Side { kImage, kText };
  MomaEncoder(std::shared_ptr<MomaModel> model, Side side);
  torch::Tensor forward(const torch::Tensor& x) override;
  int64_t embed_dim() const override { return model_->embed_dim(); }

 private:
  std::shared_ptr<MomaModel> model_;
  Side side_;
};

}  // namespace mmfl::fusion
