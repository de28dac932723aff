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

}  // namespace

void infonce_forward(const float* img, const float* txt, int64_t n, int64_t d, const float* tau,
                     float* loss, float* lse_img, float* lse_txt, const Context& ctx) {
  checks::check_infonce_args("cpu::infonce_forward", img, txt, n, d, tau);
  MMFL_CHECK(loss != nullptr && lse_img != nullptr && lse_txt != nullptr,
             "cpu::infonce_forward: loss, lse_img and lse_txt must not be null");
  const float scale = 1.0f / *tau;
  const int64_t nb = detail::ceil_div(n, kTile);
  const float ninf = -std::numeric_limits<float>::infinity();
  std::vector<float> row_max(n, ninf), row_sum(n, 0.0f), col_max(n, ninf), col_sum(n, 0.0f);
  std::vector<float> diag(n);
  for (int64_t r = 0; r < nb; ++r) {
    detail::run_tasks(ctx, nb, [&](int64_t i) {
      const int64_t j = (i + r) % nb;
      const Block bi = block(i, n), bj = block(j, n);
      thread_local std::vector<float> s;
      s.resize(kTile * kTile);
      sgemm(Transpose::kNo, Transpose::kYes, bi.size, bj.size, d, img + bi.begin * d, d,
            txt + bj.begin * d, d, 0.0f, s.data(), kTile);
      if (i == j)
        for (int64_t t = 0; t < bi.size; ++t)
          diag[bi.begin + t] = s[t * kTile + t] * scale;
      detail::lse_rows(s.data(), kTile, bi.size, bj.size, scale, &row_max[bi.begin],
                       &row_sum[bi.begin]);
      detail::lse_cols(s.data(), kTile, bi.size, bj.size, scale, &col_max[bj.begin],
                       &col_sum[bj.begin]);
    });
  }
  double total = 0;  // sum_i (lse_img_i - S_ii) + sum_j (lse_txt_j - S_jj)
  for (int64_t i = 0; i < n; ++i) {
    lse_img[i] = row_max[i] + std::log(row_sum[i]);
    lse_txt[i] = col_max[i] + std::log(col_sum[i]);
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
  std::vector<double> weighted(nb * nb);  // per (round, task): sum_ij dL/dS_ij S_ij
  for (int64_t r = 0; r < nb; ++r) {
    detail::run_tasks(ctx, nb, [&](int64_t i) {
      const int64_t j = (i + r) % nb;
      const Block bi = block(i, n), bj = block(j, n);
      thread_local std::vector<float> s;
      s.resize(kTile * kTile);
      sgemm(Transpose::kNo, Transpose::kYes, bi.size, bj.size, d, img + bi.begin * d, d,
            txt + bj.begin * d, d, 0.0f, s.data(), kTile);
      weighted[r * nb + i] =
          detail::infonce_dlogits(s.data(), kTile, bi.size, bj.size, scale, lse_img + bi.begin,
                                  lse_txt + bj.begin, coef, bi.begin - bj.begin);
      // Round 0 is every block's first tile (i == j): it writes, later rounds add.
      const float beta = r == 0 ? 0.0f : 1.0f;
      sgemm(Transpose::kNo, Transpose::kNo, bi.size, d, bj.size, s.data(), kTile,
            txt + bj.begin * d, d, beta, grad_img + bi.begin * d, d);
      sgemm(Transpose::kYes, Transpose::kNo, bj.size, d, bi.size, s.data(), kTile,
            img + bi.begin * d, d, beta, grad_txt + bj.begin * d, d);
    });
  }
  double total = 0;
  for (double w : weighted)
    total += w;
  *grad_tau = static_cast<float>(-total * scale);
}

}  // namespace mmfl::kernels::cpu
