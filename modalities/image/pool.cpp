#include "modalities/image/pool.h"

#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "mmfl/error.h"

namespace mmfl::modalities {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

// Window position of the pooled value (0..3, row-major) whose gradient is the output's; kNone when
// the pooled value is zero or negative (ReLU passes no gradient there; it does pass one to a NaN).
constexpr uint8_t kNone = 4;

// Planes per parallel task: enough work to amortize a task (a 28x28 plane is about 1 us).
constexpr int64_t kGrain = 16;

// The window's maximum as LibTorch's max-pool scans it (row by row, a later value wins only when
// strictly greater, a NaN always wins), then ReLU (NaN passes through, with its gradient).
// Branch-free: on real data the winning position is random, and branches on it mispredict half the
// time (that made a branchy version cost 4 ns per input).
inline void pool_window(float a, float b, float c, float d, float& out, uint8_t& at) {
  float m = a;
  uint8_t k = 0;
  const bool tb = (b > m) | (b != b);
  m = tb ? b : m;
  k = tb ? 1 : k;
  const bool tc = (c > m) | (c != c);
  m = tc ? c : m;
  k = tc ? 2 : k;
  const bool td = (d > m) | (d != d);
  m = td ? d : m;
  k = td ? 3 : k;
  const bool pass = (m > 0.0f) | (m != m);
  out = pass ? m : 0.0f;
  at = pass ? k : kNone;
}

// The exact scan above, one plane.
void forward_plane_scalar(const float* xp, float* yp, uint8_t* kp, int64_t h, int64_t w) {
  const int64_t ho = h / 2, wo = w / 2;
  for (int64_t i = 0; i < ho; ++i) {
    const float* r0 = xp + 2 * i * w;
    const float* r1 = r0 + w;
    for (int64_t j = 0; j < wo; ++j)
      pool_window(r0[2 * j], r0[2 * j + 1], r1[2 * j], r1[2 * j + 1], yp[i * wo + j],
                  kp[i * wo + j]);
  }
}

// Four lanes: SSE2, the x86-64 baseline the project builds for (GCC vector extensions; the
// compiler's own vectorizer leaves these mixed float/mask loops scalar).
typedef float F4 __attribute__((vector_size(16)));
typedef int32_t I4 __attribute__((vector_size(16)));
typedef uint8_t U4 __attribute__((vector_size(4)));

inline F4 load4(const float* p) {
  F4 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline I4 load4(const int32_t* p) {
  I4 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// The same for a plane without NaN in its windows, in two passes over contiguous memory: the
// maximum of each row pair (the lower row wins only when strictly greater), then of each
// horizontal pair of those (the right one wins when strictly greater, and on a tie when it is the
// upper row's value and the left one the lower row's: the window's first maximum in scan order).
// Returns false, having written nothing, when the plane holds a NaN.
bool forward_plane_fast(const float* xp, float* yp, uint8_t* kp, int64_t h, int64_t w,
                        std::vector<float>& vmax, std::vector<int32_t>& lower) {
  const int64_t ho = h / 2, wo = w / 2, wp = 2 * wo;
  vmax.resize(size_t(ho * wp));
  lower.resize(size_t(ho * wp));
  float* vm = vmax.data();
  int32_t* lo = lower.data();
  I4 nan4{};
  bool nan = false;
  for (int64_t i = 0; i < ho; ++i) {
    const float* r0 = xp + 2 * i * w;
    const float* r1 = r0 + w;
    float* v = vm + i * wp;
    int32_t* l = lo + i * wp;
    int64_t x = 0;
    for (; x + 4 <= wp; x += 4) {
      const F4 a = load4(r0 + x), c = load4(r1 + x);
      nan4 |= (a != a) | (c != c);
      const I4 down = c > a;  // -1 where the lower row wins
      const F4 m = down ? c : a;
      std::memcpy(v + x, &m, sizeof m);
      std::memcpy(l + x, &down, sizeof down);
    }
    for (; x < wp; ++x) {
      const float a = r0[x], c = r1[x];
      nan |= (a != a) | (c != c);
      v[x] = c > a ? c : a;
      l[x] = c > a ? -1 : 0;
    }
  }
  if (nan || nan4[0] || nan4[1] || nan4[2] || nan4[3]) return false;
  const int64_t n = ho * wo;
  int64_t t = 0;
  for (; t + 4 <= n; t += 4) {
    const F4 va = load4(vm + 2 * t), vb = load4(vm + 2 * t + 4);
    const I4 la = load4(lo + 2 * t), lb = load4(lo + 2 * t + 4);
    const F4 v0 = __builtin_shufflevector(va, vb, 0, 2, 4, 6);
    const F4 v1 = __builtin_shufflevector(va, vb, 1, 3, 5, 7);
    const I4 l0 = __builtin_shufflevector(la, lb, 0, 2, 4, 6);
    const I4 l1 = __builtin_shufflevector(la, lb, 1, 3, 5, 7);
    const I4 right = (v1 > v0) | ((v1 == v0) & l0 & ~l1);
    const F4 m = right ? v1 : v0;
    const I4 k = right ? 1 + (l1 & 2) : (l0 & 2);
    const I4 pass = m > 0.0f;
    const F4 y = pass ? m : F4{};
    const U4 k8 = __builtin_convertvector(pass ? k : I4{} + kNone, U4);
    std::memcpy(yp + t, &y, sizeof y);
    std::memcpy(kp + t, &k8, sizeof k8);
  }
  for (; t < n; ++t) {
    const float v0 = vm[2 * t], v1 = vm[2 * t + 1];
    const int32_t l0 = lo[2 * t], l1 = lo[2 * t + 1];
    const bool right = (v1 > v0) | ((v1 == v0) & (l0 != 0) & (l1 == 0));
    const float m = right ? v1 : v0;
    const uint8_t k = right ? uint8_t(1 + (l1 & 2)) : uint8_t(l0 & 2);
    yp[t] = m > 0.0f ? m : 0.0f;
    kp[t] = m > 0.0f ? k : kNone;
  }
  return true;
}

void forward_cpu(const float* x, float* y, uint8_t* pos, int64_t planes, int64_t h, int64_t w) {
  const int64_t ho = h / 2, wo = w / 2;
  at::parallel_for(0, planes, kGrain, [&](int64_t begin, int64_t end) {
    std::vector<float> vmax;
    std::vector<int32_t> lower;
    for (int64_t p = begin; p < end; ++p) {
      const float* xp = x + p * h * w;
      float* yp = y + p * ho * wo;
      uint8_t* kp = pos + p * ho * wo;
      if (!forward_plane_fast(xp, yp, kp, h, w, vmax, lower))
        forward_plane_scalar(xp, yp, kp, h, w);
    }
  });
}

void backward_cpu(const float* g, const uint8_t* pos, float* dx, int64_t planes, int64_t h,
                  int64_t w) {
  const int64_t ho = h / 2, wo = w / 2;
  at::parallel_for(0, planes, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const float* gp = g + p * ho * wo;
      const uint8_t* kp = pos + p * ho * wo;
      float* dp = dx + p * h * w;
      // Zeros everywhere (odd trailing rows and columns included), then each window's gradient
      // at its position; a window without one writes a zero at its corner (no branch on data).
      std::memset(dp, 0, size_t(h * w) * sizeof(float));
      for (int64_t i = 0; i < ho; ++i)
        for (int64_t j = 0; j < wo; ++j) {
          const uint8_t k = kp[i * wo + j];
          const bool some = k != kNone;
          const int64_t at = some ? k : 0;
          dp[(2 * i + (at >> 1)) * w + 2 * j + (at & 1)] = some ? gp[i * wo + j] : 0.0f;
        }
    }
  });
}

class ReluMaxPool2 : public torch::autograd::Function<ReluMaxPool2> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x_in) {
    const auto x = x_in.contiguous();
    const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
    auto y = torch::empty({n, c, h / 2, w / 2}, x.options());
    auto pos = torch::empty({n, c, h / 2, w / 2}, x.options().dtype(torch::kUInt8));
    forward_cpu(x.data_ptr<float>(), y.data_ptr<float>(), pos.data_ptr<uint8_t>(), n * c, h, w);
    ctx->save_for_backward({pos});
    ctx->saved_data["h"] = h;
    ctx->saved_data["w"] = w;
    return y;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grad_out) {
    const auto pos = ctx->get_saved_variables()[0];
    const int64_t h = ctx->saved_data["h"].toInt(), w = ctx->saved_data["w"].toInt();
    const auto g = grad_out[0].to(torch::kFloat32).contiguous();
    auto dx = torch::empty({pos.size(0), pos.size(1), h, w}, g.options());
    backward_cpu(g.data_ptr<float>(), pos.data_ptr<uint8_t>(), dx.data_ptr<float>(),
                 pos.size(0) * pos.size(1), h, w);
    return {dx};
  }
};

}  // namespace

torch::Tensor relu_max_pool2(const torch::Tensor& x) {
  MMFL_CHECK(x.dim() == 4 && x.size(2) >= 2 && x.size(3) >= 2,
             "relu_max_pool2 needs [N, C, H, W] with H, W >= 2, got ", x.sizes());
  if (!x.is_cpu() || x.scalar_type() != torch::kFloat32)
    return torch::max_pool2d(torch::relu(x), 2);
  return ReluMaxPool2::apply(x);
}

}  // namespace mmfl::modalities
