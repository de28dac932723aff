// Cross entropy of queries against a feature bank, and the CreamFL representation ensemble built
// on it: tiles of queries against tiles of the bank with an online log-sum-exp, memory
// O((B + N) * D), never the B x N logits. The InfoNCE row pass is the same operation.
#pragma once

#include <cstdint>

#include "mmfl/kernels/common.h"
#include "mmfl/kernels/cpu.h"

namespace mmfl::kernels {

// How the ensemble weighs clients per public sample.
enum class EnsembleWeighting {
  kContrastive,  // CreamFL: softmax over clients of the global-local contrast score
  kMean,         // plain average (the ablation)
};

// Per-row cross entropy with logits[i, m] = <q_i, bank_m> / tau:
//   lse[i]  = logsumexp_m logits[i, m]
//   loss[i] = lse[i] - logits[i, target[i]]
// Backward, with g = grad_loss and P = softmax of the logits rows:
//   grad_q[i]    = g[i] / tau * sum_m (P[i, m] - [m == target[i]]) bank_m
//   grad_bank[m] = 1 / tau * sum_i g[i] (P[i, m] - [m == target[i]]) q_i   (skipped when null)
// Requirements: b >= 1, n >= 1, d >= 1, 0 <= target[i] < n, tau > 0 (checked on the CPU path).
namespace ref {

void bank_ce_forward(const float* q,         // [b, d] row-major
                     const float* bank,      // [n, d] row-major
                     const int64_t* target,  // [b]
                     int64_t b, int64_t n, int64_t d,
                     const float* tau,  // [1]
                     float* lse,        // [b]
                     float* loss);      // [b]

void bank_ce_backward(const float* q,         // [b, d]
                      const float* bank,      // [n, d]
                      const int64_t* target,  // [b]
                      int64_t b, int64_t n, int64_t d,
                      const float* tau,        // [1]
                      const float* lse,        // [b] from bank_ce_forward
                      const float* grad_loss,  // [b]
                      float* grad_q,           // [b, d]
                      float* grad_bank);       // [n, d] or nullptr

// CreamFL's ensemble of K clients' representations of the same n public samples:
//   score[c, j]   = log softmax_m (<local[c, j], bank[m]> / tau) [j]   (global-local contrast)
//   weights[c, j] = softmax_c score[c, j]          (kMean: 1 / k)
//   out[j]        = sum_c weights[c, j] * local[c, j]
// `bank` holds the global model's features of the OTHER modality, row j for public sample j.
void creamfl_ensemble(const float* local,  // [k, n, d] row-major
                      const float* bank,   // [n, d]
                      int64_t k, int64_t n, int64_t d,
                      const float* tau,  // [1]
                      EnsembleWeighting weighting,
                      float* weights,  // [k, n]
                      float* out);     // [n, d]

}  // namespace ref

namespace cpu {

// The fast path: as namespace ref, in fp32 tiles with vectorized loops, on the threads of
// ctx.parallel_for; bit-identical for any number of threads.

void bank_ce_forward(const float* q,         // [b, d] row-major
                     const float* bank,      // [n, d] row-major
                     const int64_t* target,  // [b]
                     int64_t b, int64_t n, int64_t d,
                     const float* tau,  // [1]
                     float* lse,        // [b]
                     float* loss,       // [b]
                     const Context& ctx = {});

void bank_ce_backward(const float* q,         // [b, d]
                      const float* bank,      // [n, d]
                      const int64_t* target,  // [b]
                      int64_t b, int64_t n, int64_t d,
                      const float* tau,        // [1]
                      const float* lse,        // [b] from bank_ce_forward
                      const float* grad_loss,  // [b]
                      float* grad_q,           // [b, d]
                      float* grad_bank,        // [n, d] or nullptr
                      const Context& ctx = {});

// CreamFL's ensemble of K clients' representations of the same n public samples:
//   score[c, j]   = log softmax_m (<local[c, j], bank[m]> / tau) [j]   (global-local contrast)
//   weights[c, j] = softmax_c score[c, j]          (kMean: 1 / k)
//   out[j]        = sum_c weights[c, j] * local[c, j]
// `bank` holds the global model's features of the OTHER modality, row j for public sample j.
void creamfl_ensemble(const float* local,  // [k, n, d] row-major
                      const float* bank,   // [n, d]
                      int64_t k, int64_t n, int64_t d,
                      const float* tau,  // [1]
                      EnsembleWeighting weighting,
                      float* weights,  // [k, n]
                      float* out,      // [n, d]
                      const Context& ctx = {});

}  // namespace cpu

// Device versions: every pointer is device memory; asynchronous on `stream`; deterministic.
// creamfl_ensemble scores all k clients' queries against the one bank in one launch, then fuses
// the per-sample softmax over clients with the weighted sum. (The SIMT emulator's build of the
// same .cu, for tests, is declared in mmfl/simt/kernels.h.)
// Targets are not checked on the device (that would need a synchronization): a target outside
// [0, n) gives its row a NaN loss. Few query rows against a long bank (a batch against the public
// set) split the bank across blocks, with a small workspace from cudaMallocAsync on `stream`.
namespace cuda {
#include "mmfl/kernels/device/bank_ce.inc"
}  // namespace cuda

}  // namespace mmfl::kernels
