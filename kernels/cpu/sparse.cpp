// Fast CPU sparse ops. Top-k: one task per row. A strided sample of the row gives a threshold a
// little below the k-th largest magnitude; one vectorized pass collects the (few) candidates at or
// above it with their values, already in index order (and, on the scalar path, copies the row to
// the residual); the exact k-th key is selected among the candidates (AVX-512: counting passes;
// elsewhere a histogram and nth_element); a last walk over the candidates packs them and zeroes
// their residual entries (AVX-512 with a separate residual: one streaming pass writes it). The row
// is read from memory once (a rank-64 LoRA delta of a 1024x1024 layer, 512 KiB, stays in L2 for
// the later steps), and the thread's next row is prefetched meanwhile. The selection is exact, so
// the results are the reference's bit for bit, for any number of threads.
// Aggregation: one task per chunk of the output, clients added in order (the reference's order),
// each client's entries in the chunk found by a search from an interpolated guess in its ascending
// indices.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
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

// Values per row sampled to place the threshold: at least kMinSamples, and one in kSampleStride
// for long rows, so that the margin of 4 standard deviations of the rank estimate (4 sqrt(s p (1 -
// p)) samples, n / s entries each) stays a small part of k: with 512 samples at 10% density, 57%
// more candidates than k; with 2,048, 27%. The samples are read from L2 (the row was prefetched)
// and selected by counting passes, so they cost little against the candidates they spare.
constexpr int64_t kMinSamples = 512;
constexpr int64_t kSampleStride = 64;
// Output values per aggregation task: the running sums (32 KiB in fp64) stay in L1.
constexpr int64_t kSumChunk = 4096;

inline uint32_t magnitude_key(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return bits & 0x7fffffffu;
}

// Whether the AVX-512 scan and pack run: built, and AVX-512 is what the dispatcher picked.
bool wide_path() {
  static const bool wide = MMFL_TOPK_AVX512 && std::strcmp(isa_name(), "avx512") == 0;
  return wide;
}

// The candidates of a row: the entries whose key is >= the threshold, in ascending index order,
// with their values (whose keys are recomputed where needed, a mask), so that nothing after the
// scan reads the row again. Each array holds n + 16 (the vector scan stores 16 lanes past the
// count).
struct Candidates {
  int32_t* idx;
  float* val;
};

// Appends the candidates among entries [b, end) of the row after the m found so far; returns the
// new count. Branch-free: every entry is written at slot m, which advances only for a candidate.
int64_t collect_scalar(const float* row, int64_t b, int64_t end, uint32_t t, const Candidates& c,
                       int64_t m) {
  for (int64_t j = b; j < end; ++j) {
    const float v = row[j];
    const uint32_t key = magnitude_key(v);
    c.idx[m] = static_cast<int32_t>(j);
    c.val[m] = v;
    m += key >= t ? 1 : 0;
  }
  return m;
}

#if MMFL_TOPK_AVX512
// The same with AVX-512: 16 keys compared at once, the hits compressed within registers and
// stored as full vectors (the lanes past the hits are overwritten by the next store; a compress
// straight to memory is microcoded and several times slower).
// pf: where to prefetch into L2 alongside (the next row's same entries; row itself when there is
// none).
__attribute__((target("arch=x86-64-v4"))) int64_t collect_avx512(const float* row, int64_t b,
                                                                 int64_t end, uint32_t t,
                                                                 const Candidates& c, int64_t m,
                                                                 const float* pf) {
  const __m512i tv = _mm512_set1_epi32(static_cast<int32_t>(t));
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff);
  const __m512i step = _mm512_set1_epi32(16);
  __m512i idx =
      _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(b)),
                       _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  int64_t j = b;
  for (; j + 16 <= end; j += 16) {
    _mm_prefetch(reinterpret_cast<const char*>(pf + j), _MM_HINT_T1);
    const __m512i v = _mm512_loadu_si512(row + j);
    const __m512i key = _mm512_and_si512(v, abs_mask);
    const __mmask16 hit = _mm512_cmpge_epu32_mask(key, tv);
    _mm512_storeu_si512(c.idx + m, _mm512_maskz_compress_epi32(hit, idx));
    _mm512_storeu_si512(c.val + m, _mm512_maskz_compress_epi32(hit, v));
    m += __builtin_popcount(static_cast<unsigned>(hit));
    idx = _mm512_add_epi32(idx, step);
  }
  return collect_scalar(row, j, end, t, c, m);
}

// The first min(16, left) lanes.
inline __mmask16 lanes(int64_t left) {
  return left >= 16 ? __mmask16(0xffff) : __mmask16((1u << static_cast<unsigned>(left)) - 1);
}

// Of 16 entries in index order, the sent ones: keys above kv, and the lowest-indexed of those equal
// to it while `ties` lasts (decremented by each one taken).
__attribute__((target("arch=x86-64-v4"))) inline __mmask16 taken_lanes(__m512i key, __m512i kv,
                                                                       __mmask16 valid,
                                                                       int64_t& ties) {
  __mmask16 take = _mm512_mask_cmpgt_epu32_mask(valid, key, kv);
  unsigned eq = _mm512_mask_cmpeq_epu32_mask(valid, key, kv);
  for (; eq != 0 && ties > 0; --ties) {
    take |= static_cast<__mmask16>(eq & (~eq + 1));  // the lowest tied lane
    eq &= eq - 1;
  }
  return take;
}

// Packs the taken candidates in order and zeroes them in res (unless null): every key above kth,
// and the first
// `ties` keys equal to it (the lowest-indexed: the candidates are in index order). 16 candidates
// per step; the rare vector holding keys equal to kth picks its tied lanes one by one. Returns the
// number packed.
__attribute__((target("arch=x86-64-v4"))) int64_t pack_avx512(const Candidates& c, int64_t m,
                                                              uint32_t kth, int64_t ties,
                                                              int32_t* indices, float* values,
                                                              float* res) {
  const __m512i kv = _mm512_set1_epi32(static_cast<int32_t>(kth));
  int64_t o = 0;
  for (int64_t i = 0; i < m; i += 16) {
    const __mmask16 valid = lanes(m - i);
    const __m512i val = _mm512_maskz_loadu_epi32(valid, c.val + i);
    const __m512i key = _mm512_and_si512(val, _mm512_set1_epi32(0x7fffffff));
    const __mmask16 take = taken_lanes(key, kv, valid, ties);
    const __m512i idx = _mm512_maskz_loadu_epi32(valid, c.idx + i);
    _mm512_mask_compressstoreu_epi32(indices + o, take, idx);
    if (res != nullptr)  // sent: out of the residual
      _mm512_mask_i32scatter_ps(res, take, idx, _mm512_setzero_ps(), 4);
    _mm512_mask_compressstoreu_ps(values + o, take, _mm512_castsi512_ps(val));
    o += __builtin_popcount(static_cast<unsigned>(take));
  }
  return o;
}

// res = row with the sent entries set to +0 (keys above kth, and the first `ties` keys equal to
// it), in one pass over the row (read from L2: the scan just read it) with streaming stores where
// res is 64-byte aligned: the residual is written without first being read into the cache, so the
// copy costs one write of the row instead of a read and a write.
__attribute__((target("arch=x86-64-v4"))) void write_residual_avx512(const float* row, float* res,
                                                                     int64_t n, uint32_t kth,
                                                                     int64_t ties) {
  const __m512i kv = _mm512_set1_epi32(static_cast<int32_t>(kth));
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff);
  const bool aligned = reinterpret_cast<uintptr_t>(res) % 64 == 0;
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 valid = lanes(n - j);
    const __m512 v = _mm512_maskz_loadu_ps(valid, row + j);
    const __m512i key = _mm512_and_si512(_mm512_castps_si512(v), abs_mask);
    const __mmask16 take = taken_lanes(key, kv, valid, ties);
    const __m512 out = _mm512_mask_mov_ps(v, take, _mm512_setzero_ps());
    if (aligned && valid == 0xffff) {
      _mm512_stream_ps(res + j, out);
    } else {
      _mm512_mask_storeu_ps(res + j, valid, out);
    }
  }
  _mm_sfence();  // the streaming stores are ordered before whatever the caller does next
}

// How many of the keys of data[0, m) (each element's bits with the sign cleared) are >= x.
__attribute__((target("arch=x86-64-v4"))) int64_t count_ge_avx512(const uint32_t* data, int64_t m,
                                                                  uint32_t x) {
  const __m512i xv = _mm512_set1_epi32(static_cast<int32_t>(x));
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff);
  int64_t count = 0, i = 0;
  for (; i + 16 <= m; i += 16) {
    const __m512i key = _mm512_and_si512(_mm512_loadu_si512(data + i), abs_mask);
    count += __builtin_popcount(static_cast<unsigned>(_mm512_cmpge_epu32_mask(key, xv)));
  }
  const __mmask16 tail = lanes(m - i);
  const __m512i key = _mm512_and_si512(_mm512_maskz_loadu_epi32(tail, data + i), abs_mask);
  return count +
         __builtin_popcount(static_cast<unsigned>(_mm512_mask_cmpge_epu32_mask(tail, key, xv)));
}

// The k-th largest key of data[0, m) (keys as in count_ge_avx512, every one >= floor; 1 <= k <=
// m) and how many keys are above it. Counting passes (16 keys a step, no stores) narrow a bracket
// [lo, hi) with cnt(lo)
// >= k > cnt(hi), stepping by interpolation on the counts and by halving in turn, until at most 64
// keys are inside; those are partially sorted in sel.
__attribute__((target("arch=x86-64-v4"))) uint32_t select_avx512(const uint32_t* data, int64_t m,
                                                                 int64_t k, uint32_t floor,
                                                                 std::vector<uint32_t>& sel,
                                                                 int64_t* above) {
  // The bracket starts at [floor, the largest key + 1) (one pass for the largest key), so that
  // interpolation works on the keys' own range and not on all of [0, 2^31).
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff);
  __m512i top = _mm512_setzero_si512();
  for (int64_t i = 0; i < m; i += 16) {
    const __mmask16 valid = lanes(m - i);
    top = _mm512_max_epu32(top,
                           _mm512_and_si512(_mm512_maskz_loadu_epi32(valid, data + i), abs_mask));
  }
  uint64_t lo = floor, hi = uint64_t(_mm512_reduce_max_epu32(top)) + 1;  // keys in [lo, hi)
  int64_t c_lo = m, c_hi = 0;
  for (int step = 0; c_lo - c_hi > 64 && hi - lo > 1; ++step) {
    uint64_t x = step % 2 == 0
                     ? lo + uint64_t(double(hi - lo) * double(c_lo - k) / double(c_lo - c_hi))
                     : lo + (hi - lo) / 2;
    x = std::clamp(x, lo + 1, hi - 1);
    const int64_t c = count_ge_avx512(data, m, static_cast<uint32_t>(x));
    if (c >= k) {
      lo = x;
      c_lo = c;
    } else {
      hi = x;
      c_hi = c;
    }
  }
  // The keys in [lo, hi), the answer the (k - c_hi)-th largest of them.
  sel.resize(static_cast<size_t>(c_lo - c_hi));
  const __m512i lov = _mm512_set1_epi32(static_cast<int32_t>(lo));
  const __m512i hiv = _mm512_set1_epi32(static_cast<int32_t>(hi - 1));  // hi - 1 < 2^31
  int64_t len = 0;
  for (int64_t i = 0; i < m; i += 16) {
    const __mmask16 valid = lanes(m - i);
    const __m512i key = _mm512_and_si512(_mm512_maskz_loadu_epi32(valid, data + i), abs_mask);
    const __mmask16 in =
        _mm512_mask_cmple_epu32_mask(_mm512_mask_cmpge_epu32_mask(valid, key, lov), key, hiv);
    _mm512_mask_compressstoreu_epi32(sel.data() + len, in, key);
    len += __builtin_popcount(static_cast<unsigned>(in));
  }
  const int64_t r = k - c_hi - 1;
  std::nth_element(sel.begin(), sel.begin() + r, sel.begin() + len, std::greater<uint32_t>());
  const uint32_t kth = sel[r];
  int64_t greater = c_hi;
  for (int64_t i = 0; i < len; ++i)
    greater += sel[i] > kth ? 1 : 0;
  *above = greater;
  return kth;
}

#endif

// A key t such that, with high probability, between k and a little more than k of the row's keys
// are >= t: the sample's key of descending rank p s + 4 sigma + 2 (p = k / n). 0 (every entry a
// candidate) when that rank falls off the sample. 1 <= k < n.
uint32_t sample_threshold(const float* row, int64_t n, int64_t k, std::vector<uint32_t>& keys) {
  const int64_t s = std::min(n, std::max(kMinSamples, n / kSampleStride));
  keys.resize(static_cast<size_t>(s));
  // Entry floor(i n / s), stepped without a division per sample (Bresenham).
  const int64_t q = n / s, rem = n % s;
  for (int64_t i = 0, j = 0, frac = 0; i < s; ++i) {
    keys[i] = magnitude_key(row[j]);
    j += q;
    frac += rem;
    if (frac >= s) {
      frac -= s;
      ++j;
    }
  }
  const double p = double(k) / double(n);
  const double rank = p * double(s) + 4.0 * std::sqrt(double(s) * p * (1.0 - p)) + 2.0;
  if (rank >= double(s)) return 0;
  const auto r = static_cast<int64_t>(rank);
#if MMFL_TOPK_AVX512
  if (wide_path()) {
    thread_local std::vector<uint32_t> sel;
    int64_t above = 0;
    return select_avx512(keys.data(), s, r + 1, 0, sel, &above);
  }
#endif
  std::nth_element(keys.begin(), keys.begin() + r, keys.end(), std::greater<uint32_t>());
  return keys[r];
}

// Copies the row to res (unless res is null) and collects its candidates (keys >= t), block by
// block: each block is copied (memcpy's wide stores) and then scanned from L1, so the row is read
// from memory once. Returns the number of candidates.
int64_t copy_and_collect(const float* row, float* res, int64_t n, uint32_t t, const Candidates& c,
                         const float* next) {
  constexpr int64_t kBlock = 2048;  // 8 KiB: stays in L1 between the copy and the scan
  int64_t m = 0;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t end = std::min(n, b + kBlock);
    if (res != nullptr) std::memcpy(res + b, row + b, static_cast<size_t>(end - b) * sizeof(float));
#if MMFL_TOPK_AVX512
    if (wide_path()) {
      m = collect_avx512(row, b, end, t, c, m, next != nullptr ? next : row);
      continue;
    }
#endif
    m = collect_scalar(row, b, end, t, c, m);
  }
  return m;
}

// The k-th largest of the keys of vals[0, m) (1 <= k < m), every one of them >= lo, and how many
// keys equal to it are sent: k minus the number above it. A histogram of up to 1,024 equal bins
// over [lo, the largest key] narrows the search to one bin, whose keys alone (copied to sel) are
// partially sorted; vals is not changed.
void kth_largest(const float* vals, int64_t m, int64_t k, uint32_t lo, std::vector<uint32_t>& sel,
                 uint32_t* kth, int64_t* ties) {
  auto nth = [&](int64_t len, int64_t rank) {  // rank-th largest (0-based) of sel[0, len)
    std::nth_element(sel.begin(), sel.begin() + rank, sel.begin() + len, std::greater<uint32_t>());
    return sel[rank];
  };
  sel.resize(static_cast<size_t>(m));
  int64_t above = 0, len = m;
  if (m > 256) {  // below this nth_element alone is as fast
    uint32_t hi = lo;
    for (int64_t i = 0; i < m; ++i)
      hi = std::max(hi, magnitude_key(vals[i]));
    int shift = 0;
    while (((hi - lo) >> shift) >= 1024)
      ++shift;
    const uint32_t top = (hi - lo) >> shift;  // bins 0..top
    thread_local std::vector<int32_t> hist;
    hist.assign(top + 1, 0);
    for (int64_t i = 0; i < m; ++i)
      ++hist[(magnitude_key(vals[i]) - lo) >> shift];
    uint32_t b = top;
    for (; b > 0; --b) {
      if (above + hist[b] >= k) break;
      above += hist[b];
    }
    len = 0;
    for (int64_t i = 0; i < m; ++i) {  // branch-free compaction
      const uint32_t key = magnitude_key(vals[i]);
      sel[len] = key;
      len += ((key - lo) >> shift) == b ? 1 : 0;
    }
  } else {
    for (int64_t i = 0; i < m; ++i)
      sel[i] = magnitude_key(vals[i]);
  }
  *kth = nth(len, k - above - 1);
  int64_t greater = 0;
  for (int64_t i = 0; i < len; ++i)
    greater += sel[i] > *kth ? 1 : 0;
  *ties = k - above - greater;
}

// next: the row this thread is likely to take next (prefetched during the scan), or null.
void topk_row(const float* row, const float* next, int64_t n, int64_t k, int32_t* indices,
              float* values, float* res) {
  const bool copy = res != row;
  if (k == 0) {
    if (copy) std::memcpy(res, row, static_cast<size_t>(n) * sizeof(float));
    return;
  }
  thread_local std::vector<int32_t> cand_idx;
  thread_local std::vector<uint32_t> scratch;
  thread_local std::vector<float> cand_val;
  cand_idx.resize(static_cast<size_t>(n + 16));
  cand_val.resize(static_cast<size_t>(n + 16));
  const Candidates c{cand_idx.data(), cand_val.data()};
  uint32_t t = k == n ? 0 : sample_threshold(row, n, k, scratch);
  // The AVX-512 path writes a separate residual after the selection (write_residual_avx512).
  int64_t m = copy_and_collect(row, copy && !wide_path() ? res : nullptr, n, t, c, next);
  if (m < k) {  // the sample misjudged (rare, or adversarial data): every entry is a candidate
    t = 0;
    m = collect_scalar(row, 0, n, 0, c, 0);
  }
  // The exact k-th largest key among the candidates, and how many entries equal to it are sent
  // (the lowest-indexed ones).
  const bool all = m == k;  // every candidate is sent
  uint32_t kth = 0;
  int64_t ties = 0;
  int64_t o = 0;
#if MMFL_TOPK_AVX512
  if (wide_path()) {
    if (!all) {
      int64_t above = 0;
      kth = select_avx512(reinterpret_cast<const uint32_t*>(c.val), m, k, t, scratch, &above);
      ties = k - above;
    }
    // all: kth 0 with ties m takes every candidate (keys above 0, and every 0 key as a tie); in
    // the row, the candidates are the keys >= t (t as kth, every key equal to it a tie).
    float* zero_in = copy ? nullptr : res;
    o = all ? pack_avx512(c, m, 0, m, indices, values, zero_in)
            : pack_avx512(c, m, kth, ties, indices, values, zero_in);
    MMFL_CHECK(o == k, "cpu::topk_by_magnitude: internal error: packed ", o, " of k = ", k);
    if (copy)
      write_residual_avx512(row, res, n, all ? t : kth,
                            all ? std::numeric_limits<int64_t>::max() : ties);
    return;
  }
#endif
  if (!all) kth_largest(c.val, m, k, t, scratch, &kth, &ties);
  {
    // Branch-free: every candidate is written at slot o, which advances only when it is taken
    // (whether a candidate falls below the k-th key is data, and a branch on it mispredicts).
    for (int64_t i = 0; i < m && o < k; ++i) {
      const uint32_t key = magnitude_key(c.val[i]);
      const bool tie = key == kth;
      const bool take = all || key > kth || (tie && ties > 0);
      ties -= (!all && tie && take) ? 1 : 0;
      indices[o] = c.idx[i];
      values[o] = c.val[i];
      o += take ? 1 : 0;
    }
  }
  MMFL_CHECK(o == k, "cpu::topk_by_magnitude: internal error: packed ", o, " of k = ", k);
  // What was sent leaves the residual (res[j] holds row[j] for every other entry).
  for (int64_t i = 0; i < k; ++i)
    res[indices[i]] = 0.0f;
}

// The first position of idx[0, k) (ascending) holding a value >= target, searched outward from a
// guess: a top-k's indices spread over [0, n), so k j / n lands near the answer for j, and a few
// neighbouring reads replace the log2 k dependent ones (each a cache miss) of a binary search.
int64_t lower_bound_near(const int32_t* idx, int64_t k, int32_t target, int64_t guess) {
  guess = std::clamp<int64_t>(guess, 0, k);
  int64_t lo, hi;  // the answer is in [lo, hi]
  if (guess < k && idx[guess] < target) {
    lo = guess + 1;
    hi = lo;
    for (int64_t step = 1; hi < k && idx[hi] < target; step *= 2) {
      lo = hi + 1;
      hi += step;
    }
    hi = std::min(hi, k);
  } else {
    hi = guess;
    lo = guess - 1;
    for (int64_t step = 1; lo >= 0 && idx[lo] >= target; step *= 2) {
      hi = lo;
      lo -= step;
    }
    lo = std::max<int64_t>(lo, -1) + 1;
  }
  return std::lower_bound(idx + lo, idx + hi, target) - idx;
}

template <typename Acc>
void sum_chunk(const int32_t* indices, const float* values, const float* weights, int64_t rows,
               int64_t k, int64_t n, int64_t j0, int64_t len, float* out) {
  thread_local std::vector<Acc> sum;
  sum.assign(static_cast<size_t>(len), Acc(0));
  const int32_t lo_j = static_cast<int32_t>(j0), hi_j = static_cast<int32_t>(j0 + len);
  const auto guess = static_cast<int64_t>(double(k) * double(j0) / double(n));
  const auto span = static_cast<int64_t>(double(k) * double(len) / double(n)) + 16;
  for (int64_t c = 0; c < rows; ++c) {
    const int32_t* idx = indices + c * k;
    if (c + 1 < rows) {  // the next client's entries of this chunk, as the guess places them
      const int64_t from = std::min(guess, k - 1), to = std::min(guess + span, k);
      for (int64_t e = from; e < to; e += 16) {
        __builtin_prefetch(idx + k + e);
        __builtin_prefetch(values + (c + 1) * k + e);
      }
    }
    const Acc w = static_cast<Acc>(weights[c]);
    const float* val = values + c * k;
    for (int64_t e = lower_bound_near(idx, k, lo_j, guess); e < k && idx[e] < hi_j; ++e)
      sum[idx[e] - lo_j] += w * static_cast<Acc>(val[e]);
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
    // A thread takes a contiguous range of rows, so its next row is most likely c + 1; the
    // prefetch during this row's scan hides the next row's memory latency (its sample's loads
    // would otherwise each wait on memory).
    topk_row(x + c * n, c + 1 < rows ? x + (c + 1) * n : nullptr, n, k, indices + c * k,
             values + c * k, residual + c * n);
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
      sum_chunk<float>(indices, values, weights, rows, k, n, j0, len, out);
    } else {
      sum_chunk<double>(indices, values, weights, rows, k, n, j0, len, out);
    }
  });
}

}  // namespace mmfl::kernels::cpu
