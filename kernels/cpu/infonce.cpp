// Fast CPU InfoNCE: 256 x 256 tiles of S = img txt^T from the packed GEMM, the online
// log-sum-exp folded per tile into rows and columns, the backward recomputing S per tile.
// Tiles are visited in rounds: in round r, task i takes tile (i, (i + r) mod nb), so within a
// round every task owns its row block and its column block, and every row and every column
// meets its tiles in a fixed order; the results are the same bits for any number of threads.
#include <cmath>
#include <limits>
#include <vector>

#include "../common/host_checks.h"
#include "mmfl/kernels/infonce.h"
#include "simd.h"

namespace mmfl::kernels::cpu {
namespace {

// 256 x 256 fp32 logits (256 KiB) stay in L2 while the row and column passes read them; each
// tile's GEMMs pack a 256-row panel (256 x d), so packing costs 1/256 of the multiply-adds
// (measured: 128-row tiles spent ~14% of the time packing).
constexpr int64_t kTile = 256;

struct Block {
  int64_t begin, size;
};
Block block(int64_t index, int64_t n) {
  return {index * kTile, std::min(kTile, n - index * kTile)};
}

// Per row block of img: op(B) = img_i^T for the logits tile S^T = txt_j img_i^T, and img_i itself
// for grad_txt_j += dS^T img_i; packed once, reused by every tile of the block's row.
struct PackedImg {
  std::vector<detail::PackedB> transposed, plain;
};

PackedImg pack_img(const float* img, int64_t n, int64_t d, bool plain, const Context& ctx) {
  const int64_t nb = detail::ceil_div(n, kTile);
  PackedImg p{std::vector<detail::PackedB>(nb), std::vector<detail::PackedB>(plain ? nb : 0)};
  detail::run_tasks(ctx, nb, [&](int64_t i) {
    const Block bi = block(i, n);
    p.transposed[i].pack(Transpose::kYes, d, bi.size, img + bi.begin * d, d);
    if (plain) p.plain[i].pack(Transpose::kNo, bi.size, d, img + bi.begin * d, d);
  });
  return p;
}

float* tile_buffer() {
  thread_local std::vector<float> s;
  s.resize(kTile * kTile);
  return s.data();
}

}  // namespace

// Tiles hold S^T: rows are txt rows j, columns img rows i, so the GEMM's packed operand is img_i^T,
// packed once per call.
void infonce_forward(const float* img, const float* txt, int64_t n, int64_t d, const float* tau,
                     float* loss, float* lse_img, float* lse_txt, const Context& ctx) {
  checks::check_infonce_args("cpu::infonce_forward", img, txt, n, d, tau);
  MMFL_CHECK(loss != nullptr && lse_img != nullptr && lse_txt != nullptr,
             "cpu::infonce_forward: loss, lse_img and lse_txt must not be null");
  const float scale = 1.0f / *tau;
  const int64_t nb = detail::ceil_div(n, kTile);
  const float ninf = -std::numeric_limits<float>::infinity();
  std::vector<float> img_max(n, ninf), img_sum(n, 0.0f), txt_max(n, ninf), txt_sum(n, 0.0f);
  std::vector<float> diag(n);
  const PackedImg packed = pack_img(img, n, d, false, ctx);
  for (int64_t r = 0; r < nb; ++r) {
    detail::run_tasks(ctx, nb, [&](int64_t i) {
      const int64_t j = (i + r) % nb;
      const Block bi = block(i, n), bj = block(j, n);
      float* st = tile_buffer();
      detail::gemm_packed(Transpose::kNo, bj.size, txt + bj.begin * d, d, packed.transposed[i],
                          0.0f, st, kTile);
      if (i == j)
        for (int64_t t = 0; t < bi.size; ++t)
          diag[bi.begin + t] = st[t * kTile + t] * scale;
      detail::lse_cols(st, kTile, bj.size, bi.size, scale, &img_max[bi.begin], &img_sum[bi.begin]);
      detail::lse_rows(st, kTile, bj.size, bi.size, scale, &txt_max[bj.begin], &txt_sum[bj.begin]);
    });
  }
  double total = 0;  // sum_i (lse_img_i - S_ii) + sum_j (lse_txt_j - S_jj)
  for (int64_t i = 0; i < n; ++i) {
    lse_img[i] = img_max[i] + std::log(img_sum[i]);
    lse_txt[i] = txt_max[i] + std::log(txt_sum[i]);
    total += (double(lse_img[i]) - diag[i]) + (double(lse_txt[i]) - diag[i]);
  }
  *loss = static_cast<float>(0.5 * total / static_cast<double>(n));
}

void infonce_backward(const float* img, const float* txt, int64_t n, int64_t d, const float* tau,
                      const float* lse_img, const float* lse_txt, const float* grad_loss,
                      float* grad_img, float* grad_txt, float* grad_tau, const Context& ctx) {
  checks::check_infonce_args("cpu::infonce_backward", img, txt, n, d, tau);
  MMFL_CHECK(lse_img != nullptr && lse_txt != nullptr && grad_loss != nullptr,
             "cpu::infonce_backward: lse_img, lse_txt and grad_loss must not be null");
  MMFL_CHECK(grad_img != nullptr && grad_txt != nullptr && grad_tau != nullptr,
             "cpu::infonce_backward: grad_img, grad_txt and grad_tau must not be null");
  const float scale = 1.0f / *tau;
  const float coef = static_cast<float>(double(*grad_loss) / (2.0 * double(n)));
  const int64_t nb = detail::ceil_div(n, kTile);
  const PackedImg packed = pack_img(img, n, d, true, ctx);
  std::vector<double> weighted(nb * nb);  // per (round, task): sum_ij dL/dS_ij S_ij
  for (int64_t r = 0; r < nb; ++r) {
    detail::run_tasks(ctx, nb, [&](int64_t i) {
      const int64_t j = (i + r) % nb;
      const Block bi = block(i, n), bj = block(j, n);
      float* st = tile_buffer();
      detail::gemm_packed(Transpose::kNo, bj.size, txt + bj.begin * d, d, packed.transposed[i],
                          0.0f, st, kTile);
      // dS^T, symmetric in its two log-sum-exps: rows take lse_txt, columns lse_img.
      weighted[r * nb + i] =
          detail::infonce_dlogits(st, kTile, bj.size, bi.size, scale, lse_txt + bj.begin,
                                  lse_img + bi.begin, coef, bj.begin - bi.begin);
      // Round 0 is every block's first tile (i == j): it writes, later rounds add.
      const float beta = r == 0 ? 0.0f : 1.0f;
      sgemm(Transpose::kYes, Transpose::kNo, bi.size, d, bj.size, st, kTile, txt + bj.begin * d, d,
            beta, grad_img + bi.begin * d, d);
      detail::gemm_packed(Transpose::kNo, bj.size, st, kTile, packed.plain[i], beta,
                          grad_txt + bj.begin * d, d);
    });
  }
  double total = 0;
  for (double w : weighted)
    total += w;
  *grad_tau = static_cast<float>(-total * scale);
}

}  // namespace mmfl::kernels::cpu
