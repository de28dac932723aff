// The fast CPU path's vectorized loops over tiles (see simd.h): log-sum-exp folds, logit
// gradients, the aggregation's axpy. Each is built for AVX-512, AVX2 and the baseline, picked at
// load time; lanes are reduced in a fixed order, so results depend on the data alone.
#include <algorithm>
#include <cmath>
#include <limits>

#include "simd.h"

namespace mmfl::kernels::cpu::detail {

namespace {

// Merges a block's (max m, sum s) into a running (max, sum).
inline void merge(float& max, float& sum, float m, float s) {
  const float nm = std::max(max, m);
  if (nm == -std::numeric_limits<float>::infinity()) return;
  sum = sum * std::exp(max - nm) + s * std::exp(m - nm);
  max = nm;
}

}  // namespace

MMFL_CPU_CLONES
void lse_rows(const float* s, int64_t ld, int64_t rows, int64_t cols, float scale, float* max,
              float* sum) {
  const int64_t vec_cols = cols - cols % kLanes;
  const VecF vscale = splat(scale);
  for (int64_t i = 0; i < rows; ++i) {
    const float* row = s + i * ld;
    VecF vm = splat(-std::numeric_limits<float>::infinity());
    for (int64_t j = 0; j < vec_cols; j += kLanes)
      vm = vmax(vm, load(row + j) * vscale);
    float m = hmax(vm);
    for (int64_t j = vec_cols; j < cols; ++j)
      m = std::max(m, row[j] * scale);
    const float nm = std::max(max[i], m);
    const VecF vnm = splat(nm);
    VecF vs{};
    for (int64_t j = 0; j < vec_cols; j += kLanes)
      vs += vexp(load(row + j) * vscale - vnm);
    float t = hsum(vs);
    for (int64_t j = vec_cols; j < cols; ++j)
      t += expf_poly(row[j] * scale - nm);
    merge(max[i], sum[i], nm, t);
  }
}

MMFL_CPU_CLONES
void lse_cols(const float* s, int64_t ld, int64_t rows, int64_t cols, float scale, float* max,
              float* sum) {
  const int64_t vec_cols = cols - cols % kLanes;
  const VecF vscale = splat(scale);
  for (int64_t j = 0; j < vec_cols; j += kLanes) {
    VecF vm = load(max + j);
    for (int64_t i = 0; i < rows; ++i)
      vm = vmax(vm, load(s + i * ld + j) * vscale);
    VecF vs{};
    for (int64_t i = 0; i < rows; ++i)
      vs += vexp(load(s + i * ld + j) * vscale - vm);
    for (int l = 0; l < kLanes; ++l)
      merge(max[j + l], sum[j + l], vm[l], vs[l]);
  }
  for (int64_t j = vec_cols; j < cols; ++j) {
    float m = max[j];
    for (int64_t i = 0; i < rows; ++i)
      m = std::max(m, s[i * ld + j] * scale);
    float t = 0;
    for (int64_t i = 0; i < rows; ++i)
      t += expf_poly(s[i * ld + j] * scale - m);
    merge(max[j], sum[j], m, t);
  }
}

MMFL_CPU_CLONES
double infonce_dlogits(float* s, int64_t ld, int64_t rows, int64_t cols, float scale,
                       const float* lse_r, const float* lse_c, float coef, int64_t diag) {
  const int64_t vec_cols = cols - cols % kLanes;
  const VecF vscale = splat(scale), vcoef = splat(coef);
  double total = 0;
  for (int64_t i = 0; i < rows; ++i) {
    float* row = s + i * ld;
    const int64_t jd = i + diag;  // this row's diagonal element, when the tile holds it
    const bool has_diag = jd >= 0 && jd < cols;
    const float x_diag = has_diag ? row[jd] * scale : 0.0f;
    const VecF vlr = splat(lse_r[i]);
    VecF vt{};
    for (int64_t j = 0; j < vec_cols; j += kLanes) {
      const VecF x = load(row + j) * vscale;
      const VecF p = vcoef * (vexp(x - vlr) + vexp(x - load(lse_c + j)));
      vt += p * x;
      store(row + j, p * vscale);
    }
    float t = hsum(vt);
    for (int64_t j = vec_cols; j < cols; ++j) {
      const float x = row[j] * scale;
      const float p = coef * (expf_poly(x - lse_r[i]) + expf_poly(x - lse_c[j]));
      t += p * x;
      row[j] = p * scale;
    }
    if (has_diag) {  // the -2 [i == j] term of dL/dS
      row[jd] -= 2.0f * coef * scale;
      t -= 2.0f * coef * x_diag;
    }
    total += t;
  }
  return total;
}

MMFL_CPU_CLONES
void bank_dlogits(float* s, int64_t ld, int64_t rows, int64_t cols, float scale, const float* lse,
                  const float* g, const int64_t* target, int64_t col0) {
  const int64_t vec_cols = cols - cols % kLanes;
  const VecF vscale = splat(scale);
  for (int64_t i = 0; i < rows; ++i) {
    float* row = s + i * ld;
    const float gs = g[i] * scale;
    const VecF vl = splat(lse[i]), vg = splat(gs);
    for (int64_t j = 0; j < vec_cols; j += kLanes)
      store(row + j, vg * vexp(load(row + j) * vscale - vl));
    for (int64_t j = vec_cols; j < cols; ++j)
      row[j] = gs * expf_poly(row[j] * scale - lse[i]);
    const int64_t jt = target[i] - col0;
    if (jt >= 0 && jt < cols) row[jt] -= gs;
  }
}

MMFL_CPU_CLONES
void bank_dlogits_t(float* s, int64_t ld, int64_t rows, int64_t cols, float scale, const float* lse,
                    const float* g, const int64_t* target, int64_t row0) {
  const int64_t vec_cols = cols - cols % kLanes;
  const VecF vscale = splat(scale);
  for (int64_t m = 0; m < rows; ++m) {
    float* row = s + m * ld;
    for (int64_t i = 0; i < vec_cols; i += kLanes)
      store(row + i, load(g + i) * vscale * vexp(load(row + i) * vscale - load(lse + i)));
    for (int64_t i = vec_cols; i < cols; ++i)
      row[i] = g[i] * scale * expf_poly(row[i] * scale - lse[i]);
  }
  for (int64_t i = 0; i < cols; ++i) {
    const int64_t m = target[i] - row0;
    if (m >= 0 && m < rows) s[m * ld + i] -= g[i] * scale;
  }
}

MMFL_CPU_CLONES
void axpy_f32(float* __restrict acc, const float* __restrict x, float w, int64_t n) {
  for (int64_t j = 0; j < n; ++j)
    acc[j] += w * x[j];
}

MMFL_CPU_CLONES
void axpy_f64(double* __restrict acc, const float* __restrict x, double w, int64_t n) {
  for (int64_t j = 0; j < n; ++j)
    acc[j] += w * static_cast<double>(x[j]);
}

MMFL_CPU_CLONES
void axpy4_f32(float* __restrict acc, const float* const* x, const float* w, int64_t n) {
  const float* __restrict x0 = x[0];
  const float* __restrict x1 = x[1];
  const float* __restrict x2 = x[2];
  const float* __restrict x3 = x[3];
  const float w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
  for (int64_t j = 0; j < n; ++j) {
    float a = acc[j];
    a += w0 * x0[j];
    a += w1 * x1[j];
    a += w2 * x2[j];
    a += w3 * x3[j];
    acc[j] = a;
  }
}

MMFL_CPU_CLONES
void axpy4_f64(double* __restrict acc, const float* const* x, const double* w, int64_t n) {
  const float* __restrict x0 = x[0];
  const float* __restrict x1 = x[1];
  const float* __restrict x2 = x[2];
  const float* __restrict x3 = x[3];
  const double w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
  for (int64_t j = 0; j < n; ++j) {
    double a = acc[j];
    a += w0 * static_cast<double>(x0[j]);
    a += w1 * static_cast<double>(x1[j]);
    a += w2 * static_cast<double>(x2[j]);
    a += w3 * static_cast<double>(x3[j]);
    acc[j] = a;
  }
}

MMFL_CPU_CLONES
bool all_finite(const float* x, int64_t n) {
  // x - x is 0 for finite x and NaN for NaN or +-Inf; NaN != NaN.
  const int64_t vec_n = n - n % kLanes;
  VecI ok = VecI{} - 1;
  for (int64_t j = 0; j < vec_n; j += kLanes) {
    const VecF v = load(x + j);
    ok &= (v - v) == 0.0f;
  }
  bool all = true;
  for (int l = 0; l < kLanes; ++l)
    all = all && ok[l] != 0;
  for (int64_t j = vec_n; j < n; ++j)
    all = all && (x[j] - x[j]) == 0.0f;
  return all;
}

}  // namespace mmfl::kernels::cpu::detail
