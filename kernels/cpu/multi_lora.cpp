// Fast CPU multi-adapter LoRA: each client's rows cut into blocks of kRows, one task per block for
// the row-wise products (shrink, expand, g, gx), one task per (client, column block) for the
// weight gradients; every product is the tile GEMM (cpu.h) on the client's own A_c / B_c. A task
// owns its outputs and sums in a fixed order, so any number of threads gives the same bits.
#include <algorithm>
#include <vector>

#include "../common/host_checks.h"
#include "mmfl/kernels/multi_lora.h"
#include "simd.h"

namespace mmfl::kernels::cpu {
namespace {

// Rows per task: the GEMM packs A_c^T (in x rank) or B_c^T (rank x out) once per task, so the
// packing costs 1/kRows of the multiply-adds; 64 rows is one client's batch in the benchmark.
constexpr int64_t kRows = 64;
// Columns of a weight-gradient block: ga[c] and gb[c] split so that few clients with many rows
// still give every thread work; 256 columns x rank 64 is 64 KiB of output, L2-resident.
constexpr int64_t kCols = 256;

struct RowBlock {
  int64_t client, begin, size;
};

std::vector<RowBlock> row_blocks(const int64_t* offsets, int64_t clients) {
  std::vector<RowBlock> blocks;
  for (int64_t c = 0; c < clients; ++c)
    for (int64_t i = offsets[c]; i < offsets[c + 1]; i += kRows)
      blocks.push_back({c, i, std::min(kRows, offsets[c + 1] - i)});
  return blocks;
}

void scale_in_place(float* v, int64_t n, float s) {
  for (int64_t e = 0; e < n; ++e)
    v[e] *= s;
}

void check_common(const char* fn, const float* x, const float* a, const float* b,
                  const int64_t* offsets, const MultiLoraShape& s) {
  checks::check_multi_lora_shape(fn, s);
  checks::check_multi_lora_offsets(fn, offsets, s);
  MMFL_CHECK(a != nullptr && b != nullptr, fn, ": a and b must not be null");
  MMFL_CHECK(s.rows == 0 || x != nullptr, fn, ": x is null");
}

}  // namespace

void multi_lora_forward(const float* x, const float* a, const float* b, const int64_t* offsets,
                        const MultiLoraShape& s, float scale, float* h, float* y,
                        const Context& ctx) {
  check_common("cpu::multi_lora_forward", x, a, b, offsets, s);
  MMFL_CHECK(s.rows == 0 || (h != nullptr && y != nullptr),
             "cpu::multi_lora_forward: h and y must not be null");
  const std::vector<RowBlock> blocks = row_blocks(offsets, s.clients);
  detail::run_tasks(ctx, static_cast<int64_t>(blocks.size()), [&](int64_t t) {
    const RowBlock& rb = blocks[t];
    const float* ac = a + rb.client * s.rank * s.in;
    const float* bc = b + rb.client * s.out * s.rank;
    float* hb = h + rb.begin * s.rank;
    // h = x A_c^T
    gemm(ctx, Transpose::kNo, Transpose::kYes, rb.size, s.rank, s.in, x + rb.begin * s.in, s.in, ac,
         s.in, 0.0f, hb, s.rank);
    // y += (s h) B_c^T: the scale goes on the small operand (rows x rank)
    thread_local std::vector<float> hs;
    hs.assign(hb, hb + rb.size * s.rank);
    scale_in_place(hs.data(), rb.size * s.rank, scale);
    gemm(ctx, Transpose::kNo, Transpose::kYes, rb.size, s.out, s.rank, hs.data(), s.rank, bc,
         s.rank, 1.0f, y + rb.begin * s.out, s.out);
  });
}

void multi_lora_backward(const float* x, const float* a, const float* b, const int64_t* offsets,
                         const MultiLoraShape& s, float scale, const float* h, const float* gy,
                         float* g, float* gx, float* ga, float* gb, const Context& ctx) {
  const char* fn = "cpu::multi_lora_backward";
  check_common(fn, x, a, b, offsets, s);
  MMFL_CHECK(s.rows == 0 || (h != nullptr && gy != nullptr && g != nullptr), fn,
             ": h, gy and g must not be null");
  MMFL_CHECK(ga != nullptr && gb != nullptr, fn, ": ga and gb must not be null");
  // Row blocks: g = s gy B_c, gx += g A_c.
  const std::vector<RowBlock> blocks = row_blocks(offsets, s.clients);
  detail::run_tasks(ctx, static_cast<int64_t>(blocks.size()), [&](int64_t t) {
    const RowBlock& rb = blocks[t];
    const float* ac = a + rb.client * s.rank * s.in;
    const float* bc = b + rb.client * s.out * s.rank;
    float* gblk = g + rb.begin * s.rank;
    gemm(ctx, Transpose::kNo, Transpose::kNo, rb.size, s.rank, s.out, gy + rb.begin * s.out, s.out,
         bc, s.rank, 0.0f, gblk, s.rank);
    scale_in_place(gblk, rb.size * s.rank, scale);
    if (gx != nullptr)
      gemm(ctx, Transpose::kNo, Transpose::kNo, rb.size, s.in, s.rank, gblk, s.rank, ac, s.in, 1.0f,
           gx + rb.begin * s.in, s.in);
  });
  // Weight gradients per (client, column block): ga[c][:, cols] = g_c^T x_c[:, cols] and
  // gb[c][rows of out, :] = s gy_c[:, those]^T h_c, summed over the client's rows in order.
  const int64_t a_blocks = detail::ceil_div(s.in, kCols), b_blocks = detail::ceil_div(s.out, kCols);
  const int64_t per_client = a_blocks + b_blocks;
  detail::run_tasks(ctx, s.clients * per_client, [&](int64_t t) {
    const int64_t c = t / per_client, blk = t % per_client;
    const int64_t r0 = offsets[c], n = offsets[c + 1] - offsets[c];
    if (blk < a_blocks) {
      const int64_t j0 = blk * kCols, w = std::min(kCols, s.in - j0);
      float* dst = ga + c * s.rank * s.in + j0;
      // k = n rows; n == 0 writes zeros (beta 0)
      gemm(ctx, Transpose::kYes, Transpose::kNo, s.rank, w, n, g + r0 * s.rank, s.rank,
           x + r0 * s.in + j0, s.in, 0.0f, dst, s.in);
    } else {
      const int64_t o0 = (blk - a_blocks) * kCols, w = std::min(kCols, s.out - o0);
      float* dst = gb + c * s.out * s.rank + o0 * s.rank;
      gemm(ctx, Transpose::kYes, Transpose::kNo, w, s.rank, n, gy + r0 * s.out + o0, s.out,
           h + r0 * s.rank, s.rank, 0.0f, dst, s.rank);
      scale_in_place(dst, w * s.rank, scale);
    }
  });
}

}  // namespace mmfl::kernels::cpu
