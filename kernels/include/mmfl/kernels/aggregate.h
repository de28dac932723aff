// Weighted aggregation of client updates (FedAvg's reduction): out = sum_k w_k * update_k, and a
// variant that skips clients whose update holds a NaN or an infinity. CPU reference, CUDA and the
// emulated build of the CUDA code share the signatures below (the device ones add a stream).
#pragma once

#include <cstdint>

#include "mmfl/kernels/common.h"
#include "mmfl/kernels/cpu.h"

namespace mmfl::kernels {

// Width of the running sums. kFloat64 keeps FedAvg over many clients independent of their order
// to ~1e-16 relative; kFloat32 is faster on GPUs with slow fp64.
enum class Accumulator { kFloat32, kFloat64 };

namespace ref {

// out[j] = sum_k weights[k] * updates[k * n + j]   (FedAvg's reduction)
void weighted_sum(const float* updates,  // [num_clients, n] row-major, contiguous
                  const float* weights,  // [num_clients]
                  int64_t num_clients, int64_t n,
                  float* out,  // [n]
                  Accumulator acc);

// Like weighted_sum, but clients whose update holds a NaN or +-Inf are skipped: bad[k] = 1 for
// them (0 otherwise), and the weights of the remaining clients are rescaled so that they sum to
// the sum of all weights (so normalized FedAvg weights stay normalized). If the remaining weights
// sum to 0 they are not rescaled. If every client is skipped, out is filled with 0. Returns the
// number of clients skipped.
int64_t weighted_sum_finite(const float* updates,  // [num_clients, n] row-major, contiguous
                            const float* weights,  // [num_clients]
                            int64_t num_clients, int64_t n,
                            float* out,    // [n]
                            uint8_t* bad,  // [num_clients]
                            Accumulator acc);

}  // namespace ref

namespace cpu {

// The fast path: as namespace ref, in fp32 tiles with vectorized loops, on the threads of
// ctx.parallel_for; bit-identical for any number of threads.

// out[j] = sum_k weights[k] * updates[k * n + j]   (FedAvg's reduction)
void weighted_sum(const float* updates,  // [num_clients, n] row-major, contiguous
                  const float* weights,  // [num_clients]
                  int64_t num_clients, int64_t n,
                  float* out,  // [n]
                  Accumulator acc, const Context& ctx = {});

// Like weighted_sum, but clients whose update holds a NaN or +-Inf are skipped: bad[k] = 1 for
// them (0 otherwise), and the weights of the remaining clients are rescaled so that they sum to
// the sum of all weights (so normalized FedAvg weights stay normalized). If the remaining weights
// sum to 0 they are not rescaled. If every client is skipped, out is filled with 0. Returns the
// number of clients skipped.
int64_t weighted_sum_finite(const float* updates,  // [num_clients, n] row-major, contiguous
                            const float* weights,  // [num_clients]
                            int64_t num_clients, int64_t n,
                            float* out,    // [n]
                            uint8_t* bad,  // [num_clients]
                            Accumulator acc, const Context& ctx = {});

// As weighted_sum, with client k's update at rows[k] ([n] each, anywhere in memory), so that
// updates held apart need no stacked copy. The same bits as weighted_sum on the stacked rows.
void weighted_sum_rows(const float* const* rows,  // [num_clients] pointers to [n]
                       const float* weights,      // [num_clients]
                       int64_t num_clients, int64_t n,
                       float* out,  // [n]
                       Accumulator acc, const Context& ctx = {});

// The fp64 running sums of weighted_sum_rows (kFloat64) before their rounding to fp32: partial
// sums to be reduced further (across MPI ranks) and rounded once at the end.
void weighted_sum_rows_f64(const float* const* rows, const float* weights, int64_t num_clients,
                           int64_t n,
                           double* out,  // [n]
                           const Context& ctx = {});

// True when all n values are finite (one vectorized pass).
bool all_finite(const float* x, int64_t n);

}  // namespace cpu

namespace cuda {
#include "mmfl/kernels/device/aggregate.inc"
}  // namespace cuda

}  // namespace mmfl::kernels
