// Internal to kernels/: the argument checks of the sparse ops shared by the host-side
// implementations (ref and cpu) and the device launchers, so all reject the same arguments with
// the same messages. `fn` names the caller ("cpu::topk_by_magnitude").
#pragma once

#include <cstdint>

#include "mmfl/error.h"
#include "mmfl/kernels/sparse.h"

namespace mmfl::kernels::checks {

inline void check_topk_args(const char* fn, const float* x, int64_t rows, int64_t n, int64_t k,
                            const int32_t* indices, const float* values, const float* residual) {
  MMFL_CHECK(rows >= 0, fn, ": rows must be >= 0, got ", rows);
  MMFL_CHECK(n >= 0 && n <= kSparseMaxN, fn, ": n (values per row) must be in [0, ", kSparseMaxN,
             "] (indices are int32), got ", n);
  MMFL_CHECK(k >= 0 && k <= n, fn, ": k must be in [0, n] = [0, ", n, "], got ", k);
  const bool some = rows > 0 && n > 0;
  MMFL_CHECK(!some || x != nullptr, fn, ": x is null");
  MMFL_CHECK(!some || residual != nullptr, fn, ": residual is null");
  MMFL_CHECK(rows == 0 || k == 0 || (indices != nullptr && values != nullptr), fn,
             ": indices or values is null");
}

inline void check_sparse_sum_args(const char* fn, const int32_t* indices, const float* values,
                                  const float* weights, int64_t rows, int64_t k, int64_t n,
                                  const float* out, Accumulator acc) {
  MMFL_CHECK(rows >= 0, fn, ": rows (clients) must be >= 0, got ", rows);
  MMFL_CHECK(k >= 0, fn, ": k (entries per client) must be >= 0, got ", k);
  MMFL_CHECK(n >= 0 && n <= kSparseMaxN, fn, ": n (output size) must be in [0, ", kSparseMaxN,
             "], got ", n);
  const bool entries = rows > 0 && k > 0;
  MMFL_CHECK(!entries || (indices != nullptr && values != nullptr), fn,
             ": indices or values is null");
  MMFL_CHECK(rows == 0 || weights != nullptr, fn, ": weights is null");
  MMFL_CHECK(n == 0 || out != nullptr, fn, ": out is null");
  MMFL_CHECK(acc == Accumulator::kFloat32 || acc == Accumulator::kFloat64, fn,
             ": acc must be Accumulator::kFloat32 or kFloat64, got ", static_cast<int>(acc));
}

// Row `row` of a packet: every index in [0, n) and strictly ascending. Returns the first bad
// entry, or -1.
inline int64_t first_bad_entry(const int32_t* idx, int64_t k, int64_t n) {
  for (int64_t i = 0; i < k; ++i) {
    if (idx[i] < 0 || idx[i] >= n) return i;
    if (i > 0 && idx[i] <= idx[i - 1]) return i;
  }
  return -1;
}

[[noreturn]] inline void fail_bad_entry(const char* fn, const int32_t* idx, int64_t row, int64_t i,
                                        int64_t n) {
  if (idx[i] < 0 || idx[i] >= n)
    MMFL_FAIL(fn, ": indices[", row, ", ", i, "] = ", idx[i], " is outside [0, n) = [0, ", n,
              ") (client ", row, ")");
  MMFL_FAIL(fn, ": indices of row ", row, " (client ", row, ") must be strictly ascending, but ",
            "indices[", row, ", ", i, "] = ", idx[i], " follows ", idx[i - 1]);
}

}  // namespace mmfl::kernels::checks
