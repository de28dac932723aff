// CPU reference of the sparse ops: top-k by a full sort of each row (magnitude key descending,
// index ascending), and the scatter-sum with one accumulator per output, clients in order. The
// oracle of every other backend (tests only).
#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#include "../common/sparse_checks.h"
#include "mmfl/kernels/sparse.h"

namespace mmfl::kernels::ref {
namespace {

uint32_t magnitude_key(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return bits & 0x7fffffffu;
}

template <typename Acc>
void scatter_sum(const int32_t* indices, const float* values, const float* weights, int64_t rows,
                 int64_t k, int64_t n, float* out) {
  std::vector<Acc> sum(static_cast<size_t>(n), Acc(0));
  for (int64_t c = 0; c < rows; ++c) {
    const Acc w = static_cast<Acc>(weights[c]);
    for (int64_t i = 0; i < k; ++i)
      sum[indices[c * k + i]] += w * static_cast<Acc>(values[c * k + i]);
  }
  for (int64_t j = 0; j < n; ++j)
    out[j] = static_cast<float>(sum[j]);
}

}  // namespace

void topk_by_magnitude(const float* x, int64_t rows, int64_t n, int64_t k, int32_t* indices,
                       float* values, float* residual) {
  checks::check_topk_args("ref::topk_by_magnitude", x, rows, n, k, indices, values, residual);
  std::vector<int32_t> order(static_cast<size_t>(n));
  for (int64_t c = 0; c < rows; ++c) {
    const float* row = x + c * n;
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
      const uint32_t ka = magnitude_key(row[a]), kb = magnitude_key(row[b]);
      return ka != kb ? ka > kb : a < b;
    });
    std::sort(order.begin(), order.begin() + k);
    float* res = residual + c * n;
    if (res != row) std::memcpy(res, row, static_cast<size_t>(n) * sizeof(float));
    for (int64_t i = 0; i < k; ++i) {
      const int32_t j = order[i];
      indices[c * k + i] = j;
      values[c * k + i] = row[j];
      res[j] = 0.0f;
    }
  }
}

void sparse_weighted_sum(const int32_t* indices, const float* values, const float* weights,
                         int64_t rows, int64_t k, int64_t n, float* out, Accumulator acc) {
  const char* fn = "ref::sparse_weighted_sum";
  checks::check_sparse_sum_args(fn, indices, values, weights, rows, k, n, out, acc);
  for (int64_t c = 0; c < rows; ++c) {
    const int64_t bad = checks::first_bad_entry(indices + c * k, k, n);
    if (bad >= 0) checks::fail_bad_entry(fn, indices + c * k, c, bad, n);
  }
  if (n == 0) return;
  switch (acc) {
    case Accumulator::kFloat32:
      scatter_sum<float>(indices, values, weights, rows, k, n, out);
      break;
    case Accumulator::kFloat64:
      scatter_sum<double>(indices, values, weights, rows, k, n, out);
      break;
    default:
      MMFL_FAIL(fn, ": unknown Accumulator ", static_cast<int>(acc));
  }
}

}  // namespace mmfl::kernels::ref
