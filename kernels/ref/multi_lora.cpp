// CPU reference of the multi-adapter LoRA products: plain loops over each client's rows with
// double accumulators, the oracle of every other backend (tests only).
#include "mmfl/kernels/multi_lora.h"

#include <vector>

#include "../common/host_checks.h"
#include "mmfl/error.h"

namespace mmfl::kernels::ref {
namespace {

void check_common(const char* fn, const float* x, const float* a, const float* b,
                  const int64_t* offsets, const MultiLoraShape& s) {
  checks::check_multi_lora_shape(fn, s);
  checks::check_multi_lora_offsets(fn, offsets, s);
  MMFL_CHECK(a != nullptr && b != nullptr, fn, ": a and b must not be null");
  MMFL_CHECK(s.rows == 0 || x != nullptr, fn, ": x is null");
}

}  // namespace

void multi_lora_forward(const float* x, const float* a, const float* b, const int64_t* offsets,
                        const MultiLoraShape& s, float scale, float* h, float* y) {
  check_common("ref::multi_lora_forward", x, a, b, offsets, s);
  MMFL_CHECK(s.rows == 0 || (h != nullptr && y != nullptr),
             "ref::multi_lora_forward: h and y must not be null");
  std::vector<double> hi(static_cast<size_t>(s.rank));
  for (int64_t c = 0; c < s.clients; ++c) {
    const float* ac = a + c * s.rank * s.in;
    const float* bc = b + c * s.out * s.rank;
    for (int64_t i = offsets[c]; i < offsets[c + 1]; ++i) {
      for (int64_t k = 0; k < s.rank; ++k) {
        double acc = 0;
        for (int64_t j = 0; j < s.in; ++j)
          acc += double(x[i * s.in + j]) * double(ac[k * s.in + j]);
        hi[k] = acc;
        h[i * s.rank + k] = static_cast<float>(acc);
      }
      for (int64_t o = 0; o < s.out; ++o) {
        double acc = 0;
        for (int64_t k = 0; k < s.rank; ++k)
          acc += hi[k] * double(bc[o * s.rank + k]);
        y[i * s.out + o] = static_cast<float>(double(y[i * s.out + o]) + double(scale) * acc);
      }
    }
  }
}

void multi_lora_backward(const float* x, const float* a, const float* b, const int64_t* offsets,
                         const MultiLoraShape& s, float scale, const float* h, const float* gy,
                         float* g, float* gx, float* ga, float* gb) {
  const char* fn = "ref::multi_lora_backward";
  check_common(fn, x, a, b, offsets, s);
  MMFL_CHECK(s.rows == 0 || (h != nullptr && gy != nullptr && g != nullptr), fn,
             ": h, gy and g must not be null");
  MMFL_CHECK(ga != nullptr && gb != nullptr, fn, ": ga and gb must not be null");
  const double sc = scale;
  std::vector<double> gi(static_cast<size_t>(s.rank));
  for (int64_t c = 0; c < s.clients; ++c) {
    const float* ac = a + c * s.rank * s.in;
    const float* bc = b + c * s.out * s.rank;
    std::vector<double> gac(static_cast<size_t>(s.rank * s.in), 0.0);
    std::vector<double> gbc(static_cast<size_t>(s.out * s.rank), 0.0);
    for (int64_t i = offsets[c]; i < offsets[c + 1]; ++i) {
      for (int64_t k = 0; k < s.rank; ++k) {
        double acc = 0;
        for (int64_t o = 0; o < s.out; ++o)
          acc += double(gy[i * s.out + o]) * double(bc[o * s.rank + k]);
        gi[k] = sc * acc;
        g[i * s.rank + k] = static_cast<float>(gi[k]);
      }
      if (gx != nullptr) {
        for (int64_t j = 0; j < s.in; ++j) {
          double acc = 0;
          for (int64_t k = 0; k < s.rank; ++k)
            acc += gi[k] * double(ac[k * s.in + j]);
          gx[i * s.in + j] = static_cast<float>(double(gx[i * s.in + j]) + acc);
        }
      }
      for (int64_t k = 0; k < s.rank; ++k)
        for (int64_t j = 0; j < s.in; ++j)
          gac[k * s.in + j] += gi[k] * double(x[i * s.in + j]);
      for (int64_t o = 0; o < s.out; ++o)
        for (int64_t k = 0; k < s.rank; ++k)
          gbc[o * s.rank + k] += double(gy[i * s.out + o]) * double(h[i * s.rank + k]);
    }
    for (int64_t e = 0; e < s.rank * s.in; ++e)
      ga[c * s.rank * s.in + e] = static_cast<float>(gac[e]);
    for (int64_t e = 0; e < s.out * s.rank; ++e)
      gb[c * s.out * s.rank + e] = static_cast<float>(sc * gbc[e]);
  }
}

}  // namespace mmfl::kernels::ref
