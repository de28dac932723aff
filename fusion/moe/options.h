// The options of the modality-aware MoE transformer (config section `moe:`), without LibTorch:
// the config parser (and its fuzz target) needs only these.
#pragma once

#include <cstdint>

namespace mmfl::fusion {

// How the tokens of one modality are spread over that modality's experts.
enum class MoeRoutingKind {
  kExpertChoice,  // MoMa: each expert takes its top `capacity` tokens (sigmoid router, no aux loss)
  kTokenChoice,   // each token takes its top-k experts (softmax router, Switch balancing loss)
  kDense,         // one FFN for the modality (experts must be 1)
};

// Which FFN the transformer blocks hold.
enum class MoeFfnKind {
  kModality,  // an expert group per modality (the `image` and `text` options below)
  kShared,    // the baseline: one dense FFN that every token of either modality goes through
};

enum class MoeImpl {
  kFused,  // fusion::ops::moe_ffn (the kernels)
  kLoop,   // fusion::ops::moe_ffn_loop (LibTorch loop over experts, the baseline)
};

struct MoeGroupOptions {
  int64_t experts = 4;
  MoeRoutingKind routing = MoeRoutingKind::kExpertChoice;
  int64_t top_k = 1;  // token choice only
};

struct MoeOptions {
  int64_t d_model = 64;
  int64_t layers = 2;
  int64_t heads = 4;
  int64_t ffn = 128;  // hidden units of each expert (and of a dense FFN): equal active params
  int64_t patch = 7;  // image patches patch x patch (28x28 -> 16 patches of 7x7)
  MoeFfnKind ffn_kind = MoeFfnKind::kModality;
  MoeGroupOptions image, text;
  double balance_weight = 0.01;  // token choice: weight of the Switch load-balancing loss
  MoeImpl impl = MoeImpl::kFused;
  int64_t dump_round = 0;  // write that round's routing as .npy (0: off)
};

}  // namespace mmfl::fusion
