// Internal to kernels/cpu: the vector types the fast CPU path is written in (GCC vector
// extensions, lowered to AVX-512, AVX2 or SSE2 by the clone the dispatcher picks), a vectorizable
// exp, and the helper that runs an op's tasks through the caller's parallel_for.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "mmfl/kernels/cpu.h"

// Hot loops are compiled three times and chosen at load time (GCC function multiversioning), so
// the build needs no -march flag: x86-64-v4 (AVX-512), x86-64-v3 (AVX2 + FMA), the x86-64
// baseline. Elsewhere, and in sanitizer builds (MMFL_CPU_NO_CLONES, kernels/CMakeLists.txt), the
// one generic build is used.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(MMFL_CPU_NO_CLONES)
#define MMFL_CPU_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MMFL_CPU_CLONES
#endif

// The helpers below are inlined into each clone, so they run with the clone's instruction set.
#define MMFL_CPU_INLINE __attribute__((always_inline)) inline

namespace mmfl::kernels::cpu::detail {

// Sixteen lanes: one AVX-512 register, two AVX2 ones, four SSE ones.
constexpr int kLanes = 16;
typedef float VecF __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t VecI __attribute__((vector_size(kLanes * sizeof(int32_t))));

MMFL_CPU_INLINE VecF splat(float v) {
  return VecF{} + v;
}
MMFL_CPU_INLINE VecF load(const float* p) {
  VecF v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
MMFL_CPU_INLINE void store(float* p, VecF v) {
  std::memcpy(p, &v, sizeof v);
}
MMFL_CPU_INLINE VecF vmax(VecF a, VecF b) {
  return a > b ? a : b;
}
MMFL_CPU_INLINE float hmax(VecF v) {
  float m = v[0];
  for (int l = 1; l < kLanes; ++l)
    m = v[l] > m ? v[l] : m;
  return m;
}
// Lanes summed in a fixed order (pairwise), so a result never depends on anything but the data.
MMFL_CPU_INLINE float hsum(VecF v) {
  for (int w = kLanes / 2; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l)
      v[l] += v[l + w];
  return v[0];
}

// exp(x) to about 2 ulp over fp32's normal range, gradually less precise through the subnormals
// (as expf), 0 below -104 and clamped at 88.3 above. Cephes' expf polynomial after the reduction
// x = n ln2 + r, |r| <= ln2 / 2; 2^n applied as two factors so that n down to -150 stays exact.
// Branch-free, so it vectorizes.
template <typename T, typename I>
MMFL_CPU_INLINE T exp_poly(T x) {
  T lo, hi;
  if constexpr (sizeof(T) == sizeof(float)) {
    lo = -104.0f, hi = 88.3f;
  } else {
    lo = splat(-104.0f), hi = splat(88.3f);
  }
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const T n = (x * 1.44269504088896341f + kMagic) - kMagic;
  T r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  T p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const T y = p * (r * r) + r + 1.0f;
  I e;
  if constexpr (sizeof(T) == sizeof(float)) {
    e = static_cast<I>(n);
  } else {
    e = __builtin_convertvector(n, I);
  }
  const I e1 = e >> 1, e2 = e - e1;  // both in [-75, 64]: normal powers of two
  const I b1 = (e1 + 127) << 23, b2 = (e2 + 127) << 23;
  T s1, s2;
  std::memcpy(&s1, &b1, sizeof s1);
  std::memcpy(&s2, &b2, sizeof s2);
  return y * s1 * s2;
}
MMFL_CPU_INLINE float expf_poly(float x) {
  return exp_poly<float, int32_t>(x);
}
MMFL_CPU_INLINE VecF vexp(VecF x) {
  return exp_poly<VecF, VecI>(x);
}

// Runs task(t) for t in [0, num_tasks) through ctx.parallel_for (serially when it is empty).
template <typename F>
void run_tasks(const Context& ctx, int64_t num_tasks, const F& task) {
  if (num_tasks <= 0) return;
  if (!ctx.parallel_for || num_tasks == 1) {
    for (int64_t t = 0; t < num_tasks; ++t)
      task(t);
    return;
  }
  ctx.parallel_for(num_tasks, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t)
      task(t);
  });
}

inline int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// ---- GEMM with a packed B (gemm.cpp)
// --------------------------------------------------------------

// op(B) [k, n] packed once for the micro-kernel (strips of columns, blocks of depth), so an operand
// that meets many tiles is packed (and transposed) once instead of once per tile.
class PackedB {
 public:
  void pack(Transpose trans_b, int64_t k, int64_t n, const float* b, int64_t ldb);
  int64_t k() const { return k_; }
  int64_t n() const { return n_; }
  const float* data() const { return data_.data(); }

 private:
  std::vector<float> data_;
  int64_t k_ = 0, n_ = 0;
};

// C[m, n] = op(A) B + beta C (beta 0 or 1), op(A) [m, b.k()] read in place.
void gemm_packed(Transpose trans_a, int64_t m, const float* a, int64_t lda, const PackedB& b,
                 float beta, float* c, int64_t ldc);

// ---- Vectorized loops over tiles (vec.cpp) ------------------------------------------------------
// A tile is row-major [rows, cols] with row stride ld; `scale` multiplies every value first (the
// 1 / tau of a logit).

// Folds the tile's rows into running log-sum-exps: max[i], sum[i] describe sum_j exp(x - max[i]).
void lse_rows(const float* s, int64_t ld, int64_t rows, int64_t cols, float scale, float* max,
              float* sum);
// The same for the tile's columns: max[j], sum[j] over the rows.
void lse_cols(const float* s, int64_t ld, int64_t rows, int64_t cols, float scale, float* max,
              float* sum);

// InfoNCE's logit gradient, in place: s (raw dot products) becomes
//   coef * (exp(s*scale - lse_r[i]) + exp(s*scale - lse_c[j]) - 2 [i == j + diag]) * scale,
// with diag the global row minus column offset of the tile (no diagonal when out of range).
// Returns sum_ij of the unscaled gradient times s*scale (for grad_tau).
double infonce_dlogits(float* s, int64_t ld, int64_t rows, int64_t cols, float scale,
                       const float* lse_r, const float* lse_c, float coef, int64_t diag);

// Bank cross entropy's logit gradient, in place: s becomes
//   g[i] * (exp(s*scale - lse[i]) - [col0 + j == target[i]]) * scale.
void bank_dlogits(float* s, int64_t ld, int64_t rows, int64_t cols, float scale, const float* lse,
                  const float* g, const int64_t* target, int64_t col0);

// The same on a transposed tile: s[m, i] is query i's logit against bank row row0 + m.
void bank_dlogits_t(float* s, int64_t ld, int64_t rows, int64_t cols, float scale, const float* lse,
                    const float* g, const int64_t* target, int64_t row0);

// acc[j] += w * x[j] for j < n, in float or double.
void axpy_f32(float* acc, const float* x, float w, int64_t n);
void axpy_f64(double* acc, const float* x, double w, int64_t n);
// acc[j] = (((acc[j] + w[0] x[0][j]) + w[1] x[1][j]) + w[2] x[2][j]) + w[3] x[3][j]: four clients
// per pass over acc, rounded exactly as four axpy calls in a row.
void axpy4_f32(float* acc, const float* const* x, const float* w, int64_t n);
void axpy4_f64(double* acc, const float* const* x, const double* w, int64_t n);
// True when all n values are finite.
bool all_finite(const float* x, int64_t n);

}  // namespace mmfl::kernels::cpu::detail
