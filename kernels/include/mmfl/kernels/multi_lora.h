// Multi-adapter LoRA: many clients' low-rank adapters over one frozen base layer in one pass. The
// rows of a batch are grouped by client (client c owns rows offsets[c] .. offsets[c+1]-1), and each
// client has its own A_c [rank, in] and B_c [out, rank]. These kernels compute the adapter part
// (the segmented "shrink" x A_c^T and "expand" h B_c^T, and their gradients); the base product
// x W^T + b and its gradient gy W are one large GEMM that the caller runs (LibTorch, cuBLAS).
#pragma once

#include <cstdint>

#include "mmfl/kernels/common.h"
#include "mmfl/kernels/cpu.h"

namespace mmfl::kernels {

// Sizes of one multi-adapter call.
struct MultiLoraShape {
  int64_t clients;  // C >= 1 (a client may own no rows)
  int64_t rows;     // R >= 0, rows of all clients together
  int64_t in;       // features in, >= 1
  int64_t out;      // features out, >= 1
  int64_t rank;     // r >= 1
};

namespace ref {

// Forward, per client c and row i of c (s = scale, usually alpha / rank):
//   h[i] = A_c x[i]                     ("shrink")
//   y[i] += s * B_c h[i]                ("expand"; y holds the base product x W^T + b on entry)
void multi_lora_forward(const float* x,          // [rows, in]
                        const float* a,          // [clients, rank, in]
                        const float* b,          // [clients, out, rank]
                        const int64_t* offsets,  // [clients + 1], 0 = offsets[0] <= ... = rows
                        const MultiLoraShape& shape, float scale,
                        float* h,   // [rows, rank] written
                        float* y);  // [rows, out] accumulated into

// Backward from gy = dL/dy (the base's W and b are frozen and get no gradient):
//   g[i] = s * B_c^T gy[i]              [rows, rank]
//   gx[i] += A_c^T g[i]                 (gx holds the base's gy W on entry; null: not computed)
//   ga[c] = sum_{i in c} g[i] x[i]^T    [rank, in] per client, 0 for a client with no rows
//   gb[c] = s * sum_{i in c} gy[i] h[i]^T   [out, rank] per client
void multi_lora_backward(const float* x,          // [rows, in]
                         const float* a,          // [clients, rank, in]
                         const float* b,          // [clients, out, rank]
                         const int64_t* offsets,  // [clients + 1]
                         const MultiLoraShape& shape, float scale,
                         const float* h,   // [rows, rank] from the forward
                         const float* gy,  // [rows, out]
                         float* g,         // [rows, rank] written
                         float* gx,        // [rows, in] accumulated into, or null
                         float* ga,        // [clients, rank, in] written
                         float* gb);       // [clients, out, rank] written

}  // namespace ref

namespace cpu {

// The fast path: as namespace ref, in fp32 with ctx.gemm (or the tile GEMM; cpu.h), on the
// threads of ctx.parallel_for. Every output has one owning task and a fixed summation order, so the
// results are bit-identical for any number of threads.
void multi_lora_forward(const float* x,          // [rows, in]
                        const float* a,          // [clients, rank, in]
                        const float* b,          // [clients, out, rank]
                        const int64_t* offsets,  // [clients + 1]
                        const MultiLoraShape& shape, float scale,
                        float* h,  // [rows, rank] written
                        float* y,  // [rows, out] accumulated into
                        const Context& ctx = {});

void multi_lora_backward(const float* x,          // [rows, in]
                         const float* a,          // [clients, rank, in]
                         const float* b,          // [clients, out, rank]
                         const int64_t* offsets,  // [clients + 1]
                         const MultiLoraShape& shape, float scale,
                         const float* h,   // [rows, rank]
                         const float* gy,  // [rows, out]
                         float* g,         // [rows, rank] written
                         float* gx,        // [rows, in] accumulated into, or null
                         float* ga,        // [clients, rank, in] written
                         float* gb,        // [clients, out, rank] written
                         const Context& ctx = {});

}  // namespace cpu

namespace cuda {
#include "mmfl/kernels/device/multi_lora.inc"
}  // namespace cuda

}  // namespace mmfl::kernels
