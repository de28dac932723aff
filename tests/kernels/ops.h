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

}  // namespace mmfl::test::ops
