// Every op of kernels/ on every backend: the one place that maps a Backend to an implementation
// (ref and cpu take host pointers, cpu runs on cpu_test_context(); simt and cuda take the
// backend's device pointers and run on the default stream). Tests call these, never a backend's
// namespace, so a new backend is added here once.
#pragma once

#include <cstdint>

#include "backend.h"
#include "mmfl/kernels/aggregate.h"
#include "mmfl/kernels/bank_ce.h"
#include "mmfl/kernels/infonce.h"
#include "mmfl/kernels/moe.h"
#include "mmfl/kernels/multi_lora.h"
#include "mmfl/kernels/sparse.h"

namespace mmfl::test::ops {

// The GEMM-shaped ops take the device precision last; the host backends (ref, cpu) compute in
// fp32 or wider whatever it says.
using kernels::Precision;

void infonce_forward(Backend backend, const float* img, const float* txt, int64_t n, int64_t d,
                     const float* tau, float* loss, float* lse_img, float* lse_txt,
                     Precision precision = Precision::kFp32);
void infonce_backward(Backend backend, const float* img, const float* txt, int64_t n, int64_t d,
                      const float* tau, const float* lse_img, const float* lse_txt,
                      const float* grad_loss, float* grad_img, float* grad_txt, float* grad_tau,
                      Precision precision = Precision::kFp32);

void bank_ce_forward(Backend backend, const float* q, const float* bank, const int64_t* target,
                     int64_t b, int64_t n, int64_t d, const float* tau, float* lse, float* loss,
                     Precision precision = Precision::kFp32);
void bank_ce_backward(Backend backend, const float* q, const float* bank, const int64_t* target,
                      int64_t b, int64_t n, int64_t d, const float* tau, const float* lse,
                      const float* grad_loss, float* grad_q, float* grad_bank,
                      Precision precision = Precision::kFp32);
void creamfl_ensemble(Backend backend, const float* local, const float* bank, int64_t k, int64_t n,
                      int64_t d, const float* tau, kernels::EnsembleWeighting weighting,
                      float* weights, float* out, Precision precision = Precision::kFp32);

void weighted_sum(Backend backend, const float* updates, const float* weights, int64_t clients,
                  int64_t n, float* out, kernels::Accumulator acc);
// The host backends return the number skipped; the device ones leave it to sum(bad): -1.
int64_t weighted_sum_finite(Backend backend, const float* updates, const float* weights,
                            int64_t clients, int64_t n, float* out, uint8_t* bad,
                            kernels::Accumulator acc);

void multi_lora_forward(Backend backend, const float* x, const float* a, const float* b,
                        const int64_t* offsets, const kernels::MultiLoraShape& shape, float scale,
                        float* h, float* y);
void multi_lora_backward(Backend backend, const float* x, const float* a, const float* b,
                         const int64_t* offsets, const kernels::MultiLoraShape& shape, float scale,
                         const float* h, const float* gy, float* g, float* gx, float* ga,
                         float* gb);
void topk_by_magnitude(Backend backend, const float* x, int64_t rows, int64_t n, int64_t k,
                       int32_t* indices, float* values, float* residual);
void sparse_weighted_sum(Backend backend, const int32_t* indices, const float* values,
                         const float* weights, int64_t rows, int64_t k, int64_t n, float* out,
                         kernels::Accumulator acc);

void moe_route_expert_choice(Backend backend, const float* logits, int64_t tokens, int64_t experts,
                             int64_t capacity, int64_t* order, int64_t* gate_index);
void moe_route_token_choice(Backend backend, const float* logits, int64_t tokens, int64_t experts,
                            int64_t k, int64_t* order, int64_t* gate_index, int64_t* offsets);
void moe_token_slots(Backend backend, const int64_t* order, int64_t slots, int64_t tokens,
                     int64_t* token_offsets, int64_t* token_slots);
void moe_experts_forward(Backend backend, const float* x, const int64_t* order,
                         const int64_t* offsets, const float* w1, const float* b1, const float* w2,
                         const float* b2, const kernels::MoeShape& shape, float* x_slots,
                         float* pre, float* act, float* out);
void moe_combine(Backend backend, const float* src, const float* weight,
                 const int64_t* token_offsets, const int64_t* token_slots,
                 const kernels::MoeShape& shape, float* y);
void moe_experts_backward(Backend backend, const int64_t* order, const int64_t* offsets,
                          const float* gate, const float* w1, const float* w2,
                          const kernels::MoeShape& shape, const float* x_slots, const float* pre,
                          const float* act, const float* out, const float* gy, float* grad_gate,
                          float* grad_out, float* grad_pre, float* grad_x_slots, float* gw1,
                          float* gb1, float* gw2, float* gb2);

}  // namespace mmfl::test::ops
