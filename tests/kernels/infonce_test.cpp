// Fused symmetric InfoNCE: golden and finite-difference tests of the CPU reference, then one body
// per backend (CPU reference, emulated CUDA, real CUDA) against a naive full-matrix computation
// in double precision, over edge sizes (1, primes, around the 64-wide tile) and feature sizes
// (1, odd, multiples of the 32-wide slice, both float4 and scalar loads).
#include "mmfl/kernels/infonce.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "backend.h"
#include "mmfl/error.h"
#include "ops.h"
#include "test_util.h"

namespace mmfl::test {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// ---- Naive oracle: the full n x n logit matrix in double ----------------------------------------

struct InfonceExpected {
  double loss = 0;
  std::vector<double> lse_img, lse_txt, grad_img, grad_txt;
  double grad_tau = 0;
  double max_abs_logit = 0;
  // The size of one term g/(2n) * P * feature / tau summed 2n times: g * max|feature| / tau.
  double grad_term_scale = 0;
};

InfonceExpected naive_infonce(const std::vector<float>& img, const std::vector<float>& txt,
                              int64_t n, int64_t d, double tau, double grad_loss) {
  InfonceExpected e;
  double max_feature = 0;
  for (float x : img)
    max_feature = std::max(max_feature, std::fabs(double(x)));
  for (float x : txt)
    max_feature = std::max(max_feature, std::fabs(double(x)));
  e.grad_term_scale = std::fabs(grad_loss) * max_feature / tau;
  std::vector<double> s(n * n);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double dot = 0;
      for (int64_t k = 0; k < d; ++k)
        dot += double(img[i * d + k]) * txt[j * d + k];
      s[i * n + j] = dot / tau;
      e.max_abs_logit = std::max(e.max_abs_logit, std::fabs(s[i * n + j]));
    }
  }
  auto lse = [&](auto at) {
    double m = -std::numeric_limits<double>::infinity();
    for (int64_t t = 0; t < n; ++t)
      m = std::max(m, at(t));
    double sum = 0;
    for (int64_t t = 0; t < n; ++t)
      sum += std::exp(at(t) - m);
    return m + std::log(sum);
  };
  e.lse_img.resize(n);
  e.lse_txt.resize(n);
  for (int64_t i = 0; i < n; ++i)
    e.lse_img[i] = lse([&](int64_t j) { return s[i * n + j]; });
  for (int64_t j = 0; j < n; ++j)
    e.lse_txt[j] = lse([&](int64_t i) { return s[i * n + j]; });
  double row_ce = 0, col_ce = 0;
  for (int64_t i = 0; i < n; ++i) {
    row_ce += e.lse_img[i] - s[i * n + i];
    col_ce += e.lse_txt[i] - s[i * n + i];
  }
  e.loss = 0.5 * (row_ce / n + col_ce / n);
  e.grad_img.assign(n * d, 0.0);
  e.grad_txt.assign(n * d, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      const double ds = grad_loss / (2.0 * n) *
                        (std::exp(s[i * n + j] - e.lse_img[i]) +
                         std::exp(s[i * n + j] - e.lse_txt[j]) - (i == j ? 2.0 : 0.0));
      e.grad_tau -= ds * s[i * n + j] / tau;
      for (int64_t k = 0; k < d; ++k) {
        e.grad_img[i * d + k] += ds * txt[j * d + k] / tau;
        e.grad_txt[j * d + k] += ds * img[i * d + k] / tau;
      }
    }
  }
  return e;
}

// Rows scaled to unit norm, as CLIP-style encoders emit them.
std::vector<float> unit_rows(std::mt19937_64& rng, int64_t n, int64_t d) {
  std::vector<float> v = random_normal(rng, n * d, 1.0f);
  for (int64_t i = 0; i < n; ++i) {
    double norm = 0;
    for (int64_t k = 0; k < d; ++k)
      norm += double(v[i * d + k]) * v[i * d + k];
    norm = std::sqrt(std::max(norm, 1e-30));
    for (int64_t k = 0; k < d; ++k)
      v[i * d + k] = static_cast<float>(v[i * d + k] / norm);
  }
  return v;
}

// ---- Running one backend ------------------------------------------------------------------------

void run_forward(Backend backend, const float* img, const float* txt, int64_t n, int64_t d,
                 const float* tau, float* loss, float* lse_img, float* lse_txt) {
  ops::infonce_forward(backend, img, txt, n, d, tau, loss, lse_img, lse_txt);
}

void run_backward(Backend backend, const float* img, const float* txt, int64_t n, int64_t d,
                  const float* tau, const float* lse_img, const float* lse_txt,
                  const float* grad_loss, float* grad_img, float* grad_txt, float* grad_tau) {
  ops::infonce_backward(backend, img, txt, n, d, tau, lse_img, lse_txt, grad_loss, grad_img,
                        grad_txt, grad_tau);
}

struct InfonceOutputs {
  float loss, grad_tau;
  std::vector<float> lse_img, lse_txt, grad_img, grad_txt;
};

// Forward, then backward from the backend's own saved log-sum-exps. `offset` floats of padding
// before each feature matrix misalign them (the scalar-load path even when d % 4 == 0). Every
// output is poisoned with NaN first.
InfonceOutputs run_backend(Backend backend, const std::vector<float>& img,
                           const std::vector<float>& txt, int64_t n, int64_t d, float tau,
                           float grad_loss, int64_t offset) {
  auto padded = [&](const std::vector<float>& v) {
    std::vector<float> p(offset, 0.0f);
    p.insert(p.end(), v.begin(), v.end());
    return p;
  };
  DeviceBuffer<float> d_img(backend, padded(img));
  DeviceBuffer<float> d_txt(backend, padded(txt));
  DeviceBuffer<float> d_tau(backend, std::vector<float>{tau});
  DeviceBuffer<float> d_grad_loss(backend, std::vector<float>{grad_loss});
  DeviceBuffer<float> d_loss(backend, 1), d_lse_img(backend, n), d_lse_txt(backend, n);
  DeviceBuffer<float> d_grad_img(backend, offset + n * d), d_grad_txt(backend, offset + n * d);
  DeviceBuffer<float> d_grad_tau(backend, 1);
  for (auto* b : {&d_loss, &d_lse_img, &d_lse_txt, &d_grad_img, &d_grad_txt, &d_grad_tau}) {
    b->fill(kNaN);
  }
  run_forward(backend, d_img.get() + offset, d_txt.get() + offset, n, d, d_tau.get(), d_loss.get(),
              d_lse_img.get(), d_lse_txt.get());
  run_backward(backend, d_img.get() + offset, d_txt.get() + offset, n, d, d_tau.get(),
               d_lse_img.get(), d_lse_txt.get(), d_grad_loss.get(), d_grad_img.get() + offset,
               d_grad_txt.get() + offset, d_grad_tau.get());
  InfonceOutputs out;
  out.loss = d_loss.download()[0];
  out.grad_tau = d_grad_tau.download()[0];
  out.lse_img = d_lse_img.download();
  out.lse_txt = d_lse_txt.download();
  const std::vector<float> gi = d_grad_img.download();
  const std::vector<float> gt = d_grad_txt.download();
  for (int64_t e = 0; e < offset; ++e) {
    EXPECT_TRUE(std::isnan(gi[e]) && std::isnan(gt[e])) << "wrote before the gradient";
  }
  out.grad_img.assign(gi.begin() + offset, gi.end());
  out.grad_txt.assign(gt.begin() + offset, gt.end());
  return out;
}

// Another backend's outputs as the expectation, with the tolerance scales of `scales`.
InfonceExpected as_expected(const InfonceOutputs& o, const InfonceExpected& scales) {
  InfonceExpected e = scales;
  e.loss = o.loss;
  e.grad_tau = o.grad_tau;
  e.lse_img.assign(o.lse_img.begin(), o.lse_img.end());
  e.lse_txt.assign(o.lse_txt.begin(), o.lse_txt.end());
  e.grad_img.assign(o.grad_img.begin(), o.grad_img.end());
  e.grad_txt.assign(o.grad_txt.begin(), o.grad_txt.end());
  return e;
}

// fp32 tolerances. Logits carry ~1e-7 * (1 + |S|) absolute error (fp32 dot products scaled by
// 1/tau); log-sum-exps and the loss inherit it, and exp() turns it into the same relative error
// of every probability in dL/dS. A gradient element sums up to 2n terms of size at most
// g/(2n) * |feature| / tau with signs that cancel (dS rows sum to 0), so its allowance is relative
// to g * max|feature| / tau, not to the element; grad_tau sums dS_ij * S_ij / tau, whose absolute
// values add up to at most 2g * max|S| / tau.
void expect_matches(const InfonceOutputs& got, const InfonceExpected& want) {
  const double logit_scale = 1.0 + want.max_abs_logit;
  const Tolerance value_tol{2e-6 * logit_scale, 2e-6};
  EXPECT_TRUE(all_close({got.loss}, {want.loss}, value_tol, "loss"));
  EXPECT_TRUE(all_close(got.lse_img, want.lse_img, value_tol, "lse_img"));
  EXPECT_TRUE(all_close(got.lse_txt, want.lse_txt, value_tol, "lse_txt"));
  const Tolerance grad_tol{1e-6 * logit_scale * want.grad_term_scale, 1e-5};
  EXPECT_TRUE(all_close(got.grad_img, want.grad_img, grad_tol, "grad_img"));
  EXPECT_TRUE(all_close(got.grad_txt, want.grad_txt, grad_tol, "grad_txt"));
  const Tolerance tau_tol{2e-6 * logit_scale * want.grad_term_scale * logit_scale, 1e-5};
  EXPECT_TRUE(all_close({got.grad_tau}, {want.grad_tau}, tau_tol, "grad_tau"));
}

// ---- CPU reference: golden cases ----------------------------------------------------------------

// sigma = e / (1 + e): the softmax weight of the larger of two logits that differ by 1.
const double kSigma = std::exp(1.0) / (1.0 + std::exp(1.0));

TEST(RefInfonce, GoldenMatchedPairs) {
  // img = txt = I (2 x 2), tau = 1: S = I. Every row and column softmax is (sigma, 1 - sigma).
  const std::vector<float> img = {1, 0, 0, 1}, txt = {1, 0, 0, 1};
  const float tau = 1.0f, grad_loss = 1.0f;
  float loss = kNaN, grad_tau = kNaN;
  std::vector<float> lse_img(2, kNaN), lse_txt(2, kNaN), grad_img(4, kNaN), grad_txt(4, kNaN);
  kernels::ref::infonce_forward(img.data(), txt.data(), 2, 2, &tau, &loss, lse_img.data(),
                                lse_txt.data());
  const double lse = std::log(1.0 + std::exp(1.0));  // log(e^1 + e^0)
  EXPECT_NEAR(lse_img[0], lse, 1e-6);
  EXPECT_NEAR(lse_txt[1], lse, 1e-6);
  EXPECT_NEAR(loss, lse - 1.0, 1e-6);  // CE of each row and column: lse - S_ii
  kernels::ref::infonce_backward(img.data(), txt.data(), 2, 2, &tau, lse_img.data(), lse_txt.data(),
                                 &grad_loss, grad_img.data(), grad_txt.data(), &grad_tau);
  // dS_ii = 1/4 * (sigma + sigma - 2) = (sigma - 1)/2; dS_ij = 1/4 * 2(1 - sigma) = (1 - sigma)/2.
  // grad_img = dS txt = dS, grad_txt = dS^T img = dS, grad_tau = -(dS_00 + dS_11) = 1 - sigma.
  const double on = (kSigma - 1) / 2, off = (1 - kSigma) / 2;
  const std::vector<double> ds = {on, off, off, on};
  EXPECT_TRUE(all_close(grad_img, ds, {1e-6, 0}, "grad_img"));
  EXPECT_TRUE(all_close(grad_txt, ds, {1e-6, 0}, "grad_txt"));
  EXPECT_NEAR(grad_tau, 1 - kSigma, 1e-6);
}

TEST(RefInfonce, GoldenSwappedPairs) {
  // txt swaps the two pairs: S = [[0, 1], [1, 0]] with tau = 1, and grad_loss = 2.
  const std::vector<float> img = {1, 0, 0, 1}, txt = {0, 1, 1, 0};
  const float tau = 1.0f, grad_loss = 2.0f;
  float loss = kNaN, grad_tau = kNaN;
  std::vector<float> lse_img(2, kNaN), lse_txt(2, kNaN), grad_img(4, kNaN), grad_txt(4, kNaN);
  kernels::ref::infonce_forward(img.data(), txt.data(), 2, 2, &tau, &loss, lse_img.data(),
                                lse_txt.data());
  EXPECT_NEAR(loss, std::log(1.0 + std::exp(1.0)), 1e-6);  // every diagonal logit is 0
  kernels::ref::infonce_backward(img.data(), txt.data(), 2, 2, &tau, lse_img.data(), lse_txt.data(),
                                 &grad_loss, grad_img.data(), grad_txt.data(), &grad_tau);
  // Softmaxes put 1 - sigma on the diagonal and sigma off it; g/(2n) = 1/2:
  // dS_ii = (2(1 - sigma) - 2)/2 = -sigma, dS_ij = sigma.
  // grad_img = dS txt (txt swaps columns) = [[sigma, -sigma], [-sigma, sigma]];
  // grad_txt = dS^T img = dS; grad_tau = -(dS_01 * 1 + dS_10 * 1) = -2 sigma.
  EXPECT_TRUE(all_close(grad_img, {kSigma, -kSigma, -kSigma, kSigma}, {1e-6, 0}, "grad_img"));
  EXPECT_TRUE(all_close(grad_txt, {-kSigma, kSigma, kSigma, -kSigma}, {1e-6, 0}, "grad_txt"));
  EXPECT_NEAR(grad_tau, -2 * kSigma, 1e-6);
}

// Central differences of the CPU loss against its analytic gradient, for tau and a few features.
TEST(RefInfonce, GradientsMatchFiniteDifferences) {
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  const int64_t n = 5, d = 3;
  std::vector<float> img = random_normal(rng, n * d, 0.7f), txt = random_normal(rng, n * d, 0.7f);
  const float tau = 0.3f, grad_loss = 1.0f;
  std::vector<float> lse_img(n), lse_txt(n), grad_img(n * d), grad_txt(n * d);
  float loss = 0, grad_tau = 0;
  kernels::ref::infonce_forward(img.data(), txt.data(), n, d, &tau, &loss, lse_img.data(),
                                lse_txt.data());
  kernels::ref::infonce_backward(img.data(), txt.data(), n, d, &tau, lse_img.data(), lse_txt.data(),
                                 &grad_loss, grad_img.data(), grad_txt.data(), &grad_tau);
  auto loss_at = [&](const std::vector<float>& i, const std::vector<float>& t, float tau_value) {
    std::vector<float> a(n), b(n);
    float l = 0;
    kernels::ref::infonce_forward(i.data(), t.data(), n, d, &tau_value, &l, a.data(), b.data());
    return double(l);
  };
  // The loss comes back as fp32 (~1e-7 relative); h = 1e-3 keeps truncation (h^2) and rounding
  // (1e-7 / h) both near 1e-4.
  const double h = 1e-3;
  const double fd_tau = (loss_at(img, txt, tau + h) - loss_at(img, txt, tau - h)) / (2 * h);
  EXPECT_NEAR(grad_tau, fd_tau, 1e-3 + 1e-3 * std::fabs(fd_tau));
  for (int64_t e : {int64_t{0}, int64_t{7}, n * d - 1}) {
    std::vector<float> plus = img, minus = img;
    plus[e] += static_cast<float>(h);
    minus[e] -= static_cast<float>(h);
    const double fd_img = (loss_at(plus, txt, tau) - loss_at(minus, txt, tau)) / (2 * h);
    EXPECT_NEAR(grad_img[e], fd_img, 1e-3 + 1e-3 * std::fabs(fd_img)) << "img element " << e;
    plus = txt;
    minus = txt;
    plus[e] += static_cast<float>(h);
    minus[e] -= static_cast<float>(h);
    const double fd_txt = (loss_at(img, plus, tau) - loss_at(img, minus, tau)) / (2 * h);
    EXPECT_NEAR(grad_txt[e], fd_txt, 1e-3 + 1e-3 * std::fabs(fd_txt)) << "txt element " << e;
  }
}

TEST(RefInfonce, RejectsBadTau) {
  const std::vector<float> f = {1, 2};
  float loss, lse[1];
  for (float tau : {0.0f, -1.0f, std::numeric_limits<float>::infinity()}) {
    expect_error_mentioning(
        [&] { kernels::ref::infonce_forward(f.data(), f.data(), 1, 2, &tau, &loss, lse, lse); },
        {"tau"});
  }
}

// ---- Every backend
// --------------------------------------------------------------------------------

class InfonceSizeTest
    : public ::testing::TestWithParam<std::tuple<Backend, int64_t /*n*/, int64_t /*d*/>> {};

TEST_P(InfonceSizeTest, MatchesNaiveDouble) {
  const auto [backend, n, d] = GetParam();
  MMFL_SKIP_IF_UNAVAILABLE(backend);
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  const std::vector<float> img = unit_rows(rng, n, d), txt = unit_rows(rng, n, d);
  const float tau = std::uniform_real_distribution<float>(0.05f, 1.0f)(rng);
  const float grad_loss = std::uniform_real_distribution<float>(0.5f, 2.0f)(rng);
  SCOPED_TRACE(::testing::Message() << "tau=" << tau << " grad_loss=" << grad_loss);
  const InfonceExpected naive = naive_infonce(img, txt, n, d, tau, grad_loss);
  const InfonceOutputs got = run_backend(backend, img, txt, n, d, tau, grad_loss, 0);
  {
    SCOPED_TRACE("against the naive double-precision computation");
    expect_matches(got, naive);
  }
  if (backend != Backend::kRef) {
    // The CUDA code against the CPU reference (the kernels' oracle), same tolerances.
    SCOPED_TRACE("against the CPU reference");
    expect_matches(
        got, as_expected(run_backend(Backend::kRef, img, txt, n, d, tau, grad_loss, 0), naive));
  }
}

std::string size_param_name(
    const ::testing::TestParamInfo<std::tuple<Backend, int64_t, int64_t>>& param) {
  return std::string(backend_name(std::get<0>(param.param))) + "_n" +
         std::to_string(std::get<1>(param.param)) + "_d" + std::to_string(std::get<2>(param.param));
}

// n: 1, 2, primes, and around the 64-row tile; d: 1, odd, the 32-wide slice, beyond it.
INSTANTIATE_TEST_SUITE_P(Backends, InfonceSizeTest,
                         ::testing::Combine(::testing::Values(Backend::kRef, Backend::kCpu,
                                                              Backend::kSimt, Backend::kCuda),
                                            ::testing::Values(int64_t{1}, int64_t{2}, int64_t{7},
                                                              int64_t{63}, int64_t{64}, int64_t{65},
                                                              int64_t{131}),
                                            ::testing::Values(int64_t{1}, int64_t{3}, int64_t{32},
                                                              int64_t{67}, int64_t{128})),
                         size_param_name);

class InfonceTest : public ::testing::TestWithParam<Backend> {};

// Paths the size sweep does not reach: misaligned features (scalar loads although d % 4 == 0)
// and a feature size whose backward accumulator no longer fits in shared memory.
TEST_P(InfonceTest, LayoutsAndAccumulatorSpaces) {
  const Backend backend = GetParam();
  MMFL_SKIP_IF_UNAVAILABLE(backend);
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  struct Case {
    int64_t n, d, offset;
  };
  for (const Case& c : {Case{65, 32, 1}, Case{9, 300, 0}, Case{70, 260, 3}}) {
    SCOPED_TRACE(::testing::Message() << "n=" << c.n << " d=" << c.d << " offset=" << c.offset);
    const std::vector<float> img = unit_rows(rng, c.n, c.d), txt = unit_rows(rng, c.n, c.d);
    expect_matches(run_backend(backend, img, txt, c.n, c.d, 0.1f, 1.0f, c.offset),
                   naive_infonce(img, txt, c.n, c.d, 0.1f, 1.0f));
  }
}

// tau = 0.01 with unit-norm features: logits up to 100, where exp() without a running max would
// overflow fp32. Random pairs, and perfectly matched pairs (loss close to 0).
TEST_P(InfonceTest, StableForLargeLogits) {
  const Backend backend = GetParam();
  MMFL_SKIP_IF_UNAVAILABLE(backend);
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  const int64_t n = 65, d = 32;
  const std::vector<float> img = unit_rows(rng, n, d), txt = unit_rows(rng, n, d);
  for (const std::vector<float>* t : {&txt, &img}) {
    const InfonceOutputs got = run_backend(backend, img, *t, n, d, 0.01f, 1.0f, 0);
    EXPECT_TRUE(std::isfinite(got.loss) && std::isfinite(got.grad_tau));
    expect_matches(got, naive_infonce(img, *t, n, d, 0.01f, 1.0f));
  }
}

TEST_P(InfonceTest, RejectsBadSizes) {
  const Backend backend = GetParam();
  MMFL_SKIP_IF_UNAVAILABLE(backend);
  DeviceBuffer<float> buf(backend, 16);
  buf.fill(1.0f);  // a valid tau, so that the argument under test is what fails
  float* p = buf.get();
  expect_error_mentioning([&] { run_forward(backend, p, p, 0, 4, p, p, p, p); }, {"n (number"});
  expect_error_mentioning([&] { run_forward(backend, p, p, 2, 0, p, p, p, p); }, {"d (feature"});
  expect_error_mentioning([&] { run_forward(backend, nullptr, p, 2, 2, p, p, p, p); }, {"img"});
  expect_error_mentioning([&] { run_backward(backend, p, p, 2, 2, p, p, p, p, p, nullptr, p); },
                          {"grad_txt"});
}

INSTANTIATE_TEST_SUITE_P(Backends, InfonceTest,
                         ::testing::Values(Backend::kRef, Backend::kCpu, Backend::kSimt,
                                           Backend::kCuda),
                         backend_param_name);

}  // namespace
}  // namespace mmfl::test
