// The backend switch of every op (see ops.h).
#include "ops.h"

#include "mmfl/error.h"
#include "mmfl/simt/kernels.h"

namespace mmfl::test::ops {

#if defined(MMFL_TEST_HAVE_CUDA)
#define MMFL_TEST_CUDA_CASE(fn, ...) \
  case Backend::kCuda:               \
    return kernels::cuda::fn(__VA_ARGS__);
#else
#define MMFL_TEST_CUDA_CASE(fn, ...)
#endif

// One switch for a void op: the host backends take the arguments (cpu adds its context), the
// device backends add `device_extra` (the stream, after the precision for the GEMM-shaped ops).
#define MMFL_TEST_SWITCH(backend, fn, device_extra, ...)                 \
  switch (backend) {                                                     \
    case Backend::kRef:                                                  \
      return kernels::ref::fn(__VA_ARGS__);                              \
    case Backend::kCpu:                                                  \
      return kernels::cpu::fn(__VA_ARGS__, cpu_test_context());          \
    case Backend::kSimt:                                                 \
      return kernels::simt::fn(__VA_ARGS__, device_extra);               \
      MMFL_TEST_CUDA_CASE(fn, __VA_ARGS__, device_extra)                 \
    default:                                                             \
      MMFL_FAIL("backend ", backend_name(backend), " is not available"); \
  }
#define MMFL_TEST_DISPATCH(backend, fn, ...) MMFL_TEST_SWITCH(backend, fn, nullptr, __VA_ARGS__)
#define MMFL_TEST_DISPATCH_GEMM(backend, precision, fn, ...) \
  MMFL_TEST_SWITCH(backend, fn, MMFL_TEST_PRECISION_AND_STREAM(precision), __VA_ARGS__)
#define MMFL_TEST_PRECISION_AND_STREAM(precision) precision, nullptr

void infonce_forward(Backend backend, const float* img, const float* txt, int64_t n, int64_t d,
                     const float* tau, float* loss, float* lse_img, float* lse_txt,
                     Precision precision) {
  MMFL_TEST_DISPATCH_GEMM(backend, precision, infonce_forward, img, txt, n, d, tau, loss, lse_img,
                          lse_txt)
}

void infonce_backward(Backend backend, const float* img, const float* txt, int64_t n, int64_t d,
                      const float* tau, const float* lse_img, const float* lse_txt,
                      const float* grad_loss, float* grad_img, float* grad_txt, float* grad_tau,
                      Precision precision) {
  MMFL_TEST_DISPATCH_GEMM(backend, precision, infonce_backward, img, txt, n, d, tau, lse_img,
                          lse_txt, grad_loss, grad_img, grad_txt, grad_tau)
}

void bank_ce_forward(Backend backend, const float* q, const float* bank, const int64_t* target,
                     int64_t b, int64_t n, int64_t d, const float* tau, float* lse, float* loss,
                     Precision precision) {
  MMFL_TEST_DISPATCH_GEMM(backend, precision, bank_ce_forward, q, bank, target, b, n, d, tau, lse,
                          loss)
}

void bank_ce_backward(Backend backend, const float* q, const float* bank, const int64_t* target,
                      int64_t b, int64_t n, int64_t d, const float* tau, const float* lse,
                      const float* grad_loss, float* grad_q, float* grad_bank,
                      Precision precision) {
  MMFL_TEST_DISPATCH_GEMM(backend, precision, bank_ce_backward, q, bank, target, b, n, d, tau, lse,
                          grad_loss, grad_q, grad_bank)
}

void creamfl_ensemble(Backend backend, const float* local, const float* bank, int64_t k, int64_t n,
                      int64_t d, const float* tau, kernels::EnsembleWeighting weighting,
                      float* weights, float* out, Precision precision) {
  MMFL_TEST_DISPATCH_GEMM(backend, precision, creamfl_ensemble, local, bank, k, n, d, tau,
                          weighting, weights, out)
}

void weighted_sum(Backend backend, const float* updates, const float* weights, int64_t clients,
                  int64_t n, float* out, kernels::Accumulator acc){
    MMFL_TEST_DISPATCH(backend, weighted_sum, updates, weights, clients, n, out, acc)}

int64_t weighted_sum_finite(Backend backend, const float* updates, const float* weights,
                            int64_t clients, int64_t n, float* out, uint8_t* bad,
                            kernels::Accumulator acc) {
  switch (backend) {
    case Backend::kRef:
      return kernels::ref::weighted_sum_finite(updates, weights, clients, n, out, bad, acc);
    case Backend::kCpu:
      return kernels::cpu::weighted_sum_finite(updates, weights, clients, n, out, bad, acc,
                                               cpu_test_context());
    case Backend::kSimt:
      kernels::simt::weighted_sum_finite(updates, weights, clients, n, out, bad, acc, nullptr);
      return -1;
    case Backend::kCuda:
#if defined(MMFL_TEST_HAVE_CUDA)
      kernels::cuda::weighted_sum_finite(updates, weights, clients, n, out, bad, acc, nullptr);
      return -1;
#endif
    default:
      MMFL_FAIL("backend ", backend_name(backend), " is not available");
  }
}

void multi_lora_forward(Backend backend, const float* x, const float* a, const float* b,
                        const int64_t* offsets, const kernels::MultiLoraShape& shape, float scale,
                        float* h, float* y) {
  MMFL_TEST_DISPATCH(backend, multi_lora_forward, x, a, b, offsets, shape, scale, h, y)
}

void multi_lora_backward(Backend backend, const float* x, const float* a, const float* b,
                         const int64_t* offsets, const kernels::MultiLoraShape& shape, float scale,
                         const float* h, const float* gy, float* g, float* gx, float* ga,
                         float* gb) {
  MMFL_TEST_DISPATCH(backend, multi_lora_backward, x, a, b, offsets, shape, scale, h, gy, g, gx, ga,
                     gb)
}

void topk_by_magnitude(Backend backend, const float* x, int64_t rows, int64_t n, int64_t k,
                       int32_t* indices, float* values, float* residual) {
  MMFL_TEST_DISPATCH(backend, topk_by_magnitude, x, rows, n, k, indices, values, residual)
}

void sparse_weighted_sum(Backend backend, const int32_t* indices, const float* values,
                         const float* weights, int64_t rows, int64_t k, int64_t n, float* out,
                         kernels::Accumulator acc) {
  MMFL_TEST_DISPATCH(backend, sparse_weighted_sum, indices, values, weights, rows, k, n, out, acc)
}

void moe_route_expert_choice(Backend backend, const float* logits, int64_t tokens, int64_t experts,
                             int64_t capacity, int64_t* order, int64_t* gate_index) {
  MMFL_TEST_DISPATCH(backend, moe_route_expert_choice, logits, tokens, experts, capacity, order,
                     gate_index)
}

void moe_route_token_choice(Backend backend, const float* logits, int64_t tokens, int64_t experts,
                            int64_t k, int64_t* order, int64_t* gate_index, int64_t* offsets) {
  MMFL_TEST_DISPATCH(backend, moe_route_token_choice, logits, tokens, experts, k, order, gate_index,
                     offsets)
}

void moe_token_slots(Backend backend, const int64_t* order, int64_t slots, int64_t tokens,
                     int64_t* token_offsets, int64_t* token_slots) {
  MMFL_TEST_DISPATCH(backend, moe_token_slots, order, slots, tokens, token_offsets, token_slots)
}

void moe_experts_forward(Backend backend, const float* x, const int64_t* order,
                         const int64_t* offsets, const float* w1, const float* b1, const float* w2,
                         const float* b2, const kernels::MoeShape& shape, float* x_slots,
                         float* pre, float* act, float* out) {
  MMFL_TEST_DISPATCH(backend, moe_experts_forward, x, order, offsets, w1, b1, w2, b2, shape,
                     x_slots, pre, act, out)
}

void moe_combine(Backend backend, const float* src, const float* weight,
                 const int64_t* token_offsets, const int64_t* token_slots,
                 const kernels::MoeShape& shape, float* y) {
  MMFL_TEST_DISPATCH(backend, moe_combine, src, weight, token_offsets, token_slots, shape, y)
}

void moe_experts_backward(Backend backend, const int64_t* order, const int64_t* offsets,
                          const float* gate, const float* w1, const float* w2,
                          const kernels::MoeShape& shape, const float* x_slots, const float* pre,
                          const float* act, const float* out, const float* gy, float* grad_gate,
                          float* grad_out, float* grad_pre, float* grad_x_slots, float* gw1,
                          float* gb1, float* gw2, float* gb2) {
  MMFL_TEST_DISPATCH(backend, moe_experts_backward, order, offsets, gate, w1, w2, shape, x_slots,
                     pre, act, out, gy, grad_gate, grad_out, grad_pre, grad_x_slots, gw1, gb1, gw2,
                     gb2)
}

}  // namespace mmfl::test::ops
