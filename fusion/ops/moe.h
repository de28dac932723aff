// LibTorch adapter of kernels/moe: mixture-of-experts routing (expert choice as in MoMa, token
// choice top-k) and the grouped expert FFN with its weighted combine back to token order, forward
// and backward. The model (fusion/moe) calls these once per modality group or once for all groups.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace mmfl::fusion::ops {

// Which slots each expert processes. A slot is one (token, expert) assignment; the slots of one
// expert are contiguous, in increasing token order.
struct MoeRouting {
  torch::Tensor order;           // [S] int64: the token (row of x) of each slot; grouped by expert
  std::vector<int64_t> offsets;  // E+1 non-decreasing, offsets[0]=0, offsets[E]=S: expert e owns
                                 // slots offsets[e]..offsets[e+1]-1
  torch::Tensor gate;            // [S] float32: each slot's weight; differentiable w.r.t. the
                                 // router logits (autograd)
};

// Expert choice (MoMa): logits [T, E] float32; every expert takes the `capacity` tokens with the
// highest sigmoid(logit) (ties to the lower token index; 1 <= capacity <= T); gate =
// sigmoid(logit[token, e]). Within an expert, slots are in increasing token order; S = E capacity.
// Tokens are ranked by the logit itself: sigmoid is increasing, so this is the same ranking in
// exact arithmetic, without fp32 sigmoid's ties (every logit above ~17 has sigmoid 1.0f).
MoeRouting route_expert_choice(const torch::Tensor& logits, int64_t capacity);

// Token choice: logits [T, E] float32; every token picks its top-k experts by logit (ties to the
// lower expert index; 1 <= k <= E); gate = softmax(logits[t])[e] of the chosen experts (not
// renormalized). Slots of one expert in increasing token order; S = T k.
MoeRouting route_token_choice(const torch::Tensor& logits, int64_t k);

// Several routings as one, so that all of them run in one moe_ffn call (MoMa: one routing per
// modality group over that group's tokens). Part i's token indices are mapped through
// token_maps[i] (int64 [T_i] on the routing's device: the row of x of part i's token j; an
// undefined tensor keeps them as they are), and its experts follow part i-1's: experts
// E_0 + ... + E_{i-1} .. of the result. Gates are concatenated (autograd flows through).
MoeRouting concat_routings(const std::vector<MoeRouting>& parts,
                           const std::vector<torch::Tensor>& token_maps);

// y[t] = sum over slots s with order[s] == t of gate[s] * (w2[e] gelu(w1[e] x[t] + b1[e]) + b2[e])
// where e is the expert owning slot s. x [T, d], w1 [E, f, d], b1 [E, f], w2 [E, d, f], b2 [E, d],
// all float32 on one device (CPU or CUDA); gelu is the exact (erf) GELU, torch::gelu's default.
// Differentiable in x, gate, w1, b1, w2, b2. Tokens no slot names get y = 0.
torch::Tensor moe_ffn(const torch::Tensor& x, const MoeRouting& r, const torch::Tensor& w1,
                      const torch::Tensor& b1, const torch::Tensor& w2, const torch::Tensor& b2);

// The baseline: the same function as a LibTorch loop over experts with index_select / index_add
// (autograd through LibTorch). Also the oracle of the tests.
torch::Tensor moe_ffn_loop(const torch::Tensor& x, const MoeRouting& r, const torch::Tensor& w1,
                           const torch::Tensor& b1, const torch::Tensor& w2,
                           const torch::Tensor& b2);

}  // namespace mmfl::fusion::ops
