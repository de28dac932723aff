// The fast CPU path's single-precision GEMM (see mmfl/kernels/cpu.h): op(B) packed into strips of
// NR columns, op(A) read in place by broadcasts, a register-blocked micro-kernel of MR x NR outputs
// per step, written with GCC vector extensions and compiled once per instruction set. The packing
// absorbs B's transpose and the broadcast addresses A's, so S = A B^T, P B and P^T A run the same
// micro-kernel.
#include <algorithm>
#include <vector>

#include "mmfl/error.h"
#include "simd.h"

namespace mmfl::kernels::cpu {
namespace {

// Depth of one packed panel: a kKc x NR strip of B and the MR rows of A it meets stay in L1
// (256 x 32 x 4 B + 8 x 256 x 4 B = 40 KiB for AVX-512's tile).
constexpr int64_t kKc = 256;

// Element (r, c) of op(X) for a row-major X with row stride ld.
struct View {
  const float* p;
  int64_t ld;
  Transpose t;
  float at(int64_t r, int64_t c) const {
    return t == Transpose::kNo ? p[r * ld + c] : p[c * ld + r];
  }
};

// Packs depth [k0, k0 + kc) x columns [0, cols) of op(B) into strips of NR columns (kc x NR).
template <int NR>
void pack_b(const View& b, int64_t k0, int64_t kc, int64_t cols, float* dst) {
  for (int64_t s = 0; s < cols; s += NR) {
    const int64_t nr = std::min<int64_t>(NR, cols - s);
    if (b.t == Transpose::kNo) {
      for (int64_t p = 0; p < kc; ++p) {
        const float* src = b.p + (k0 + p) * b.ld + s;
        for (int64_t j = 0; j < nr; ++j)
          dst[p * NR + j] = src[j];
        for (int64_t j = nr; j < NR; ++j)
          dst[p * NR + j] = 0.0f;
      }
    } else {  // op(B)[p, j] = B[j, p]: read B's rows, write the strip's columns
      for (int64_t j = 0; j < nr; ++j) {
        const float* src = b.p + (s + j) * b.ld + k0;
        for (int64_t p = 0; p < kc; ++p)
          dst[p * NR + j] = src[p];
      }
      for (int64_t j = nr; j < NR; ++j)
        for (int64_t p = 0; p < kc; ++p)
          dst[p * NR + j] = 0.0f;
    }
    dst += kc * NR;
  }
}

// MR x (NV * V lanes) outputs: acc += op(A) rows [mr of them] x depth kc, read in place (the
// broadcasts load single floats, so A needs no packing: row i, depth p is a[i * rs + p * cs]),
// times the packed B strip (kc x NR); then C = acc (+ C when accumulate), only the mr x nr corner
// inside the matrix. Rows past mr repeat row mr - 1 (read, never stored), so nothing is read out of
// bounds.
template <typename V, int MR, int NV, Transpose TA>
__attribute__((always_inline)) inline void micro_kernel(int64_t kc, const float* a, int64_t lda,
                                                        const float* bp, float* c, int64_t ldc,
                                                        bool accumulate, int64_t mr, int64_t nr) {
  constexpr int W = sizeof(V) / sizeof(float);
  constexpr int NR = NV * W;
  const float* rows[MR];
  for (int i = 0; i < MR; ++i)
    rows[i] = TA == Transpose::kNo ? a + std::min<int64_t>(i, mr - 1) * lda
                                   : a + std::min<int64_t>(i, mr - 1);
  V acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v)
      acc[i][v] = V{};
  for (int64_t p = 0; p < kc; ++p) {
    V bv[NV];
    for (int v = 0; v < NV; ++v)
      std::memcpy(&bv[v], bp + p * NR + v * W, sizeof(V));
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const float x = TA == Transpose::kNo ? rows[i][p] : rows[i][p * lda];
      const V ai = x - V{};  // x - (+0) == x exactly: a plain broadcast
      for (int v = 0; v < NV; ++v)
        acc[i][v] += ai * bv[v];
    }
  }
  if (mr == MR && nr == NR) {
    for (int i = 0; i < MR; ++i) {
      for (int v = 0; v < NV; ++v) {
        float* dst = c + i * ldc + v * W;
        V out = acc[i][v];
        if (accumulate) {
          V old;
          std::memcpy(&old, dst, sizeof(V));
          out += old;
        }
        std::memcpy(dst, &out, sizeof(V));
      }
    }
    return;
  }
  alignas(64) float tile[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v)
      std::memcpy(&tile[i][v * W], &acc[i][v], sizeof(V));
  for (int64_t i = 0; i < mr; ++i)
    for (int64_t j = 0; j < nr; ++j)
      c[i * ldc + j] = accumulate ? c[i * ldc + j] + tile[i][j] : tile[i][j];
}

// C[m, n] = op(A) B (+ C) with B packed: for each depth block k0 (kKc deep), its strips of NR
// columns, each kc x NR, at offset k0 * strips * NR + strip * NR * kc.
template <typename V, int MR, int NV, Transpose TA>
__attribute__((always_inline)) inline void gemm_blocked(const float* a, int64_t lda,
                                                        const float* packed, int64_t m, int64_t n,
                                                        int64_t k, float beta, float* c,
                                                        int64_t ldc) {
  constexpr int NR = NV * int(sizeof(V) / sizeof(float));
  const int64_t m_strips = detail::ceil_div(m, MR), n_strips = detail::ceil_div(n, NR);
  for (int64_t k0 = 0; k0 < k; k0 += kKc) {
    const int64_t kc = std::min(kKc, k - k0);
    const bool accumulate = k0 > 0 || beta != 0.0f;
    const float* bk = packed + k0 * n_strips * NR;
    // A's panel at depth k0: element (i, p) of op(A) sits at a0[i * rs + p * cs].
    const float* a0 = TA == Transpose::kNo ? a + k0 : a + k0 * lda;
    for (int64_t js = 0; js < n_strips; ++js) {
      const int64_t nr = std::min<int64_t>(NR, n - js * NR);
      for (int64_t is = 0; is < m_strips; ++is) {
        const int64_t mr = std::min<int64_t>(MR, m - is * MR);
        const float* ai = TA == Transpose::kNo ? a0 + is * MR * lda : a0 + is * MR;
        micro_kernel<V, MR, NV, TA>(kc, ai, lda, bk + js * NR * kc, c + is * MR * ldc + js * NR,
                                    ldc, accumulate, mr, nr);
      }
    }
  }
}

template <typename V, int MR, int NV>
__attribute__((always_inline)) inline void gemm_any(Transpose ta, const float* a, int64_t lda,
                                                    const float* packed, int64_t m, int64_t n,
                                                    int64_t k, float beta, float* c, int64_t ldc) {
  if (ta == Transpose::kNo) {
    gemm_blocked<V, MR, NV, Transpose::kNo>(a, lda, packed, m, n, k, beta, c, ldc);
  } else {
    gemm_blocked<V, MR, NV, Transpose::kYes>(a, lda, packed, m, n, k, beta, c, ldc);
  }
}

// Micro-kernel shapes per instruction set, from the register files: AVX-512 has 32 zmm
// registers, 8 x 32 outputs take 16; AVX2 has 16 ymm, 6 x 16 take 12; SSE2 has 16 xmm, 4 x 8 take
// 8. Each leaves room for the B vectors and the A broadcast.
typedef float V16 __attribute__((vector_size(64)));
typedef float V8 __attribute__((vector_size(32)));
typedef float V4 __attribute__((vector_size(16)));

using GemmFn = void (*)(Transpose, const float*, int64_t, const float*, int64_t, int64_t, int64_t,
                        float, float*, int64_t);

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target("arch=x86-64-v4"))) void gemm_avx512(Transpose ta, const float* a,
                                                           int64_t lda, const float* packed,
                                                           int64_t m, int64_t n, int64_t k,
                                                           float beta, float* c, int64_t ldc) {
  gemm_any<V16, 8, 2>(ta, a, lda, packed, m, n, k, beta, c, ldc);
}
__attribute__((target("arch=x86-64-v3"))) void gemm_avx2(Transpose ta, const float* a, int64_t lda,
                                                         const float* packed, int64_t m, int64_t n,
                                                         int64_t k, float beta, float* c,
                                                         int64_t ldc) {
  gemm_any<V8, 6, 2>(ta, a, lda, packed, m, n, k, beta, c, ldc);
}
#endif
void gemm_baseline(Transpose ta, const float* a, int64_t lda, const float* packed, int64_t m,
                   int64_t n, int64_t k, float beta, float* c, int64_t ldc) {
  gemm_any<V4, 4, 2>(ta, a, lda, packed, m, n, k, beta, c, ldc);
}

struct Dispatch {
  GemmFn gemm;
  int64_t nr;
  const char* name;
};

Dispatch pick() {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return {gemm_avx512, 32, "avx512"};
  if (__builtin_cpu_supports("x86-64-v3")) return {gemm_avx2, 16, "avx2"};
#endif
  return {gemm_baseline, 8, "baseline"};
}

const Dispatch& dispatch() {
  static const Dispatch d = pick();
  return d;
}

template <int NR>
void pack_all(const View& b, int64_t k, int64_t n, float* dst) {
  const int64_t n_strips = detail::ceil_div(n, NR);
  for (int64_t k0 = 0; k0 < k; k0 += kKc) {
    const int64_t kc = std::min(kKc, k - k0);
    pack_b<NR>(b, k0, kc, n, dst + k0 * n_strips * NR);
  }
}

}  // namespace

namespace detail {

void PackedB::pack(Transpose tb, int64_t k, int64_t n, const float* b, int64_t ldb) {
  const int64_t nr = dispatch().nr;
  k_ = k;
  n_ = n;
  const size_t size = size_t(detail::ceil_div(n, nr) * nr * k);
  if (data_.size() < size) data_.resize(size);
  const View v{b, ldb, tb};
  switch (nr) {
    case 32:
      pack_all<32>(v, k, n, data_.data());
      break;
    case 16:
      pack_all<16>(v, k, n, data_.data());
      break;
    case 8:
      pack_all<8>(v, k, n, data_.data());
      break;
    default:
      MMFL_FAIL("cpu::PackedB: unexpected strip width ", nr);
  }
}

void gemm_packed(Transpose trans_a, int64_t m, const float* a, int64_t lda, const PackedB& b,
                 float beta, float* c, int64_t ldc) {
  if (m == 0 || b.n() == 0) return;
  if (b.k() == 0) {
    if (beta == 0.0f)
      for (int64_t i = 0; i < m; ++i)
        std::fill(c + i * ldc, c + i * ldc + b.n(), 0.0f);
    return;
  }
  dispatch().gemm(trans_a, a, lda, b.data(), m, b.n(), b.k(), beta, c, ldc);
}

}  // namespace detail

void sgemm(Transpose trans_a, Transpose trans_b, int64_t m, int64_t n, int64_t k, const float* a,
           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  MMFL_CHECK(m >= 0 && n >= 0 && k >= 0, "cpu::sgemm: sizes must be >= 0, got m=", m, " n=", n,
             " k=", k);
  MMFL_CHECK(beta == 0.0f || beta == 1.0f, "cpu::sgemm: beta must be 0 or 1, got ", beta);
  thread_local detail::PackedB packed;
  packed.pack(trans_b, k, n, b, ldb);
  detail::gemm_packed(trans_a, m, a, lda, packed, beta, c, ldc);
}

const char* isa_name() {
  return dispatch().name;
}

}  // namespace mmfl::kernels::cpu
