// Internal to kernels/ref: the reference's double-precision building blocks, shared by its ops.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace mmfl::kernels::ref::detail {

inline double dot(const float* a, const float* b, int64_t d) {
  double s = 0;
  for (int64_t k = 0; k < d; ++k)
    s += static_cast<double>(a[k]) * static_cast<double>(b[k]);
  return s;
}

// Running log-sum-exp: `sum` holds sum exp(x - max) over the values seen.
struct RunningLse {
  double max = -std::numeric_limits<double>::infinity();
  double sum = 0;
  void add(double x) {
    const double m = std::max(max, x);
    sum = sum * std::exp(max - m) + std::exp(x - m);
    max = m;
  }
  double value() const { return max + std::log(sum); }
};

}  // namespace mmfl::kernels::ref::detail
