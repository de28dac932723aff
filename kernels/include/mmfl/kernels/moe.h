// Mixture of experts (MoMa's modality-aware experts, and token-choice MoE): the router's top-k
// selections, the permutation between token order and slot order, all experts' FFNs in one call
// (a grouped GEMM over the experts' slot ranges) and the weighted combine back to token order,
// forward and backward. A slot is one (token, expert) assignment; the slots of expert e are
// offsets[e] .. offsets[e+1]-1, in increasing token order. The router's softmax / sigmoid and
// their gradients stay with the caller (LibTorch autograd through a gather of gate_index).
#pragma once

#include <cstdint>

#include "mmfl/kernels/common.h"
#include "mmfl/kernels/cpu.h"

namespace mmfl::kernels {

// Sizes of one expert-FFN call.
struct MoeShape {
  int64_t tokens;   // T >= 0, rows of x and y
  int64_t experts;  // E >= 1
  int64_t slots;    // S >= 0, all experts' slots together
  int64_t model;    // d >= 1, features of x and y
  int64_t hidden;   // f >= 1, the experts' hidden width
};

// Ranking of the routers: by logit, larger first, ties to the lower index (token for expert
// choice, expert for token choice); -0 and +0 are equal. Logits must be finite (the adapter
// checks; the kernels do not, and a NaN ranks by its bit pattern).

// The FFN of slot s of expert e, with t = order[s] (gelu: the exact erf GELU):
//   x_slots[s] = x[t]                          [S, d]  the gather
//   pre[s]     = w1[e] x[t] + b1[e]            [S, f]
//   act[s]     = gelu(pre[s])                  [S, f]
//   out[s]     = w2[e] act[s] + b2[e]          [S, d]
// and the combine y[t] = sum over the slots s of t (increasing s) of gate[s] out[s].
// Backward from gy = dL/dy:
//   grad_gate[s]   = <gy[t], out[s]>
//   grad_out[s]    = gate[s] gy[t]                       [S, d]
//   grad_pre[s]    = (w2[e]^T grad_out[s]) * gelu'(pre[s])   [S, f]
//   grad_x_slots[s] = w1[e]^T grad_pre[s]                [S, d], combined into dx (weight 1)
//   gw2[e] = sum_s grad_out[s] act[s]^T   gb2[e] = sum_s grad_out[s]
//   gw1[e] = sum_s grad_pre[s] x_slots[s]^T   gb1[e] = sum_s grad_pre[s]
// (sums over the slots of e; an expert without slots gets zero gradients).

namespace ref {

// Expert choice: every expert takes its `capacity` top tokens (1 <= capacity <= tokens), written
// in increasing token order: slots e capacity .. (e+1) capacity - 1 belong to expert e.
void moe_route_expert_choice(const float* logits,  // [tokens, experts]
                             int64_t tokens, int64_t experts, int64_t capacity,
                             int64_t* order,        // [experts * capacity] written: the tokens
                             int64_t* gate_index);  // [experts * capacity] written: t experts + e

// Token choice: every token takes its top `k` experts (1 <= k <= experts); the tokens x k slots
// grouped by expert, each expert's in increasing token order.
void moe_route_token_choice(const float* logits,  // [tokens, experts]
                            int64_t tokens, int64_t experts, int64_t k,
                            int64_t* order,       // [tokens * k] written
                            int64_t* gate_index,  // [tokens * k] written: t experts + e
                            int64_t* offsets);    // [experts + 1] written

// The inverse of the slot -> token map: token t's slots are
// token_slots[token_offsets[t] .. token_offsets[t+1]-1], in increasing slot order.
void moe_token_slots(const int64_t* order,  // [slots], each in [0, tokens)
                     int64_t slots, int64_t tokens,
                     int64_t* token_offsets,  // [tokens + 1] written
                     int64_t* token_slots);   // [slots] written

// x_slots, pre, act and out as above (all written).
void moe_experts_forward(const float* x,          // [T, d]
                         const int64_t* order,    // [S]
                         const int64_t* offsets,  // [E + 1]
                         const float* w1,         // [E, f, d]
                         const float* b1,         // [E, f]
                         const float* w2,         // [E, d, f]
                         const float* b2,         // [E, d]
                         const MoeShape& shape,
                         float* x_slots,  // [S, d]
                         float* pre,      // [S, f]
                         float* act,      // [S, f]
                         float* out);     // [S, d]

// y[t] = sum over t's slots s, in increasing s, of weight[s] src[s] (weight null: 1); 0 for a
// token without slots. The forward's combine (src = out, weight = gate) and dx (src =
// grad_x_slots, weight null).
void moe_combine(const float* src,              // [S, d]
                 const float* weight,           // [S] or null
                 const int64_t* token_offsets,  // [T + 1] from moe_token_slots
                 const int64_t* token_slots,    // [S]
                 const MoeShape& shape,
                 float* y);  // [T, d] written

// The backward above. grad_x_slots may be null (x needs no gradient).
void moe_experts_backward(const int64_t* order,    // [S]
                          const int64_t* offsets,  // [E + 1]
                          const float* gate,       // [S]
                          const float* w1,         // [E, f, d]
                          const float* w2,         // [E, d, f]
                          const MoeShape& shape,
                          const float* x_slots,  // [S, d] from the forward
                          const float* pre,      // [S, f] from the forward
                          const float* act,      // [S, f] from the forward
                          const float* out,      // [S, d] from the forward
                          const float* gy,       // [T, d]
                          float* grad_gate,      // [S] written
                          float* grad_out,       // [S, d] written
                          float* grad_pre,       // [S, f] written
                          float* grad_x_slots,   // [S, d] written, or null
                          float* gw1,            // [E, f, d] written
                          float* gb1,            // [E, f] written
                          float* gw2,            // [E, d, f] written
                          float* gb2);           // [E, d] written

}  // namespace ref

namespace cpu {

// The fast path: as namespace ref, on the threads of ctx.parallel_for, the GEMMs through ctx.gemm
// (or the tile GEMM; cpu.h). Every output has one owning task and a fixed summation order, so the
// results are bit-identical for any number of threads.
void moe_route_expert_choice(const float* logits, int64_t tokens, int64_t experts, int64_t capacity,
                             int64_t* order, int64_t* gate_index, const Context& ctx = {});
void moe_route_token_choice(const float* logits, int64_t tokens, int64_t experts, int64_t k,
                            int64_t* order, int64_t* gate_index, int64_t* offsets,
                            const Context& ctx = {});
void moe_token_slots(const int64_t* order, int64_t slots, int64_t tokens, int64_t* token_offsets,
                     int64_t* token_slots, const Context& ctx = {});
void moe_experts_forward(const float* x, const int64_t* order, const int64_t* offsets,
                         const float* w1, const float* b1, const float* w2, const float* b2,
                         const MoeShape& shape, float* x_slots, float* pre, float* act, float* out,
                         const Context& ctx = {});
void moe_combine(const float* src, const float* weight, const int64_t* token_offsets,
                 const int64_t* token_slots, const MoeShape& shape, float* y,
                 const Context& ctx = {});
void moe_experts_backward(const int64_t* order, const int64_t* offsets, const float* gate,
                          const float* w1, const float* w2, const MoeShape& shape,
                          const float* x_slots, const float* pre, const float* act,
                          const float* out, const float* gy, float* grad_gate, float* grad_out,
                          float* grad_pre, float* grad_x_slots, float* gw1, float* gb1, float* gw2,
                          float* gb2, const Context& ctx = {});

}  // namespace cpu

namespace cuda {
#include "mmfl/kernels/device/moe.inc"
}  // namespace cuda

}  // namespace mmfl::kernels
