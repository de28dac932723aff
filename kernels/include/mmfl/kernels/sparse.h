// Sparse client updates (top-k sparsification with error feedback, FedPEFT / CELLM style): per
// client, the k entries of largest magnitude of its flat delta packed as (index, value) and the
// residual that error feedback carries to the next round; and the weighted sum of many clients'
// packets. CPU reference, fast CPU path, CUDA and the emulated build share the signatures below.
//
// Order of magnitudes: entries compare by key = (bits of x) & 0x7fffffff, larger first, ties to the
// lower index. For finite values this is |x| (and -0 ties +0); NaN ranks above +-Inf (so a NaN is
// always sent, never hidden in the residual, and shows in the aggregate), NaNs among themselves by
// their payload bits. Every backend selects exactly the same entries.
#pragma once

#include <cstdint>

#include "mmfl/kernels/aggregate.h"
#include "mmfl/kernels/common.h"
#include "mmfl/kernels/cpu.h"

namespace mmfl::kernels {

// The largest n a row may have: indices are int32.
constexpr int64_t kSparseMaxN = 2147483647;

namespace ref {

// For each row c of x: the k entries of largest magnitude (see above), written in ascending index
// order as indices[c, :] and values[c, :] (the original signed values), and
// residual[c, j] = x[c, j] for the entries not sent, 0 for the sent ones, so sent + residual == x
// exactly. 0 <= k <= n. residual may be x itself (in place: only the sent entries are zeroed).
void topk_by_magnitude(const float* x,  // [rows, n] row-major, contiguous
                       int64_t rows, int64_t n, int64_t k,
                       int32_t* indices,  // [rows, k]
                       float* values,     // [rows, k]
                       float* residual);  // [rows, n], or x

// out[j] = sum_c weights[c] * sum_i [indices[c, i] == j] values[c, i]: the clients' packets
// scattered and summed with their weights, clients added in order 0, 1, ... for every j.
// kFloat64: products and sums in double, rounded once at the end (order-independent to ~1e-16);
// kFloat32: products and sums in float. Each row's indices must be strictly ascending (as
// topk_by_magnitude writes them) and in [0, n): otherwise mmfl::Error naming the row and entry.
void sparse_weighted_sum(const int32_t* indices,  // [rows, k]
                         const float* values,     // [rows, k]
                         const float* weights,    // [rows]
                         int64_t rows, int64_t k, int64_t n,
                         float* out,  // [n]
                         Accumulator acc);

}  // namespace ref

namespace cpu {

// The fast path, same results bit for bit as namespace ref (the selection is exact, and the sums
// run in the reference's order), on the threads of ctx.parallel_for.
// topk: one task per row; a strided sample of the row gives a threshold just below the k-th
// largest magnitude, one vectorized pass copies the row to the residual and collects the
// candidates at or above it, the exact threshold is selected among the candidates (a full pass
// with threshold 0 if the sample misjudged), and the candidates, already in index order, are
// packed.
void topk_by_magnitude(const float* x,  // [rows, n] row-major, contiguous
                       int64_t rows, int64_t n, int64_t k,
                       int32_t* indices,  // [rows, k]
                       float* values,     // [rows, k]
                       float* residual,   // [rows, n], or x
                       const Context& ctx = {});

// One task per chunk of `out`; each client's entries in the chunk are found by binary search in
// its ascending indices and added in client order.
void sparse_weighted_sum(const int32_t* indices,  // [rows, k]
                         const float* values,     // [rows, k]
                         const float* weights,    // [rows]
                         int64_t rows, int64_t k, int64_t n,
                         float* out,  // [n]
                         Accumulator acc, const Context& ctx = {});

}  // namespace cpu

namespace cuda {
#include "mmfl/kernels/device/sparse.inc"

// The same selection through CUB (a stable segmented radix sort of the rows by magnitude, then a
// segmented sort of the k chosen indices), kept beside the kernel of our own so that the benchmark
// can compare them on a GPU. Not emulable (CUB), so it is only in the GPU build and its test is
// labelled gpu. Allocates its workspace with cudaMallocAsync on `stream`.
void topk_by_magnitude_cub(const float* x,  // [rows, n] device
                           int64_t rows, int64_t n, int64_t k,
                           int32_t* indices,  // [rows, k] device
                           float* values,     // [rows, k] device
                           float* residual,   // [rows, n] device, or x
                           cudaStream_t stream);
}  // namespace cuda

}  // namespace mmfl::kernels
