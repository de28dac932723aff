// Fast CPU cross entropy against a feature bank, and CreamFL's ensemble on top of it: 256-row
// query blocks against 128-row bank tiles from the packed GEMM, an online log-sum-exp folded per
// tile, logits recomputed in the backward pass (memory O((b + n) d), plus one partial grad_q per
// bank chunk). Work is split by shape alone (query blocks x at most kMaxChunks bank chunks),
// every output has one owning task, and partial results merge in chunk order: the same bits for
// any number of threads.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../common/host_checks.h"
#include "mmfl/kernels/bank_ce.h"
#include "simd.h"

namespace mmfl::kernels::cpu {
namespace {

// Query blocks of 256 rows meet bank tiles of 128 rows: the logits tile is held transposed
// (S^T, 128 bank rows x 256 queries, 128 KiB in L2), so the GEMM's packed operand is the query
// block (packed once per task) and the bank is read in place; the log-sum-exp runs down columns.
constexpr int64_t kQueries = 256;
constexpr int64_t kTile = 128;
// Chunks of the bank that run in parallel for the same query rows; each costs a partial
// (max, sum) per row and, in the backward pass, a partial grad_q (b x d floats).
constexpr int64_t kMaxChunks = 16;

struct Split {
  int64_t query_blocks, tiles, chunks;
  // Bank tiles [first, last) of chunk c.
  int64_t first(int64_t c) const { return c * tiles / chunks; }
  int64_t last(int64_t c) const { return (c + 1) * tiles / chunks; }
};

Split split(int64_t b, int64_t n) {
  const int64_t tiles = detail::ceil_div(n, kTile);
  return {detail::ceil_div(b, kQueries), tiles, std::min(tiles, kMaxChunks)};
}

float* tile_buffer() {
  thread_local std::vector<float> s;
  s.resize(kTile * kQueries);
  return s.data();
}

// Folds the logits of query block qb against bank tiles [t0, t1) into running (max, sum) per
// query; records the target's logit of every query whose target lies in those tiles.
void fold_rows(const float* q, const float* bank, const int64_t* target, int64_t b, int64_t n,
               int64_t d, float scale, int64_t qb, int64_t t0, int64_t t1, float* max, float* sum,
               float* target_logit) {
  const int64_t q0 = qb * kQueries, rows = std::min(kQueries, b - q0);
  thread_local detail::PackedB qt;
  qt.pack(Transpose::kYes, d, rows, q + q0 * d, d);
  float* st = tile_buffer();
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t m0 = t * kTile, cols = std::min(kTile, n - m0);
    detail::gemm_packed(Transpose::kNo, cols, bank + m0 * d, d, qt, 0.0f, st, kQueries);
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t m = target[q0 + i] - m0;
      if (m >= 0 && m < cols) target_logit[q0 + i] = st[m * kQueries + i] * scale;
    }
    detail::lse_cols(st, kQueries, cols, rows, scale, max + q0, sum + q0);
  }
}

// lse[i] over the whole bank and the target logits, rows split over chunks merged in order.
void row_lse(const float* q, const float* bank, const int64_t* target, int64_t b, int64_t n,
             int64_t d, float scale, float* lse, float* target_logit, const Context& ctx) {
  const Split sp = split(b, n);
  std::vector<float> max(sp.chunks * b, -std::numeric_limits<float>::infinity());
  std::vector<float> sum(sp.chunks * b, 0.0f);
  detail::run_tasks(ctx, sp.query_blocks * sp.chunks, [&](int64_t task) {
    const int64_t qb = task / sp.chunks, c = task % sp.chunks;
    fold_rows(q, bank, target, b, n, d, scale, qb, sp.first(c), sp.last(c), &max[c * b],
              &sum[c * b], target_logit);
  });
  for (int64_t i = 0; i < b; ++i) {
    float m = max[i], s = sum[i];
    for (int64_t c = 1; c < sp.chunks; ++c) {
      const float mc = max[c * b + i], sc = sum[c * b + i];
      const float nm = std::max(m, mc);
      s = s * std::exp(m - nm) + sc * std::exp(mc - nm);
      m = nm;
    }
    lse[i] = m + std::log(s);
  }
}

}  // namespace

void bank_ce_forward(const float* q, const float* bank, const int64_t* target, int64_t b, int64_t n,
                     int64_t d, const float* tau, float* lse, float* loss, const Context& ctx) {
  checks::check_bank_sizes("cpu::bank_ce_forward", b, n, d, tau);
  checks::check_targets("cpu::bank_ce_forward", target, b, n);
  MMFL_CHECK(q && bank && lse && loss,
             "cpu::bank_ce_forward: q, bank, lse and loss must not be null");
  std::vector<float> target_logit(b);
  row_lse(q, bank, target, b, n, d, 1.0f / *tau, lse, target_logit.data(), ctx);
  for (int64_t i = 0; i < b; ++i)
    loss[i] = lse[i] - target_logit[i];
}

void bank_ce_backward(const float* q, const float* bank, const int64_t* target, int64_t b,
                      int64_t n, int64_t d, const float* tau, const float* lse,
                      const float* grad_loss, float* grad_q, float* grad_bank, const Context& ctx) {
  checks::check_bank_sizes("cpu::bank_ce_backward", b, n, d, tau);
  checks::check_targets("cpu::bank_ce_backward", target, b, n);
  MMFL_CHECK(q && bank && lse && grad_loss && grad_q,
             "cpu::bank_ce_backward: q, bank, lse, grad_loss and grad_q must not be null");
  const float scale = 1.0f / *tau;
  const Split sp = split(b, n);
  // Chunk c's share of grad_q; with one chunk, grad_q itself.
  std::vector<float> partial(sp.chunks > 1 ? sp.chunks * b * d : 0);
  auto part = [&](int64_t c) { return sp.chunks > 1 ? &partial[c * b * d] : grad_q; };
  // Query block qb against chunk c: that chunk's share of grad_q rows, and (when wanted) the
  // block's contribution to the chunk's grad_bank rows, added in query-block order.
  auto run = [&](int64_t qb, int64_t c) {
    const int64_t q0 = qb * kQueries, rows = std::min(kQueries, b - q0);
    thread_local detail::PackedB qt, qp;
    qt.pack(Transpose::kYes, d, rows, q + q0 * d, d);
    if (grad_bank != nullptr) qp.pack(Transpose::kNo, rows, d, q + q0 * d, d);
    float* st = tile_buffer();
    for (int64_t t = sp.first(c); t < sp.last(c); ++t) {
      const int64_t m0 = t * kTile, cols = std::min(kTile, n - m0);
      detail::gemm_packed(Transpose::kNo, cols, bank + m0 * d, d, qt, 0.0f, st, kQueries);
      detail::bank_dlogits_t(st, kQueries, cols, rows, scale, lse + q0, grad_loss + q0, target + q0,
                             m0);
      sgemm(Transpose::kYes, Transpose::kNo, rows, d, cols, st, kQueries, bank + m0 * d, d,
            t == sp.first(c) ? 0.0f : 1.0f, part(c) + q0 * d, d);
      if (grad_bank != nullptr)
        detail::gemm_packed(Transpose::kNo, cols, st, kQueries, qp, qb == 0 ? 0.0f : 1.0f,
                            grad_bank + m0 * d, d);
    }
  };
  if (grad_bank != nullptr) {
    // A chunk's grad_bank rows belong to one task, which visits the query blocks in order.
    detail::run_tasks(ctx, sp.chunks, [&](int64_t c) {
      for (int64_t qb = 0; qb < sp.query_blocks; ++qb)
        run(qb, c);
    });
  } else {
    detail::run_tasks(ctx, sp.query_blocks * sp.chunks,
                      [&](int64_t task) { run(task / sp.chunks, task % sp.chunks); });
  }
  if (sp.chunks > 1) {
    detail::run_tasks(ctx, sp.query_blocks, [&](int64_t qb) {
      const int64_t q0 = qb * kQueries, rows = std::min(kQueries, b - q0);
      float* dst = grad_q + q0 * d;
      std::copy(part(0) + q0 * d, part(0) + (q0 + rows) * d, dst);
      for (int64_t c = 1; c < sp.chunks; ++c)
        detail::axpy_f32(dst, part(c) + q0 * d, 1.0f, rows * d);
    });
  }
}

void creamfl_ensemble(const float* local, const float* bank, int64_t k, int64_t n, int64_t d,
                      const float* tau, EnsembleWeighting weighting, float* weights, float* out,
                      const Context& ctx) {
  checks::check_bank_sizes("cpu::creamfl_ensemble", k, n, d, tau);
  MMFL_CHECK(local && bank && weights && out,
             "cpu::creamfl_ensemble: local, bank, weights and out must not be null");
  MMFL_CHECK(weighting == EnsembleWeighting::kContrastive || weighting == EnsembleWeighting::kMean,
             "cpu::creamfl_ensemble: unknown EnsembleWeighting ", static_cast<int>(weighting));
  const int64_t rows = k * n;  // every client's representation of every public sample
  if (weighting == EnsembleWeighting::kContrastive) {
    // score[c, j] = log softmax_m (<local[c, j], bank[m]> / tau) at m = j: the bank cross entropy
    // of the k n rows with targets j, negated; written into `weights` first.
    std::vector<int64_t> target(rows);
    for (int64_t r = 0; r < rows; ++r)
      target[r] = r % n;
    std::vector<float> lse(rows);
    row_lse(local, bank, target.data(), rows, n, d, 1.0f / *tau, lse.data(), weights, ctx);
    for (int64_t r = 0; r < rows; ++r)
      weights[r] -= lse[r];
  }
  // Per public sample: softmax over clients (CreamFL eq. 4), then the weighted representation.
  detail::run_tasks(ctx, detail::ceil_div(n, kTile), [&](int64_t block) {
    const int64_t j0 = block * kTile, j1 = std::min(n, j0 + kTile);
    std::vector<double> w(k);
    for (int64_t j = j0; j < j1; ++j) {
      if (weighting == EnsembleWeighting::kContrastive) {
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t c = 0; c < k; ++c)
          mx = std::max(mx, double(weights[c * n + j]));
        double sum = 0;
        for (int64_t c = 0; c < k; ++c)
          sum += (w[c] = std::exp(double(weights[c * n + j]) - mx));
        for (int64_t c = 0; c < k; ++c)
          w[c] /= sum;
      } else {
        std::fill(w.begin(), w.end(), 1.0 / double(k));
      }
      float* dst = out + j * d;
      std::fill(dst, dst + d, 0.0f);
      for (int64_t c = 0; c < k; ++c) {
        weights[c * n + j] = static_cast<float>(w[c]);
        detail::axpy_f32(dst, local + (c * n + j) * d, static_cast<float>(w[c]), d);
      }
    }
  });
}

}  // namespace mmfl::kernels::cpu
