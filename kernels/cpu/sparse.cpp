// Fast CPU sparse ops. Top-k: one task per row. A strided sample of the row gives a threshold a
// little below the k-th largest magnitude; one vectorized pass copies the row to the residual and
// collects the (few) candidates at or above it, already in index order; the exact k-th key is
// selected among the candidates; a last walk over the candidates packs them and zeroes their
// residual entries. The row is read from memory once (a rank-64 LoRA delta of a 1024x1024 layer,
// 512 KiB, stays in L2 for the later steps). The selection is exact, so the results are the
// reference's bit for bit, for any number of threads.
// Aggregation: one task per chunk of the output, clients added in order (the reference's order),
// each client's entries in the chunk found by binary search in its ascending indices.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <vector>

// The AVX-512 candidate scan is built where the other hot loops get their AVX-512 clones (GCC on
// x86-64, no sanitizer) and runs where the dispatcher picked AVX-512 (isa_name()).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(MMFL_CPU_NO_CLONES)
#define MMFL_TOPK_AVX512 1
#include <immintrin.h>
#else
#define MMFL_TOPK_AVX512 0
#endif

#include "../common/sparse_checks.h"
#include "mmfl/kernels/sparse.h"
#include "simd.h"  // run_tasks, ceil_div

namespace mmfl::kernels::cpu {
namespace {

// Values per row sampled to place the threshold: enough that the rank estimate's spread
// (sqrt(s p (1 - p)) of s samples) keeps the candidates within a few percent of k.
constexpr int64_t kSamples = 512;
// Output values per aggregation task: the running sums (32 KiB in fp64) stay in L1.
constexpr int64_t kSumChunk = 4096;

inline uint32_t magnitude_key(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return bits & 0x7fffffffu;
}

// A key t such that, with high probability, between k and a little more than k of the row's keys
// are >= t: the sample's key of descending rank p s + 4 sigma + 2 (p = k / n). 0 (every entry a
// candidate) when that rank falls off the sample. 1 <= k < n.
uint32_t sample_threshold(const float* row, int64_t n, int64_t k, std::vector<uint32_t>& keys) {
  const int64_t s = std::min(n, kSamples);
  keys.resize(static_cast<size_t>(s));
  for (int64_t i = 0; i < s; ++i)
    keys[i] = magnitude_key(row[(i * n) / s]);
  const double p = double(k) / double(n);
  const double rank = p * double(s) + 4.0 * std::sqrt(double(s) * p * (1.0 - p)) + 2.0;
  if (rank >= double(s)) return 0;
  const auto r = static_cast<int64_t>(rank);
  std::nth_element(keys.begin(), keys.begin() + r, keys.end(), std::greater<uint32_t>());
  return keys[r];
}

// Appends to cand the index of every entry whose key is >= t, in ascending order, for entries
// [b, end) of the row; m is the count so far, the new count is returned. cand holds n + 1 (the
// branch-free append writes one slot ahead). Scalar: about a cycle an entry (the running count is
// a serial dependency).
int64_t collect_scalar(const float* row, int64_t b, int64_t end, uint32_t t, int32_t* cand,
                       int64_t m) {
  for (int64_t j = b; j < end; ++j) {
    cand[m] = static_cast<int32_t>(j);
    m += magnitude_key(row[j]) >= t ? 1 : 0;
  }
  return m;
}

#if MMFL_TOPK_AVX512
// The same with AVX-512: 16 keys compared at once, the hits' indices written contiguously by a
// compress store (a few instructions per 16 entries instead of 16 dependent appends).
__attribute__((target("arch=x86-64-v4"))) int64_t collect_avx512(const float* row, int64_t b,
                                                                 int64_t end, uint32_t t,
                                                                 int32_t* cand, int64_t m) {
  const __m512i tv = _mm512_set1_epi32(static_cast<int32_t>(t));
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff);
  const __m512i step = _mm512_set1_epi32(16);
  __m512i idx =
      _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(b)),
                       _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  int64_t j = b;
  for (; j + 16 <= end; j += 16) {
    const __m512i key = _mm512_and_si512(_mm512_loadu_si512(row + j), abs_mask);
    const __mmask16 hit = _mm512_cmpge_epu32_mask(key, tv);
    _mm512_mask_compressstoreu_epi32(cand + m, hit, idx);
    m += __builtin_popcount(static_cast<unsigned>(hit));
    idx = _mm512_add_epi32(idx, step);
  }
  return collect_scalar(row, j, end, t, cand, m);
}

#endif

// Appends to cand the index of every entry whose key is >= t, in ascending order, and copies the
// row to res (unless res is null), block by block: each block is copied (memcpy's wide stores)
// and then scanned from L1, so the row is read from memory once. Returns the number of
// candidates.
int64_t copy_and_collect(const float* row, float* res, int64_t n, uint32_t t, int32_t* cand) {
  constexpr int64_t kBlock = 2048;  // 8 KiB: stays in L1 between the copy and the scan
  int64_t m = 0;
  static const bool wide = MMFL_TOPK_AVX512 && std::strcmp(isa_name(), "avx512") == 0;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t end = std::min(n, b + kBlock);
    if (res != nullptr) std::memcpy(res + b, row + b, static_cast<size_t>(end - b) * sizeof(float));
#if MMFL_TOPK_AVX512
    if (wide) {
      m = collect_avx512(row, b, end, t, cand, m);
      continue;
    }
#endif
    m = collect_scalar(row, b, end, t, cand, m);
  }
  return m;
}

// The k-th largest of keys[0, m) (1 <= k < m), and how many keys equal to it are sent: k minus
// the number above it. A histogram of the top 12 key bits (the exponent and 3 mantissa bits)
// narrows the search to one bin, whose keys alone are partially sorted; keys is reordered.
void kth_largest(std::vector<uint32_t>& keys, int64_t m, int64_t k, uint32_t* kth, int64_t* ties) {
  auto nth = [&](int64_t len, int64_t rank) {  // rank-th largest (0-based) of keys[0, len)
    std::nth_element(keys.begin(), keys.begin() + rank, keys.begin() + len,
                     std::greater<uint32_t>());
    return keys[rank];
  };
  constexpr int kShift = 19;
  constexpr int kHistBins = 1 << (31 - kShift);
  int64_t above = 0, len = m;
  if (m > 256) {  // below this nth_element alone is as fast
    thread_local std::vector<int32_t> hist;
    hist.assign(kHistBins, 0);
    for (int64_t i = 0; i < m; ++i)
      ++hist[keys[i] >> kShift];
    uint32_t b = kHistBins - 1;
    for (; b > 0; --b) {
      if (above + hist[b] >= k) break;
      above += hist[b];
    }
    len = 0;
    for (int64_t i = 0; i < m; ++i) {  // branch-free compaction (len <= i: never ahead)
      const uint32_t key = keys[i];
      keys[len] = key;
      len += (key >> kShift) == b ? 1 : 0;
    }
  }
  *kth = nth(len, k - above - 1);
  int64_t greater = 0;
  for (int64_t i = 0; i < len; ++i)
    greater += keys[i] > *kth ? 1 : 0;
  *ties = k - above - greater;
}

void topk_row(const float* row, int64_t n, int64_t k, int32_t* indices, float* values, float* res) {
  const bool copy = res != row;
  if (k == 0) {
    if (copy) std::memcpy(res, row, static_cast<size_t>(n) * sizeof(float));
    return;
  }
  thread_local std::vector<int32_t> cand;
  thread_local std::vector<uint32_t> keys;
  cand.resize(static_cast<size_t>(n + 1));
  const uint32_t t = k == n ? 0 : sample_threshold(row, n, k, keys);
  int64_t m = copy_and_collect(row, copy ? res : nullptr, n, t, cand.data());
  if (m < k) {  // the sample misjudged (rare, or adversarial data): every entry is a candidate
    for (int64_t j = 0; j < n; ++j)
      cand[j] = static_cast<int32_t>(j);
    m = n;
  }
  // The exact k-th largest key among the candidates, and how many entries equal to it are sent
  // (the lowest-indexed ones).
  keys.resize(static_cast<size_t>(m));
  for (int64_t i = 0; i < m; ++i)
    keys[i] = magnitude_key(row[cand[i]]);
  const bool all = m == k;  // every candidate is sent
  uint32_t kth = 0;
  int64_t ties = 0;
  if (!all) kth_largest(keys, m, k, &kth, &ties);
  // Branch-free: every candidate is written at slot o, which advances only when it is taken
  // (whether a candidate falls below the k-th key is data, and a branch on it mispredicts); an
  // entry not taken keeps its value in the residual (res[j] already holds it).
  int64_t o = 0;
  for (int64_t i = 0; i < m && o < k; ++i) {
    const int32_t j = cand[i];
    const float v = row[j];
    const uint32_t key = magnitude_key(v);
    const bool tie = key == kth;
    const bool take = all || key > kth || (tie && ties > 0);
    ties -= (!all && tie && take) ? 1 : 0;
    indices[o] = j;
    values[o] = v;
    res[j] = take ? 0.0f : v;
    o += take ? 1 : 0;
  }
  MMFL_CHECK(o == k, "cpu::topk_by_magnitude: internal error: packed ", o, " of k = ", k);
}

template <typename Acc>
void sum_chunk(const int32_t* indices, const float* values, const float* weights, int64_t rows,
               int64_t k, int64_t j0, int64_t len, float* out) {
  thread_local std::vector<Acc> sum;
  sum.assign(static_cast<size_t>(len), Acc(0));
  const int32_t lo_j = static_cast<int32_t>(j0), hi_j = static_cast<int32_t>(j0 + len);
  for (int64_t c = 0; c < rows; ++c) {
    const int32_t* idx = indices + c * k;
    const int32_t* lo = std::lower_bound(idx, idx + k, lo_j);
    const int32_t* hi = std::lower_bound(lo, idx + k, hi_j);
    const Acc w = static_cast<Acc>(weights[c]);
    const float* val = values + c * k;
    for (const int32_t* e = lo; e < hi; ++e)
      sum[*e - lo_j] += w * static_cast<Acc>(val[e - idx]);
  }
  for (int64_t j = 0; j < len; ++j)
    out[j0 + j] = static_cast<float>(sum[j]);
}

}  // namespace

void topk_by_magnitude(const float* x, int64_t rows, int64_t n, int64_t k, int32_t* indices,
                       float* values, float* residual, const Context& ctx) {
  checks::check_topk_args("cpu::topk_by_magnitude", x, rows, n, k, indices, values, residual);
  if (n == 0) return;
  detail::run_tasks(ctx, rows, [&](int64_t c) {
    topk_row(x + c * n, n, k, indices + c * k, values + c * k, residual + c * n);
  });
}

void sparse_weighted_sum(const int32_t* indices, const float* values, const float* weights,
                         int64_t rows, int64_t k, int64_t n, float* out, Accumulator acc,
                         const Context& ctx) {
  const char* fn = "cpu::sparse_weighted_sum";
  checks::check_sparse_sum_args(fn, indices, values, weights, rows, k, n, out, acc);
  // Validate every row (in parallel) before anything is written; report the first bad row.
  std::vector<int64_t> bad(static_cast<size_t>(rows), -1);
  if (k > 0)
    detail::run_tasks(ctx, rows,
                      [&](int64_t c) { bad[c] = checks::first_bad_entry(indices + c * k, k, n); });
  for (int64_t c = 0; c < rows; ++c)
    if (bad[c] >= 0) checks::fail_bad_entry(fn, indices + c * k, c, bad[c], n);
  if (n == 0) return;
  detail::run_tasks(ctx, detail::ceil_div(n, kSumChunk), [&](int64_t chunk) {
    const int64_t j0 = chunk * kSumChunk, len = std::min(kSumChunk, n - j0);
    if (acc == Accumulator::kFloat32) {
      sum_chunk<float>(indices, values, weights, rows, k, j0, len, out);
    } else {
      sum_chunk<double>(indices, values, weights, rows, k, j0, len, out);
    }
  });
}

}  // namespace mmfl::kernels::cpu
