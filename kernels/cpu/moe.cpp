// Fast CPU MoE: the routers' selections by nth_element under a strict total order (so the result
// does not depend on the algorithm), the permutation by a counting sort, and the experts' GEMMs as
// tiles of (expert, slot block, column block), each the tile GEMM (cpu.h) on the expert's own
// weights. The gather is a copy before the first GEMM (the tile GEMM reads A in place, so a
// contiguous x_slots is what lets it stream), and the exact GELU uses a vectorized erf. Every
// output has one owning task and a fixed summation order: any number of threads, the same bits.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "../common/moe_checks.h"
#include "mmfl/kernels/moe.h"
#include "simd.h"

namespace mmfl::kernels::cpu {
namespace {

using detail::ceil_div;
using detail::run_tasks;

// The size of a GEMM tile (rows: slots, or a weight gradient's rows; cols: output columns). For the
// tile GEMM, 256 x 256: the A panel (256 x 256 deep, 256 KiB) stays in L2 while it walks the packed
// B strips, and the B block it packs per task (256 x the depth) costs 1/512 of the multiply-adds.
// A library GEMM (ctx.gemm) blocks for the caches itself and packs both operands on every call, so
// it gets 1024 x 1024 (measured: the T 8192 / d 1024 / f 4096 layer ran 2.5 s with 256 x 256 tiles
// through MKL, 2.2 s with 512, 1.9 s with 1024, the dense FFN of the same FLOPs 1.8-1.9 s).
struct Tiling {
  int64_t rows, cols;
};
Tiling tiling(const Context& ctx) {
  return ctx.gemm != nullptr ? Tiling{1024, 1024} : Tiling{256, 256};
}

// Rows per task of the memory-bound passes (gather, gate gradients, combine).
constexpr int64_t kPassRows = 64;

// erf to ~1.5e-7 absolute (Abramowitz & Stegun 7.1.26), branch-free so that it vectorizes; the
// GELU only ever adds it to 1, so absolute error is what matters.
template <typename T>
MMFL_CPU_INLINE T erf_as(T x, T ax, T e) {  // ax = |x|, e = exp(-x^2)
  const T t = 1.0f / (1.0f + 0.3275911f * ax);
  T p = t * 1.061405429f + -1.453152027f;
  p = p * t + 1.421413741f;
  p = p * t + -0.284496736f;
  p = p * t + 0.254829592f;
  const T r = 1.0f - p * t * e;
  return x < 0.0f ? -r : r;
}

constexpr float kInvSqrt2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;

// pre[i] += bias[i]; act[i] = gelu(pre[i]) for one row of n.
MMFL_CPU_CLONES void bias_gelu_row(float* pre, float* act, const float* bias, int64_t n) {
  using detail::VecF;
  int64_t i = 0;
  for (; i + detail::kLanes <= n; i += detail::kLanes) {
    const VecF v = detail::load(pre + i) + detail::load(bias + i);
    const VecF z = v * kInvSqrt2;
    const VecF az = z < 0.0f ? -z : z;
    const VecF er = erf_as<VecF>(z, az, detail::vexp(-(z * z)));
    detail::store(pre + i, v);
    detail::store(act + i, 0.5f * v * (1.0f + er));
  }
  for (; i < n; ++i) {
    const float v = pre[i] + bias[i];
    const float z = v * kInvSqrt2;
    const float er = erf_as<float>(z, std::fabs(z), detail::expf_poly(-(z * z)));
    pre[i] = v;
    act[i] = 0.5f * v * (1.0f + er);
  }
}

// g[i] *= gelu'(pre[i]) = Phi(pre) + pre phi(pre) for one row of n.
MMFL_CPU_CLONES void gelu_grad_row(float* g, const float* pre, int64_t n) {
  using detail::VecF;
  int64_t i = 0;
  for (; i + detail::kLanes <= n; i += detail::kLanes) {
    const VecF v = detail::load(pre + i);
    const VecF z = v * kInvSqrt2;
    const VecF az = z < 0.0f ? -z : z;
    const VecF e = detail::vexp(-(z * z));  // exp(-v^2 / 2)
    const VecF er = erf_as<VecF>(z, az, e);
    detail::store(g + i, detail::load(g + i) * (0.5f * (1.0f + er) + v * kInvSqrt2Pi * e));
  }
  for (; i < n; ++i) {
    const float v = pre[i];
    const float z = v * kInvSqrt2;
    const float e = detail::expf_poly(-(z * z));
    const float er = erf_as<float>(z, std::fabs(z), e);
    g[i] *= 0.5f * (1.0f + er) + v * kInvSqrt2Pi * e;
  }
}

// One GEMM tile of a slot-grouped product: expert e, slots [s0, s0 + rows), columns [c0, c0 +
// cols).
struct Tile {
  int64_t expert, s0, rows, c0, cols;
};

// The tiles of a product whose rows are every expert's slots and whose columns number n.
std::vector<Tile> slot_tiles(const int64_t* offsets, int64_t experts, int64_t n, Tiling tl) {
  std::vector<Tile> tiles;
  for (int64_t e = 0; e < experts; ++e)
    for (int64_t s0 = offsets[e]; s0 < offsets[e + 1]; s0 += tl.rows)
      for (int64_t c0 = 0; c0 < n; c0 += tl.cols)
        tiles.push_back(
            {e, s0, std::min(tl.rows, offsets[e + 1] - s0), c0, std::min(tl.cols, n - c0)});
  return tiles;
}

// a ranks before b: a larger value, or an equal one at a lower index (a strict total order on
// finite values, so nth_element and sort give the reference's selection exactly).
struct Ranked {
  float v;
  int64_t i;
  bool operator<(const Ranked& o) const { return v > o.v || (v == o.v && i < o.i); }
};

void check_ffn(const char* fn, const int64_t* order, const int64_t* offsets, const MoeShape& s) {
  checks::check_moe_shape(fn, s);
  checks::check_moe_offsets(fn, offsets, s);
  checks::check_moe_order(fn, order, s.slots, s.tokens);
}

}  // namespace

void moe_route_expert_choice(const float* logits, int64_t tokens, int64_t experts, int64_t capacity,
                             int64_t* order, int64_t* gate_index, const Context& ctx) {
  checks::check_router_args("cpu::moe_route_expert_choice", logits, tokens, experts, capacity,
                            "capacity", tokens, "tokens");
  run_tasks(ctx, experts, [&](int64_t e) {
    std::vector<Ranked> col(static_cast<size_t>(tokens));
    for (int64_t t = 0; t < tokens; ++t)
      col[t] = {logits[t * experts + e], t};
    std::nth_element(col.begin(), col.begin() + (capacity - 1), col.end());
    std::vector<int64_t> chosen(static_cast<size_t>(capacity));
    for (int64_t j = 0; j < capacity; ++j)
      chosen[j] = col[j].i;
    std::sort(chosen.begin(), chosen.end());
    for (int64_t j = 0; j < capacity; ++j) {
      order[e * capacity + j] = chosen[j];
      gate_index[e * capacity + j] = chosen[j] * experts + e;
    }
  });
}

void moe_route_token_choice(const float* logits, int64_t tokens, int64_t experts, int64_t k,
                            int64_t* order, int64_t* gate_index, int64_t* offsets,
                            const Context& ctx) {
  checks::check_router_args("cpu::moe_route_token_choice", logits, tokens, experts, k, "k", experts,
                            "experts");
  // Each token's top k, in rank order (token-major, [tokens, k]).
  std::vector<int64_t> pick(static_cast<size_t>(tokens * k));
  run_tasks(ctx, ceil_div(tokens, kPassRows), [&](int64_t task) {
    std::vector<Ranked> row(static_cast<size_t>(experts));
    for (int64_t t = task * kPassRows; t < std::min(tokens, (task + 1) * kPassRows); ++t) {
      for (int64_t e = 0; e < experts; ++e)
        row[e] = {logits[t * experts + e], e};
      std::partial_sort(row.begin(), row.begin() + k, row.end());
      for (int64_t j = 0; j < k; ++j)
        pick[t * k + j] = row[j].i;
    }
  });
  // Counting sort by expert; a pass in token order keeps each expert's tokens increasing.
  std::vector<int64_t> cursor(static_cast<size_t>(experts), 0);
  for (int64_t p : pick)
    ++cursor[p];
  offsets[0] = 0;
  for (int64_t e = 0; e < experts; ++e) {
    offsets[e + 1] = offsets[e] + cursor[e];
    cursor[e] = offsets[e];
  }
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t j = 0; j < k; ++j) {
      const int64_t e = pick[t * k + j], s = cursor[e]++;
      order[s] = t;
      gate_index[s] = t * experts + e;
    }
}

void moe_token_slots(const int64_t* order, int64_t slots, int64_t tokens, int64_t* token_offsets,
                     int64_t* token_slots, const Context&) {
  MMFL_CHECK(tokens >= 0 && slots >= 0, "cpu::moe_token_slots: tokens and slots must be >= 0, got ",
             tokens, " and ", slots);
  checks::check_moe_order("cpu::moe_token_slots", order, slots, tokens);
  // A counting sort: O(slots + tokens) and memory-bound, so one thread does it.
  std::fill(token_offsets, token_offsets + tokens + 1, 0);
  for (int64_t s = 0; s < slots; ++s)
    ++token_offsets[order[s] + 1];
  for (int64_t t = 0; t < tokens; ++t)
    token_offsets[t + 1] += token_offsets[t];
  std::vector<int64_t> cursor(token_offsets, token_offsets + tokens);
  for (int64_t s = 0; s < slots; ++s)
    token_slots[cursor[order[s]]++] = s;
}

void moe_experts_forward(const float* x, const int64_t* order, const int64_t* offsets,
                         const float* w1, const float* b1, const float* w2, const float* b2,
                         const MoeShape& s, float* x_slots, float* pre, float* act, float* out,
                         const Context& ctx) {
  check_ffn("cpu::moe_experts_forward", order, offsets, s);
  const int64_t d = s.model, f = s.hidden;
  const Tiling tl = tiling(ctx);
  run_tasks(ctx, ceil_div(s.slots, kPassRows), [&](int64_t task) {
    for (int64_t slot = task * kPassRows; slot < std::min(s.slots, (task + 1) * kPassRows); ++slot)
      std::copy(x + order[slot] * d, x + (order[slot] + 1) * d, x_slots + slot * d);
  });
  // pre = x_slots w1[e]^T + b1[e], act = gelu(pre)
  const std::vector<Tile> t1 = slot_tiles(offsets, s.experts, f, tl);
  run_tasks(ctx, static_cast<int64_t>(t1.size()), [&](int64_t i) {
    const Tile& t = t1[i];
    float* p = pre + t.s0 * f + t.c0;
    gemm(ctx, Transpose::kNo, Transpose::kYes, t.rows, t.cols, d, x_slots + t.s0 * d, d,
         w1 + (t.expert * f + t.c0) * d, d, 0.0f, p, f);
    for (int64_t r = 0; r < t.rows; ++r)
      bias_gelu_row(p + r * f, act + (t.s0 + r) * f + t.c0, b1 + t.expert * f + t.c0, t.cols);
  });
  // out = act w2[e]^T + b2[e]
  const std::vector<Tile> t2 = slot_tiles(offsets, s.experts, d, tl);
  run_tasks(ctx, static_cast<int64_t>(t2.size()), [&](int64_t i) {
    const Tile& t = t2[i];
    float* o = out + t.s0 * d + t.c0;
    gemm(ctx, Transpose::kNo, Transpose::kYes, t.rows, t.cols, f, act + t.s0 * f, f,
         w2 + (t.expert * d + t.c0) * f, f, 0.0f, o, d);
    const float* bias = b2 + t.expert * d + t.c0;
    for (int64_t r = 0; r < t.rows; ++r)
      for (int64_t j = 0; j < t.cols; ++j)
        o[r * d + j] += bias[j];
  });
}

void moe_combine(const float* src, const float* weight, const int64_t* token_offsets,
                 const int64_t* token_slots, const MoeShape& s, float* y, const Context& ctx) {
  checks::check_moe_shape("cpu::moe_combine", s);
  const int64_t d = s.model;
  run_tasks(ctx, ceil_div(s.tokens, kPassRows), [&](int64_t task) {
    for (int64_t t = task * kPassRows; t < std::min(s.tokens, (task + 1) * kPassRows); ++t) {
      float* yt = y + t * d;
      std::fill(yt, yt + d, 0.0f);
      for (int64_t i = token_offsets[t]; i < token_offsets[t + 1]; ++i) {
        const int64_t slot = token_slots[i];
        detail::axpy_f32(yt, src + slot * d, weight != nullptr ? weight[slot] : 1.0f, d);
      }
    }
  });
}

void moe_experts_backward(const int64_t* order, const int64_t* offsets, const float* gate,
                          const float* w1, const float* w2, const MoeShape& s, const float* x_slots,
                          const float* pre, const float* act, const float* out, const float* gy,
                          float* grad_gate, float* grad_out, float* grad_pre, float* grad_x_slots,
                          float* gw1, float* gb1, float* gw2, float* gb2, const Context& ctx) {
  check_ffn("cpu::moe_experts_backward", order, offsets, s);
  const int64_t d = s.model, f = s.hidden;
  const Tiling tl = tiling(ctx);
  // grad_out = gate gy[t], grad_gate = <gy[t], out>
  run_tasks(ctx, ceil_div(s.slots, kPassRows), [&](int64_t task) {
    for (int64_t slot = task * kPassRows; slot < std::min(s.slots, (task + 1) * kPassRows);
         ++slot) {
      const float* g = gy + order[slot] * d;
      const float* o = out + slot * d;
      float* go = grad_out + slot * d;
      double dot = 0;
      for (int64_t j = 0; j < d; ++j) {
        dot += double(g[j]) * double(o[j]);
        go[j] = gate[slot] * g[j];
      }
      grad_gate[slot] = static_cast<float>(dot);
    }
  });
  // grad_pre = (grad_out w2[e]) * gelu'(pre)
  const std::vector<Tile> t1 = slot_tiles(offsets, s.experts, f, tl);
  run_tasks(ctx, static_cast<int64_t>(t1.size()), [&](int64_t i) {
    const Tile& t = t1[i];
    float* g = grad_pre + t.s0 * f + t.c0;
    gemm(ctx, Transpose::kNo, Transpose::kNo, t.rows, t.cols, d, grad_out + t.s0 * d, d,
         w2 + t.expert * d * f + t.c0, f, 0.0f, g, f);
    for (int64_t r = 0; r < t.rows; ++r)
      gelu_grad_row(g + r * f, pre + (t.s0 + r) * f + t.c0, t.cols);
  });
  // One task list for the rest, all reading grad_out / grad_pre only:
  //   grad_x_slots = grad_pre w1[e]             (slot tiles over d)
  //   gw2[e] = grad_out_e^T act_e, gb2          (tiles of [d, f])
  //   gw1[e] = grad_pre_e^T x_slots_e, gb1      (tiles of [f, d])
  struct Job {
    int kind;  // 0: grad_x_slots, 1: gw2, 2: gw1
    int64_t expert, r0, rows, c0, cols;
  };
  std::vector<Job> jobs;
  if (grad_x_slots != nullptr)
    for (const Tile& t : slot_tiles(offsets, s.experts, d, tl))
      jobs.push_back({0, t.expert, t.s0, t.rows, t.c0, t.cols});
  for (int64_t e = 0; e < s.experts; ++e) {
    for (int64_t r0 = 0; r0 < d; r0 += tl.rows)
      for (int64_t c0 = 0; c0 < f; c0 += tl.cols)
        jobs.push_back({1, e, r0, std::min(tl.rows, d - r0), c0, std::min(tl.cols, f - c0)});
    for (int64_t r0 = 0; r0 < f; r0 += tl.rows)
      for (int64_t c0 = 0; c0 < d; c0 += tl.cols)
        jobs.push_back({2, e, r0, std::min(tl.rows, f - r0), c0, std::min(tl.cols, d - c0)});
  }
  run_tasks(ctx, static_cast<int64_t>(jobs.size()), [&](int64_t i) {
    const Job& j = jobs[i];
    const int64_t e = j.expert, s0 = offsets[e], n = offsets[e + 1] - s0;
    if (j.kind == 0) {
      gemm(ctx, Transpose::kNo, Transpose::kNo, j.rows, j.cols, f, grad_pre + j.r0 * f, f,
           w1 + e * f * d + j.c0, d, 0.0f, grad_x_slots + j.r0 * d + j.c0, d);
      return;
    }
    // Weight gradients: a sum over the expert's n slots (k = n; n == 0 writes zeros).
    const bool w2_grad = j.kind == 1;
    const float* lhs = w2_grad ? grad_out : grad_pre;  // [S, rows dim] read transposed
    const int64_t ldl = w2_grad ? d : f;
    const float* rhs = w2_grad ? act : x_slots;  // [S, cols dim]
    const int64_t ldr = w2_grad ? f : d;
    float* gw = w2_grad ? gw2 + e * d * f : gw1 + e * f * d;
    gemm(ctx, Transpose::kYes, Transpose::kNo, j.rows, j.cols, n, lhs + s0 * ldl + j.r0, ldl,
         rhs + s0 * ldr + j.c0, ldr, 0.0f, gw + j.r0 * ldr + j.c0, ldr);
    if (j.c0 == 0) {  // the bias gradient of these rows, once
      float* gb = (w2_grad ? gb2 + e * d : gb1 + e * f) + j.r0;
      std::fill(gb, gb + j.rows, 0.0f);
      for (int64_t slot = s0; slot < s0 + n; ++slot)
        for (int64_t r = 0; r < j.rows; ++r)
          gb[r] += lhs[slot * ldl + j.r0 + r];
    }
  });
}

}  // namespace mmfl::kernels::cpu
