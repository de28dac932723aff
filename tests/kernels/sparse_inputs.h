// Inputs of the sparse-op tests (registry cases and sparse_test.cpp): deltas with planted ties,
// and packets of strictly ascending indices with exactly representable values.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "test_util.h"

namespace mmfl::test {

// Normal values with planted magnitude ties: about a tenth of the entries copy another entry's
// value or its negation (equal magnitude, either sign), a twentieth are +0 or -0, and, when
// `all_ties` holds, every entry is +-1 (every entry ties with every other).
inline std::vector<float> topk_input(std::mt19937_64& rng, int64_t rows, int64_t n,
                                     bool all_ties = false) {
  std::vector<float> x = random_normal(rng, static_cast<size_t>(rows * n), 1.0f);
  std::uniform_int_distribution<int64_t> pick(0, n > 0 ? n - 1 : 0);
  std::uniform_int_distribution<int> kind(0, 99);
  for (int64_t c = 0; c < rows; ++c) {
    float* row = x.data() + c * n;
    for (int64_t j = 0; j < n; ++j) {
      const int r = kind(rng);
      if (all_ties) {
        row[j] = r % 2 == 0 ? 1.0f : -1.0f;
      } else if (r < 5) {
        row[j] = row[pick(rng)];
      } else if (r < 10) {
        row[j] = -row[pick(rng)];
      } else if (r < 13) {
        row[j] = 0.0f;
      } else if (r < 15) {
        row[j] = -0.0f;
      }
    }
  }
  return x;
}

struct Packets {
  std::vector<int32_t> indices;  // [rows, k], each row strictly ascending in [0, n)
  std::vector<float> values;     // [rows, k] small integers
  std::vector<float> weights;    // [rows] multiples of 1/8 in [-0.5, 0.5]
};

// Sums of these are exact in fp32 and fp64 whatever the order.
inline Packets random_packets(std::mt19937_64& rng, int64_t rows, int64_t k, int64_t n) {
  Packets p;
  p.values = random_small_ints(rng, static_cast<size_t>(rows * k), -8, 8);
  std::vector<int32_t> all(static_cast<size_t>(n));
  std::iota(all.begin(), all.end(), 0);
  for (int64_t c = 0; c < rows; ++c) {
    std::shuffle(all.begin(), all.end(), rng);
    std::vector<int32_t> row(all.begin(), all.begin() + k);
    std::sort(row.begin(), row.end());
    p.indices.insert(p.indices.end(), row.begin(), row.end());
  }
  for (int64_t c = 0; c < rows; ++c)
    p.weights.push_back(std::ldexp(float(std::uniform_int_distribution<int>(-4, 4)(rng)), -3));
  return p;
}

}  // namespace mmfl::test
