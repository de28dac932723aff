// Multi-adapter LoRA on the GPU: two tiled kernels cover the six segmented products.
//   rows kernel:   out[i] = alpha * op(M_c) in[i] (+ out[i]) for the rows i of each client c:
//                  shrink h = x A_c^T, expand y += s h B_c^T, g = s gy B_c, gx += g A_c.
//   outer kernel:  out_c = alpha * sum_{i in c} P[i] Q[i]^T: ga_c = g_c^T x_c, gb_c = s gy_c^T h_c.
// Row tiles never straddle two clients (a client's last tile is partial), so each tile multiplies
// one client's matrix; every output has one owning thread and a fixed summation order (no atomics,
// deterministic). The base product x W^T + b is the caller's cuBLAS GEMM.
#include <cstdint>

#include "../common/host_checks.h"
#include "common.cuh"
#include "mmfl/kernels/launch.h"
#include "mmfl/kernels/multi_lora.h"

namespace mmfl::kernels::MMFL_KERNEL_NS {
namespace {

// 32 x 32 output tiles, 32-deep slices of the reduction, 256 threads of 4 outputs each: the two
// 32 x 33 fp32 operand tiles (8.4 KB) leave room for many resident blocks, and rank (8 to 64 in
// use) is one or two tiles wide.
constexpr int kTile = 32;
constexpr int kThreads = 256;
constexpr int kRowsPerThread = kTile * kTile / kThreads;  // 4
static_assert(kThreads % kTile == 0 && kRowsPerThread * kThreads == kTile * kTile, "tile shape");

// How the per-client matrix M_c of the rows kernel is stored: kRowsOfN: [n, k] (A_c for the shrink,
// B_c for the expand: op(M) = M^T); kRowsOfK: [k, n] (B_c for g, A_c for gx).
enum class Layout : int { kRowsOfN, kRowsOfK };

// out[i, :] = alpha * in[i, :] M_c + (accumulate ? out[i, :] : 0), i over client c's rows.
// blockIdx.x enumerates the clients' row tiles in order (a client of n rows has ceil(n / 32));
// blocks past the last tile exit. blockIdx.y is the column tile.
template <Layout L>
__global__ void __launch_bounds__(kThreads)
    rows_kernel(const float* __restrict__ in,         // [rows, k]
                const float* __restrict__ mat,        // [clients, n, k] or [clients, k, n]
                const int64_t* __restrict__ offsets,  // [clients + 1]
                int64_t clients, int64_t k, int64_t n, float alpha, int accumulate,
                float* __restrict__ out) {   // [rows, n]
  __shared__ float in_s[kTile][kTile + 1];   // [row][depth]
  __shared__ float mat_s[kTile][kTile + 1];  // [depth][col]
  __shared__ int64_t tile_client, tile_row0, tile_row_end;
  if (threadIdx.x == 0) {
    // Which client and row tile this block is: a scan over the clients' tile counts.
    int64_t t = blockIdx.x, client = -1, row0 = 0, row_end = 0;
    for (int64_t c = 0; c < clients; ++c) {
      const int64_t rows_c = offsets[c + 1] - offsets[c];
      const int64_t tiles_c = (rows_c + kTile - 1) / kTile;
      if (t < tiles_c) {
        client = c;
        row0 = offsets[c] + t * kTile;
        row_end = offsets[c + 1];
        break;
      }
      t -= tiles_c;
    }
    tile_client = client;
    tile_row0 = row0;
    tile_row_end = row_end;
  }
  __syncthreads();
  const int64_t client = tile_client, row0 = tile_row0, row_end = tile_row_end;
  if (client < 0) return;  // uniform over the block: past the last tile
  const float* m = mat + client * n * k;
  const int64_t col0 = static_cast<int64_t>(blockIdx.y) * kTile;
  const int tx = static_cast<int>(threadIdx.x) % kTile, ty = static_cast<int>(threadIdx.x) / kTile;
  constexpr int kRowStep = kThreads / kTile;  // 8
  float acc[kRowsPerThread] = {};
  for (int64_t k0 = 0; k0 < k; k0 += kTile) {
    for (int e = threadIdx.x; e < kTile * kTile; e += kThreads) {
      const int r = e / kTile, d = e % kTile;  // d fastest: coalesced along the depth
      const int64_t row = row0 + r, depth = k0 + d;
      in_s[r][d] = row < row_end && depth < k ? in[row * k + depth] : 0.0f;
      if (L == Layout::kRowsOfN) {  // M_c[col][depth]: coalesced along the depth
        const int64_t col = col0 + r;
        mat_s[d][r] = col < n && depth < k ? m[col * k + depth] : 0.0f;
      } else {  // M_c[depth][col]: coalesced along the columns
        const int64_t depth2 = k0 + r, col = col0 + d;
        mat_s[r][d] = depth2 < k && col < n ? m[depth2 * n + col] : 0.0f;
      }
    }
    __syncthreads();
#pragma unroll 8
    for (int d = 0; d < kTile; ++d) {
      const float b = mat_s[d][tx];
#pragma unroll
      for (int q = 0; q < kRowsPerThread; ++q)
        acc[q] += in_s[ty + q * kRowStep][d] * b;
    }
    __syncthreads();
  }
  const int64_t col = col0 + tx;
  if (col >= n) return;
#pragma unroll
  for (int q = 0; q < kRowsPerThread; ++q) {
    const int64_t row = row0 + ty + q * kRowStep;
    if (row < row_end) {
      const float v = alpha * acc[q];
      out[row * n + col] = accumulate ? out[row * n + col] + v : v;
    }
  }
}

// out[c] = alpha * sum_{i in client c} p[i, :]^T q[i, :]   ([m, n] per client; 0 without rows).
// blockIdx.x = client * column tiles + column tile, blockIdx.y = row tile of the [m, n] output.
__global__ void __launch_bounds__(kThreads)
    outer_kernel(const float* __restrict__ p,          // [rows, m]
                 const float* __restrict__ q,          // [rows, n]
                 const int64_t* __restrict__ offsets,  // [clients + 1]
                 int64_t m, int64_t n, float alpha,
                 float* __restrict__ out) {  // [clients, m, n]
  __shared__ float p_s[kTile][kTile + 1];    // [row i][m]
  __shared__ float q_s[kTile][kTile + 1];    // [row i][n]
  const int64_t col_tiles = (n + kTile - 1) / kTile;
  const int64_t client = static_cast<int64_t>(blockIdx.x) / col_tiles;
  const int64_t col0 = (static_cast<int64_t>(blockIdx.x) % col_tiles) * kTile;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kTile;
  const int64_t begin = offsets[client], end = offsets[client + 1];
  const int tx = static_cast<int>(threadIdx.x) % kTile, ty = static_cast<int>(threadIdx.x) / kTile;
  constexpr int kRowStep = kThreads / kTile;
  float acc[kRowsPerThread] = {};
  for (int64_t i0 = begin; i0 < end; i0 += kTile) {
    for (int e = threadIdx.x; e < kTile * kTile; e += kThreads) {
      const int r = e / kTile, c = e % kTile;  // c fastest: coalesced along m and n
      const int64_t row = i0 + r;
      p_s[r][c] = row < end && m0 + c < m ? p[row * m + m0 + c] : 0.0f;
      q_s[r][c] = row < end && col0 + c < n ? q[row * n + col0 + c] : 0.0f;
    }
    __syncthreads();
#pragma unroll 8
    for (int r = 0; r < kTile; ++r) {
      const float b = q_s[r][tx];
#pragma unroll
      for (int s = 0; s < kRowsPerThread; ++s)
        acc[s] += p_s[r][ty + s * kRowStep] * b;
    }
    __syncthreads();
  }
  const int64_t col = col0 + tx;
  if (col >= n) return;
#pragma unroll
  for (int s = 0; s < kRowsPerThread; ++s) {
    const int64_t row = m0 + ty + s * kRowStep;
    if (row < m) out[client * m * n + row * n + col] = alpha * acc[s];
  }
}

unsigned checked_grid(const char* fn, int64_t blocks, const char* what) {
  MMFL_CHECK(blocks >= 1 && blocks <= 0x7fffffff, fn, ": ", what, " needs ", blocks,
             " blocks, more than one launch can hold (2^31 - 1)");
  return static_cast<unsigned>(blocks);
}

// rows_kernel over all clients' rows; an upper bound of the tile count (the sum over clients of
// ceil(rows_c / 32) is at most (rows + clients * 31) / 32), the spare blocks exit at once.
template <Layout L>
void launch_rows(const char* fn, const float* in, const float* mat, const int64_t* offsets,
                 const MultiLoraShape& s, int64_t k, int64_t n, float alpha, bool accumulate,
                 float* out, cudaStream_t stream) {
  const int64_t row_tiles = (s.rows + s.clients * (kTile - 1) + kTile - 1) / kTile;
  const int64_t col_tiles = (n + kTile - 1) / kTile;
  MMFL_CHECK(col_tiles <= 65535, fn, ": ", n, " output columns need more than 65535 tiles");
  const dim3 grid(checked_grid(fn, row_tiles, "the row tiles"), static_cast<unsigned>(col_tiles));
  MMFL_LAUNCH(rows_kernel<L>, grid, kThreads, 0, stream)
  (in, mat, offsets, s.clients, k, n, alpha, accumulate ? 1 : 0, out);
  MMFL_CHECK_LAUNCH(rows_kernel<L>);
}

void launch_outer(const char* fn, const float* p, const float* q, const int64_t* offsets,
                  const MultiLoraShape& s, int64_t m, int64_t n, float alpha, float* out,
                  cudaStream_t stream) {
  const int64_t col_tiles = (n + kTile - 1) / kTile, row_tiles = (m + kTile - 1) / kTile;
  MMFL_CHECK(row_tiles <= 65535, fn, ": ", m, " gradient rows need more than 65535 tiles");
  const dim3 grid(checked_grid(fn, s.clients * col_tiles, "the weight gradient"),
                  static_cast<unsigned>(row_tiles));
  MMFL_LAUNCH(outer_kernel, grid, kThreads, 0, stream)(p, q, offsets, m, n, alpha, out);
  MMFL_CHECK_LAUNCH(outer_kernel);
}

void check_common(const char* fn, const float* x, const float* a, const float* b,
                  const int64_t* offsets, const MultiLoraShape& s) {
  checks::check_multi_lora_shape(fn, s);
  MMFL_CHECK(offsets != nullptr, fn, ": offsets is null");
  MMFL_CHECK(a != nullptr && b != nullptr, fn, ": a and b must not be null");
  MMFL_CHECK(s.rows == 0 || x != nullptr, fn, ": x is null");
}

}  // namespace

void multi_lora_forward(const float* x, const float* a, const float* b, const int64_t* offsets,
                        const MultiLoraShape& s, float scale, float* h, float* y,
                        cudaStream_t stream) {
  const char* fn = "multi_lora_forward";
  check_common(fn, x, a, b, offsets, s);
  MMFL_CHECK(s.rows == 0 || (h != nullptr && y != nullptr), fn, ": h and y must not be null");
  if (s.rows == 0) return;
  // h = x A_c^T (A_c is [rank, in]: rows of n = rank, depth in)
  launch_rows<Layout::kRowsOfN>(fn, x, a, offsets, s, s.in, s.rank, 1.0f, false, h, stream);
  // y += s h B_c^T (B_c is [out, rank]: rows of n = out, depth rank)
  launch_rows<Layout::kRowsOfN>(fn, h, b, offsets, s, s.rank, s.out, scale, true, y, stream);
}

void multi_lora_backward(const float* x, const float* a, const float* b, const int64_t* offsets,
                         const MultiLoraShape& s, float scale, const float* h, const float* gy,
                         float* g, float* gx, float* ga, float* gb, cudaStream_t stream) {
  const char* fn = "multi_lora_backward";
  check_common(fn, x, a, b, offsets, s);
  MMFL_CHECK(s.rows == 0 || (h != nullptr && gy != nullptr && g != nullptr), fn,
             ": h, gy and g must not be null");
  MMFL_CHECK(ga != nullptr && gb != nullptr, fn, ": ga and gb must not be null");
  if (s.rows > 0) {
    // g = s gy B_c (B_c [out, rank]: depth out, n = rank)
    launch_rows<Layout::kRowsOfK>(fn, gy, b, offsets, s, s.out, s.rank, scale, false, g, stream);
    // gx += g A_c (A_c [rank, in]: depth rank, n = in)
    if (gx != nullptr)
      launch_rows<Layout::kRowsOfK>(fn, g, a, offsets, s, s.rank, s.in, 1.0f, true, gx, stream);
  }
  // ga_c = g_c^T x_c, gb_c = s gy_c^T h_c (zero for clients without rows)
  launch_outer(fn, g, x, offsets, s, s.rank, s.in, 1.0f, ga, stream);
  launch_outer(fn, gy, h, offsets, s, s.out, s.rank, scale, gb, stream);
}

}  // namespace mmfl::kernels::MMFL_KERNEL_NS
