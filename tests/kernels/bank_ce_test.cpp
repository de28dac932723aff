// Cross entropy against a feature bank and CreamFL's representation ensemble: golden and
// finite-difference tests of the CPU reference, then one body per backend (CPU reference, emulated
// CUDA, real CUDA) against a naive full-matrix computation in double precision and against the
// CPU reference, over edge sizes (1, primes, around the 64-wide tile), feature sizes (1, odd, the
// 32-wide slice, float4 and scalar loads), banks long enough to be split across blocks, and the
// ensemble's properties.
#include "mmfl/kernels/bank_ce.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "backend.h"
#include "mmfl/error.h"
#include "ops.h"
#include "test_util.h"

namespace mmfl::test {
namespace {

using kernels::EnsembleWeighting;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Rows scaled to unit norm, as CLIP-style encoders emit them.
std::vector<float> unit_rows(std::mt19937_64& rng, int64_t rows, int64_t d) {
  std::vector<float> v = random_normal(rng, rows * d, 1.0f);
  for (int64_t i = 0; i < rows; ++i) {
    double norm = 0;
    for (int64_t k = 0; k < d; ++k)
      norm += double(v[i * d + k]) * v[i * d + k];
    norm = std::sqrt(std::max(norm, 1e-30));
    for (int64_t k = 0; k < d; ++k)
      v[i * d + k] = static_cast<float>(v[i * d + k] / norm);
  }
  return v;
}

std::vector<int64_t> random_targets(std::mt19937_64& rng, int64_t b, int64_t n) {
  std::uniform_int_distribution<int64_t> dist(0, n - 1);
  std::vector<int64_t> t(b);
  for (int64_t& x : t)
    x = dist(rng);
  return t;
}

std::vector<float> random_uniform(std::mt19937_64& rng, int64_t count, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(count);
  for (float& x : v)
    x = dist(rng);
  return v;
}

// Per element: |actual - expected| <= allowed[e]. NaN always fails.
::testing::AssertionResult close_within(const std::vector<float>& actual,
                                        const std::vector<double>& expected,
                                        const std::vector<double>& allowed,
                                        const std::string& what) {
  if (actual.size() != expected.size() || allowed.size() != expected.size()) {
    return ::testing::AssertionFailure()
           << what << ": size " << actual.size() << ", expected " << expected.size();
  }
  std::ostringstream details;
  std::size_t bad = 0;
  for (std::size_t i = 0; i < actual.size(); ++i) {
    const double err = std::fabs(double(actual[i]) - expected[i]);
    if (!(err <= allowed[i])) {
      if (bad < 5) {
        details << "\n  [" << i << "] actual " << actual[i] << ", expected " << expected[i]
                << ", |error| " << err << " > " << allowed[i];
      }
      ++bad;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": " << bad << " of " << actual.size()
                                       << " elements outside their bound" << details.str();
}

// ---- Naive oracles: the full logit matrix in double ---------------------------------------------

struct BankCeExpected {
  std::vector<double> lse, loss, grad_q, grad_bank;
  // Per gradient element, the sum of the absolute values of the terms it adds up:
  // |g_i| (P_im + [m == t_i]) |feature| / tau. Rounding errors are relative to this, not to the
  // (cancelling) sum.
  std::vector<double> grad_q_terms, grad_bank_terms;
  double max_abs_logit = 0;
};

BankCeExpected naive_bank_ce(const std::vector<float>& q, const std::vector<float>& bank,
                             const std::vector<int64_t>& target,
                             const std::vector<float>& grad_loss, int64_t b, int64_t n, int64_t d,
                             double tau) {
  BankCeExpected e;
  std::vector<double> s(b * n);
  for (int64_t i = 0; i < b; ++i) {
    for (int64_t m = 0; m < n; ++m) {
      double dot = 0;
      for (int64_t k = 0; k < d; ++k)
        dot += double(q[i * d + k]) * bank[m * d + k];
      s[i * n + m] = dot / tau;
      e.max_abs_logit = std::max(e.max_abs_logit, std::fabs(s[i * n + m]));
    }
  }
  e.lse.resize(b);
  e.loss.resize(b);
  e.grad_q.assign(b * d, 0.0);
  e.grad_q_terms.assign(b * d, 0.0);
  e.grad_bank.assign(n * d, 0.0);
  e.grad_bank_terms.assign(n * d, 0.0);
  for (int64_t i = 0; i < b; ++i) {
    const double mx = *std::max_element(s.begin() + i * n, s.begin() + (i + 1) * n);
    double sum = 0;
    for (int64_t m = 0; m < n; ++m)
      sum += std::exp(s[i * n + m] - mx);
    e.lse[i] = mx + std::log(sum);
    e.loss[i] = e.lse[i] - s[i * n + target[i]];
    for (int64_t m = 0; m < n; ++m) {
      const double p = std::exp(s[i * n + m] - e.lse[i]);
      const double onehot = m == target[i] ? 1.0 : 0.0;
      const double dlogit = grad_loss[i] * (p - onehot) / tau;
      const double term = std::fabs(grad_loss[i]) * (p + onehot) / tau;
      for (int64_t k = 0; k < d; ++k) {
        e.grad_q[i * d + k] += dlogit * bank[m * d + k];
        e.grad_q_terms[i * d + k] += term * std::fabs(bank[m * d + k]);
        e.grad_bank[m * d + k] += dlogit * q[i * d + k];
        e.grad_bank_terms[m * d + k] += term * std::fabs(q[i * d + k]);
      }
    }
  }
  return e;
}

struct EnsembleExpected {
  std::vector<double> weights, out;
  double max_abs_logit = 0;
  double max_abs_local = 0;
};

EnsembleExpected naive_ensemble(const std::vector<float>& local, const std::vector<float>& bank,
                                int64_t k, int64_t n, int64_t d, double tau,
                                EnsembleWeighting weighting) {
  EnsembleExpected e;
  for (float x : local)
    e.max_abs_local = std::max(e.max_abs_local, std::fabs(double(x)));
  // score[c, j] = log softmax_m (<local[c, j], bank[m]> / tau) at m = j, from the full matrix.
  std::vector<double> score(k * n);
  for (int64_t c = 0; c < k; ++c) {
    std::vector<double> s(n * n);
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t m = 0; m < n; ++m) {
        double dot = 0;
        for (int64_t x = 0; x < d; ++x)
          dot += double(local[(c * n + j) * d + x]) * bank[m * d + x];
        s[j * n + m] = dot / tau;
        e.max_abs_logit = std::max(e.max_abs_logit, std::fabs(dot / tau));
      }
      const double mx = *std::max_element(s.begin() + j * n, s.begin() + (j + 1) * n);
      double sum = 0;
      for (int64_t m = 0; m < n; ++m)
        sum += std::exp(s[j * n + m] - mx);
      score[c * n + j] = s[j * n + j] - mx - std::log(sum);
    }
  }
  e.weights.assign(k * n, 1.0 / double(k));
  if (weighting == EnsembleWeighting::kContrastive) {
    for (int64_t j = 0; j < n; ++j) {
      double mx = -std::numeric_limits<double>::infinity();
      for (int64_t c = 0; c < k; ++c)
        mx = std::max(mx, score[c * n + j]);
      double sum = 0;
      for (int64_t c = 0; c < k; ++c)
        sum += std::exp(score[c * n + j] - mx);
      for (int64_t c = 0; c < k; ++c)
        e.weights[c * n + j] = std::exp(score[c * n + j] - mx) / sum;
    }
  }
  e.out.assign(n * d, 0.0);
  for (int64_t c = 0; c < k; ++c) {
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t x = 0; x < d; ++x)
        e.out[j * d + x] += e.weights[c * n + j] * local[(c * n + j) * d + x];
    }
  }
  return e;
}

// ---- Running one backend ------------------------------------------------------------------------

void run_forward(Backend backend, const float* q, const float* bank, const int64_t* target,
                 int64_t b, int64_t n, int64_t d, const float* tau, float* lse, float* loss) {
  ops::bank_ce_forward(backend, q, bank, target, b, n, d, tau, lse, loss);
}

void run_backward(Backend backend, const float* q, const float* bank, const int64_t* target,
                  int64_t b, int64_t n, int64_t d, const float* tau, const float* lse,
                  const float* grad_loss, float* grad_q, float* grad_bank) {
  ops::bank_ce_backward(backend, q, bank, target, b, n, d, tau, lse, grad_loss, grad_q, grad_bank);
}

void run_ensemble(Backend backend, const float* local, const float* bank, int64_t k, int64_t n,
                  int64_t d, const float* tau, EnsembleWeighting weighting, float* weights,
                  float* out) {
  ops::creamfl_ensemble(backend, local, bank, k, n, d, tau, weighting, weights, out);
}

struct BankCeInputs {
  int64_t b, n, d;
  std::vector<float> q, bank;
  std::vector<int64_t> target;
  std::vector<float> grad_loss;
  float tau;
};

BankCeInputs random_inputs(std::mt19937_64& rng, int64_t b, int64_t n, int64_t d, float tau) {
  BankCeInputs in{b,
                  n,
                  d,
                  unit_rows(rng, b, d),
                  unit_rows(rng, n, d),
                  random_targets(rng, b, n),
                  random_uniform(rng, b, -1.0f, 2.0f),
                  tau};
  return in;
}

struct BankCeOutputs {
  std::vector<float> lse, loss, grad_q, grad_bank;
  std::vector<float> grad_q_without_bank;  // the backward again, grad_bank = nullptr
};

// Forward, then the backward from the backend's own log-sum-exps, once with grad_bank and once
// without. `offset` floats of padding before every feature matrix misalign them (the scalar-load
// path even when d % 4 == 0). Every output is poisoned with NaN first.
BankCeOutputs run_backend(Backend backend, const BankCeInputs& in, int64_t offset) {
  const int64_t b = in.b, n = in.n, d = in.d;
  auto padded = [&](const std::vector<float>& v) {
    std::vector<float> p(offset, 0.0f);
    p.insert(p.end(), v.begin(), v.end());
    return p;
  };
  DeviceBuffer<float> d_q(backend, padded(in.q)), d_bank(backend, padded(in.bank));
  DeviceBuffer<int64_t> d_target(backend, in.target);
  DeviceBuffer<float> d_tau(backend, std::vector<float>{in.tau});
  DeviceBuffer<float> d_grad_loss(backend, in.grad_loss);
  DeviceBuffer<float> d_lse(backend, b), d_loss(backend, b);
  DeviceBuffer<float> d_grad_q(backend, offset + b * d), d_grad_q2(backend, offset + b * d);
  DeviceBuffer<float> d_grad_bank(backend, offset + n * d);
  for (auto* buf : {&d_lse, &d_loss, &d_grad_q, &d_grad_q2, &d_grad_bank})
    buf->fill(kNaN);
  const float* q = d_q.get() + offset;
  const float* bank = d_bank.get() + offset;
  run_forward(backend, q, bank, d_target.get(), b, n, d, d_tau.get(), d_lse.get(), d_loss.get());
  run_backward(backend, q, bank, d_target.get(), b, n, d, d_tau.get(), d_lse.get(),
               d_grad_loss.get(), d_grad_q.get() + offset, d_grad_bank.get() + offset);
  run_backward(backend, q, bank, d_target.get(), b, n, d, d_tau.get(), d_lse.get(),
               d_grad_loss.get(), d_grad_q2.get() + offset, nullptr);
  BankCeOutputs out;
  out.lse = d_lse.download();
  out.loss = d_loss.download();
  auto unpadded = [&](const DeviceBuffer<float>& buf) {
    const std::vector<float> v = buf.download();
    for (int64_t e = 0; e < offset; ++e)
      EXPECT_TRUE(std::isnan(v[e])) << "wrote before the output";
    return std::vector<float>(v.begin() + offset, v.end());
  };
  out.grad_q = unpadded(d_grad_q);
  out.grad_q_without_bank = unpadded(d_grad_q2);
  out.grad_bank = unpadded(d_grad_bank);
  return out;
}

// fp32 tolerances. A logit carries ~1e-7 * (1 + |logit|) absolute error (an fp32 dot product
// scaled by 1/tau); the log-sum-exp and the loss inherit it, and exp() turns it into the same
// relative error of every probability. A gradient element adds terms g (P - onehot) feature / tau
// that cancel, so its allowance is relative to the sum of their absolute values (naive oracle),
// times the logit error.
void expect_matches(const BankCeOutputs& got, const BankCeExpected& want,
                    const BankCeExpected& bounds) {
  const double logit_scale = 1.0 + bounds.max_abs_logit;
  const Tolerance value_tol{2e-6 * logit_scale, 2e-6};
  EXPECT_TRUE(all_close(got.lse, want.lse, value_tol, "lse"));
  EXPECT_TRUE(all_close(got.loss, want.loss, value_tol, "loss"));
  auto allowance = [&](const std::vector<double>& terms, const std::vector<double>& ref) {
    std::vector<double> a(terms.size());
    for (std::size_t e = 0; e < terms.size(); ++e)
      a[e] = 2e-6 * logit_scale * terms[e] + 1e-6 * std::fabs(ref[e]);
    return a;
  };
  EXPECT_TRUE(
      close_within(got.grad_q, want.grad_q, allowance(bounds.grad_q_terms, want.grad_q), "grad_q"));
  EXPECT_TRUE(close_within(got.grad_bank, want.grad_bank,
                           allowance(bounds.grad_bank_terms, want.grad_bank), "grad_bank"));
  // The grad_q pass does not depend on whether grad_bank is wanted, and repeats bit for bit.
  EXPECT_TRUE(all_equal(got.grad_q_without_bank, got.grad_q, "grad_q without grad_bank"));
}

BankCeExpected as_expected(const BankCeOutputs& o) {
  BankCeExpected e;
  e.lse.assign(o.lse.begin(), o.lse.end());
  e.loss.assign(o.loss.begin(), o.loss.end());
  e.grad_q.assign(o.grad_q.begin(), o.grad_q.end());
  e.grad_bank.assign(o.grad_bank.begin(), o.grad_bank.end());
  return e;
}

// The backend against the naive oracle and, unless it is the CPU reference, against the CPU
// reference (the kernels' oracle) with the same tolerances. Returns the backend's outputs.
BankCeOutputs check_backend(Backend backend, const BankCeInputs& in, int64_t offset) {
  SCOPED_TRACE(::testing::Message() << "b=" << in.b << " n=" << in.n << " d=" << in.d
                                    << " tau=" << in.tau << " offset=" << offset);
  const BankCeExpected naive =
      naive_bank_ce(in.q, in.bank, in.target, in.grad_loss, in.b, in.n, in.d, in.tau);
  const BankCeOutputs got = run_backend(backend, in, offset);
  {
    SCOPED_TRACE("against the naive double-precision computation");
    expect_matches(got, naive, naive);
  }
  if (backend != Backend::kRef) {
    SCOPED_TRACE("against the CPU reference");
    expect_matches(got, as_expected(run_backend(Backend::kRef, in, 0)), naive);
  }
  return got;
}

struct EnsembleOutputs {
  std::vector<float> weights, out;
};

EnsembleOutputs run_ensemble_backend(Backend backend, const std::vector<float>& local,
                                     const std::vector<float>& bank, int64_t k, int64_t n,
                                     int64_t d, float tau, EnsembleWeighting weighting) {
  DeviceBuffer<float> d_local(backend, local), d_bank(backend, bank);
  DeviceBuffer<float> d_tau(backend, std::vector<float>{tau});
  DeviceBuffer<float> d_weights(backend, k * n), d_out(backend, n * d);
  d_weights.fill(kNaN);
  d_out.fill(kNaN);
  run_ensemble(backend, d_local.get(), d_bank.get(), k, n, d, d_tau.get(), weighting,
               d_weights.get(), d_out.get());
  return EnsembleOutputs{d_weights.download(), d_out.download()};
}

// Weights: a score (log-softmax of logits) carries about twice a logit's error and a softmax
// weight w the same relative error, w <= 1. The features then add k weighted terms.
void expect_ensemble_matches(const EnsembleOutputs& got, const std::vector<double>& weights,
                             const std::vector<double>& out, const EnsembleExpected& bounds,
                             int64_t k) {
  const double weight_atol = 4e-6 * (1.0 + bounds.max_abs_logit);
  EXPECT_TRUE(all_close(got.weights, weights, {weight_atol, 1e-5}, "weights"));
  EXPECT_TRUE(all_close(got.out, out,
                        {(weight_atol + 1e-6) * double(k) * bounds.max_abs_local, 1e-5}, "out"));
}

void check_ensemble(Backend backend, const std::vector<float>& local,
                    const std::vector<float>& bank, int64_t k, int64_t n, int64_t d, float tau,
                    EnsembleWeighting weighting) {
  SCOPED_TRACE(::testing::Message() << "k=" << k << " n=" << n << " d=" << d << " tau=" << tau
                                    << " weighting=" << static_cast<int>(weighting));
  const EnsembleExpected naive = naive_ensemble(local, bank, k, n, d, tau, weighting);
  const EnsembleOutputs got = run_ensemble_backend(backend, local, bank, k, n, d, tau, weighting);
  {
    SCOPED_TRACE("against the naive double-precision computation");
    expect_ensemble_matches(got, naive.weights, naive.out, naive, k);
  }
  if (backend != Backend::kRef) {
    SCOPED_TRACE("against the CPU reference");
    const EnsembleOutputs cpu =
        run_ensemble_backend(Backend::kRef, local, bank, k, n, d, tau, weighting);
    expect_ensemble_matches(got, {cpu.weights.begin(), cpu.weights.end()},
                            {cpu.out.begin(), cpu.out.end()}, naive, k);
  }
}

// ---- CPU reference: golden cases ----------------------------------------------------------------

// sigma(x) = e^x / (1 + e^x): the softmax weight of the larger of two logits that differ by x.
double sigma(double x) {
  return std::exp(x) / (1.0 + std::exp(x));
}

TEST(RefBankCe, GoldenTwoBankRows) {
  // q = e0 against bank = I (2 x 2), tau = 1, target 0: logits (1, 0).
  const std::vector<float> q = {1, 0}, bank = {1, 0, 0, 1};
  const std::vector<int64_t> target = {0};
  const float tau = 1.0f, g = 1.0f;
  float lse = kNaN, loss = kNaN;
  std::vector<float> grad_q(2, kNaN), grad_bank(4, kNaN);
  kernels::ref::bank_ce_forward(q.data(), bank.data(), target.data(), 1, 2, 2, &tau, &lse, &loss);
  EXPECT_NEAR(lse, std::log(1.0 + std::exp(1.0)), 1e-6);  // log(e^1 + e^0)
  EXPECT_NEAR(loss, std::log(1.0 + std::exp(-1.0)), 1e-6);
  kernels::ref::bank_ce_backward(q.data(), bank.data(), target.data(), 1, 2, 2, &tau, &lse, &g,
                                 grad_q.data(), grad_bank.data());
  // P = (s, 1 - s), s = sigma(1); dL/dlogits = (s - 1, 1 - s).
  // grad_q = (s - 1) e0 + (1 - s) e1; grad_bank[m] = dL/dlogit_m * q.
  const double s = sigma(1.0);
  EXPECT_TRUE(all_close(grad_q, {s - 1, 1 - s}, {1e-6, 0}, "grad_q"));
  EXPECT_TRUE(all_close(grad_bank, {s - 1, 0, 1 - s, 0}, {1e-6, 0}, "grad_bank"));
}

TEST(RefBankCe, GoldenTemperatureAndTarget) {
  // Same q and bank, tau = 0.5 (logits (2, 0)), target 1, grad_loss 2.
  const std::vector<float> q = {1, 0}, bank = {1, 0, 0, 1};
  const std::vector<int64_t> target = {1};
  const float tau = 0.5f, g = 2.0f;
  float lse = kNaN, loss = kNaN;
  std::vector<float> grad_q(2, kNaN), grad_bank(4, kNaN);
  kernels::ref::bank_ce_forward(q.data(), bank.data(), target.data(), 1, 2, 2, &tau, &lse, &loss);
  EXPECT_NEAR(lse, std::log(1.0 + std::exp(2.0)), 1e-6);
  EXPECT_NEAR(loss, std::log(1.0 + std::exp(2.0)), 1e-6);  // the target's logit is 0
  kernels::ref::bank_ce_backward(q.data(), bank.data(), target.data(), 1, 2, 2, &tau, &lse, &g,
                                 grad_q.data(), grad_bank.data());
  // P = (s, 1 - s), s = sigma(2); dL/dlogits = 2 (s, -s); each gradient brings 1/tau = 2:
  // grad_q = 4 s (e0 - e1), grad_bank[0] = 4 s q, grad_bank[1] = -4 s q.
  const double s = sigma(2.0);
  EXPECT_TRUE(all_close(grad_q, {4 * s, -4 * s}, {1e-6, 0}, "grad_q"));
  EXPECT_TRUE(all_close(grad_bank, {4 * s, 0, -4 * s, 0}, {1e-6, 0}, "grad_bank"));
}

TEST(RefBankCe, GoldenEnsembleOfTwoClients) {
  // bank = I (2 x 2), tau = 1. Client 0 holds the bank itself (local[0, j] = e_j), client 1 the
  // rows swapped (local[1, j] = e_(1-j)). For every sample the matched logit is 1 for client 0
  // and 0 for client 1, and both have the same log-sum-exp log(1 + e), so the scores differ by 1:
  // weights (sigma(1), 1 - sigma(1)).
  const std::vector<float> bank = {1, 0, 0, 1};
  const std::vector<float> local = {1, 0, 0, 1, 0, 1, 1, 0};
  const float tau = 1.0f;
  std::vector<float> weights(4, kNaN), out(4, kNaN);
  kernels::ref::creamfl_ensemble(local.data(), bank.data(), 2, 2, 2, &tau,
                                 EnsembleWeighting::kContrastive, weights.data(), out.data());
  const double s = sigma(1.0);
  EXPECT_TRUE(all_close(weights, {s, s, 1 - s, 1 - s}, {1e-6, 0}, "weights"));
  // out[0] = s e0 + (1 - s) e1, out[1] = s e1 + (1 - s) e0.
  EXPECT_TRUE(all_close(out, {s, 1 - s, 1 - s, s}, {1e-6, 0}, "out"));
  kernels::ref::creamfl_ensemble(local.data(), bank.data(), 2, 2, 2, &tau, EnsembleWeighting::kMean,
                                 weights.data(), out.data());
  EXPECT_TRUE(all_equal(weights, {0.5f, 0.5f, 0.5f, 0.5f}, "mean weights"));
  EXPECT_TRUE(all_equal(out, {0.5f, 0.5f, 0.5f, 0.5f}, "mean out"));
}

// Central differences of sum_i g_i loss_i against the analytic gradients of the CPU reference.
TEST(RefBankCe, GradientsMatchFiniteDifferences) {
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  const int64_t b = 3, n = 5, d = 4;
  const BankCeInputs in = random_inputs(rng, b, n, d, 0.3f);
  std::vector<float> lse(b), loss(b), grad_q(b * d), grad_bank(n * d);
  kernels::ref::bank_ce_forward(in.q.data(), in.bank.data(), in.target.data(), b, n, d, &in.tau,
                                lse.data(), loss.data());
  kernels::ref::bank_ce_backward(in.q.data(), in.bank.data(), in.target.data(), b, n, d, &in.tau,
                                 lse.data(), in.grad_loss.data(), grad_q.data(), grad_bank.data());
  auto objective = [&](const std::vector<float>& q, const std::vector<float>& bank) {
    std::vector<float> l(b), x(b);
    kernels::ref::bank_ce_forward(q.data(), bank.data(), in.target.data(), b, n, d, &in.tau,
                                  x.data(), l.data());
    double total = 0;
    for (int64_t i = 0; i < b; ++i)
      total += double(in.grad_loss[i]) * l[i];
    return total;
  };
  // Losses come back as fp32 (~1e-7 relative); h = 1e-3 keeps truncation (h^2) and rounding
  // (1e-7 / h) both near 1e-4.
  const double h = 1e-3;
  for (int64_t e : {int64_t{0}, int64_t{5}, b * d - 1}) {
    std::vector<float> plus = in.q, minus = in.q;
    plus[e] += static_cast<float>(h);
    minus[e] -= static_cast<float>(h);
    const double fd = (objective(plus, in.bank) - objective(minus, in.bank)) / (2 * h);
    EXPECT_NEAR(grad_q[e], fd, 1e-3 + 1e-3 * std::fabs(fd)) << "q element " << e;
  }
  for (int64_t e : {int64_t{0}, int64_t{9}, n * d - 1}) {
    std::vector<float> plus = in.bank, minus = in.bank;
    plus[e] += static_cast<float>(h);
    minus[e] -= static_cast<float>(h);
    const double fd = (objective(in.q, plus) - objective(in.q, minus)) / (2 * h);
    EXPECT_NEAR(grad_bank[e], fd, 1e-3 + 1e-3 * std::fabs(fd)) << "bank element " << e;
  }
}

// ---- Every backend: bank cross entropy ----------------------------------------------------------

class BankCeSizeTest : public ::testing::TestWithParam<std::tuple<Backend, int64_t /*b*/>> {};

// For one query count b: every bank size n (1, 7, around the 64-wide tile, a prime past two tiles)
// with a feature size d (1, odd, the 32-wide slice with float4 loads, odd past two slices) that
// rotates with b and n, so that over the suite every pair of (b, n), (b, d) and (n, d) values
// meets once (all pairs, not the full product: the emulator stays fast under ThreadSanitizer).
TEST_P(BankCeSizeTest, MatchesNaiveDouble) {
  const auto [backend, b] = GetParam();
  MMFL_SKIP_IF_UNAVAILABLE(backend);
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  const std::vector<int64_t> bs = {1, 2, 63, 64, 65, 130}, ns = {1, 7, 64, 67, 131},
                             ds = {1, 3, 32, 67};
  const std::size_t bi = std::find(bs.begin(), bs.end(), b) - bs.begin();
  for (std::size_t ni = 0; ni < ns.size(); ++ni) {
    const float tau = std::uniform_real_distribution<float>(0.05f, 1.0f)(rng);
    check_backend(backend, random_inputs(rng, b, ns[ni], ds[(bi + ni) % ds.size()], tau), 0);
  }
}

std::string size_param_name(const ::testing::TestParamInfo<std::tuple<Backend, int64_t>>& param) {
  return std::string(backend_name(std::get<0>(param.param))) + "_b" +
         std::to_string(std::get<1>(param.param));
}

INSTANTIATE_TEST_SUITE_P(Backends, BankCeSizeTest,
                         ::testing::Combine(::testing::Values(Backend::kRef, Backend::kCpu,
                                                              Backend::kSimt, Backend::kCuda),
                                            ::testing::Values(int64_t{1}, int64_t{2}, int64_t{63},
                                                              int64_t{64}, int64_t{65},
                                                              int64_t{130})),
                         size_param_name);

class BankCeTest : public ::testing::TestWithParam<Backend> {};

// Banks long enough that the device forward and backward split them across blocks (partials
// merged by a second launch; 2 and 3 splits, the last one short), in the grad_bank pass too (its
// bank is the queries), misaligned features (scalar loads although d % 4 == 0), and a feature
// size whose backward accumulator no longer fits in shared memory.
TEST_P(BankCeTest, SplitBanksLayoutsAndAccumulatorSpaces) {
  const Backend backend = GetParam();
  MMFL_SKIP_IF_UNAVAILABLE(backend);
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  struct Case {
    int64_t b, n, d, offset;
  };
  for (const Case& c : {Case{65, 400, 4, 0}, Case{2, 300, 8, 1}, Case{300, 3, 4, 0},
                        Case{65, 67, 32, 1}, Case{3, 5, 300, 0}}) {
    check_backend(backend, random_inputs(rng, c.b, c.n, c.d, 0.2f), c.offset);
  }
}

// tau = 0.01 with unit-norm rows: logits up to 100, where exp() without a running max would
// overflow fp32. Random queries, and queries equal to their target's bank row (loss near 0).
TEST_P(BankCeTest, StableForLargeLogits) {
  const Backend backend = GetParam();
  MMFL_SKIP_IF_UNAVAILABLE(backend);
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  BankCeInputs in = random_inputs(rng, 65, 67, 32, 0.01f);
  check_backend(backend, in, 0);
  for (int64_t i = 0; i < in.b; ++i)
    std::copy_n(in.bank.begin() + in.target[i] * in.d, in.d, in.q.begin() + i * in.d);
  for (float l : check_backend(backend, in, 0).loss)
    EXPECT_TRUE(std::isfinite(l) && l < 1.0f) << "loss " << l;
}

// The CPU reference rejects a target outside the bank; the device paths cannot check without a
// synchronization and give that row a NaN loss instead (the other rows are unaffected).
TEST_P(BankCeTest, TargetOutsideTheBank) {
  const Backend backend = GetParam();
  MMFL_SKIP_IF_UNAVAILABLE(backend);
  std::mt19937_64 rng(test_seed());
  BankCeInputs in = random_inputs(rng, 3, 5, 4, 0.5f);
  in.target[1] = 5;
  DeviceBuffer<float> d_q(backend, in.q), d_bank(backend, in.bank);
  DeviceBuffer<int64_t> d_target(backend, in.target);
  DeviceBuffer<float> d_tau(backend, std::vector<float>{in.tau}), d_lse(backend, 3),
      d_loss(backend, 3);
  auto forward = [&] {
    run_forward(backend, d_q.get(), d_bank.get(), d_target.get(), 3, 5, 4, d_tau.get(), d_lse.get(),
                d_loss.get());
  };
  if (backend == Backend::kRef || backend == Backend::kCpu) {
    expect_error_mentioning(forward, {"target[1] = 5", "[0, 5)"});
    return;
  }
  forward();
  const std::vector<float> loss = d_loss.download();
  EXPECT_TRUE(std::isfinite(loss[0]) && std::isnan(loss[1]) && std::isfinite(loss[2]))
      << loss[0] << " " << loss[1] << " " << loss[2];
}

TEST_P(BankCeTest, RejectsBadSizes) {
  const Backend backend = GetParam();
  MMFL_SKIP_IF_UNAVAILABLE(backend);
  DeviceBuffer<float> buf(backend, 16);
  buf.fill(1.0f);  // a valid tau, so that the argument under test is what fails
  DeviceBuffer<int64_t> target(backend, std::vector<int64_t>(4, 0));
  float* p = buf.get();
  const int64_t* t = target.get();
  expect_error_mentioning([&] { run_forward(backend, p, p, t, 0, 2, 2, p, p, p); },
                          {"b (queries) must be >= 1, got 0"});
  expect_error_mentioning([&] { run_forward(backend, p, p, t, 2, 0, 2, p, p, p); },
                          {"n (bank rows) must be >= 1, got 0"});
  expect_error_mentioning([&] { run_forward(backend, p, p, t, 2, 2, 0, p, p, p); },
                          {"d (feature size) must be >= 1, got 0"});
  expect_error_mentioning([&] { run_backward(backend, p, p, t, 0, 2, 2, p, p, p, p, p); },
                          {"b (queries)"});
  expect_error_mentioning([&] { run_backward(backend, p, p, t, 2, 0, 2, p, p, p, p, p); },
                          {"n (bank rows)"});
  expect_error_mentioning([&] { run_backward(backend, p, p, t, 2, 2, 0, p, p, p, p, p); },
                          {"d (feature size)"});
  const auto kC = EnsembleWeighting::kContrastive;
  expect_error_mentioning([&] { run_ensemble(backend, p, p, 0, 2, 2, p, kC, p, p); },
                          {"must be >= 1, got 0"});
  expect_error_mentioning([&] { run_ensemble(backend, p, p, 2, 0, 2, p, kC, p, p); },
                          {"n (bank rows)"});
  expect_error_mentioning([&] { run_ensemble(backend, p, p, 2, 2, 0, p, kC, p, p); },
                          {"d (feature size)"});
  expect_error_mentioning(
      [&] { run_ensemble(backend, p, p, 2, 2, 2, p, static_cast<EnsembleWeighting>(7), p, p); },
      {"EnsembleWeighting", "7"});
}

INSTANTIATE_TEST_SUITE_P(Backends, BankCeTest,
                         ::testing::Values(Backend::kRef, Backend::kCpu, Backend::kSimt,
                                           Backend::kCuda),
                         backend_param_name);

// ---- Every backend: the CreamFL ensemble --------------------------------------------------------

class EnsembleSizeTest : public ::testing::TestWithParam<std::tuple<Backend, int64_t /*k*/>> {};

// For one client count k: public-set sizes n (1, below and past two 64-row tiles) with a feature
// size d (1, float4 loads, odd) rotating with k and n so that every pair of values meets once,
// both weightings. The k*n stacked rows cross tile boundaries at other places than n does.
TEST_P(EnsembleSizeTest, MatchesNaiveDouble) {
  const auto [backend, k] = GetParam();
  MMFL_SKIP_IF_UNAVAILABLE(backend);
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  const std::vector<int64_t> ks = {1, 2, 5}, ns = {1, 63, 130}, ds = {1, 16, 67};
  const std::size_t ki = std::find(ks.begin(), ks.end(), k) - ks.begin();
  for (std::size_t ni = 0; ni < ns.size(); ++ni) {
    const int64_t n = ns[ni], d = ds[(ki + ni) % ds.size()];
    const std::vector<float> local = unit_rows(rng, k * n, d), bank = unit_rows(rng, n, d);
    const float tau = std::uniform_real_distribution<float>(0.05f, 1.0f)(rng);
    for (EnsembleWeighting w : {EnsembleWeighting::kContrastive, EnsembleWeighting::kMean})
      check_ensemble(backend, local, bank, k, n, d, tau, w);
  }
}

std::string ensemble_param_name(
    const ::testing::TestParamInfo<std::tuple<Backend, int64_t>>& param) {
  return std::string(backend_name(std::get<0>(param.param))) + "_k" +
         std::to_string(std::get<1>(param.param));
}

INSTANTIATE_TEST_SUITE_P(Backends, EnsembleSizeTest,
                         ::testing::Combine(::testing::Values(Backend::kRef, Backend::kCpu,
                                                              Backend::kSimt, Backend::kCuda),
                                            ::testing::Values(int64_t{1}, int64_t{2}, int64_t{5})),
                         ensemble_param_name);

class EnsembleTest : public ::testing::TestWithParam<Backend> {};

TEST_P(EnsembleTest, WeightsOfASampleSumToOne) {
  const Backend backend = GetParam();
  MMFL_SKIP_IF_UNAVAILABLE(backend);
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  const int64_t k = 5, n = 70, d = 16;
  const std::vector<float> local = unit_rows(rng, k * n, d), bank = unit_rows(rng, n, d);
  for (EnsembleWeighting w : {EnsembleWeighting::kContrastive, EnsembleWeighting::kMean}) {
    const EnsembleOutputs got = run_ensemble_backend(backend, local, bank, k, n, d, 0.1f, w);
    std::vector<float> sums(n, 0.0f);
    for (int64_t c = 0; c < k; ++c) {
      for (int64_t j = 0; j < n; ++j) {
        EXPECT_GE(got.weights[c * n + j], 0.0f);
        sums[j] += got.weights[c * n + j];
      }
    }
    // k fp32 weights, each within a few ulp: 1e-6 is k * 2 ulp(1) with room.
    EXPECT_TRUE(all_close(sums, std::vector<double>(n, 1.0), {1e-6, 0}, "sum of weights"));
  }
}

// One client: weight exactly 1 (softmax of one score, or 1/1) and the output is its features, bit
// for bit.
TEST_P(EnsembleTest, SingleClientIsItsOwnEnsemble) {
  const Backend backend = GetParam();
  MMFL_SKIP_IF_UNAVAILABLE(backend);
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  const int64_t n = 67, d = 12;
  const std::vector<float> local = random_normal(rng, n * d, 1.0f), bank = unit_rows(rng, n, d);
  for (EnsembleWeighting w : {EnsembleWeighting::kContrastive, EnsembleWeighting::kMean}) {
    const EnsembleOutputs got = run_ensemble_backend(backend, local, bank, 1, n, d, 0.1f, w);
    EXPECT_TRUE(all_equal(got.weights, std::vector<float>(n, 1.0f), "weights"));
    EXPECT_TRUE(all_equal(got.out, local, "out"));
  }
}

// A client whose features equal the bank (the global model's features of the other modality)
// matches every sample best of all clients: it gets the highest weight for every sample.
TEST_P(EnsembleTest, ClientMatchingTheBankWeighsMost) {
  const Backend backend = GetParam();
  MMFL_SKIP_IF_UNAVAILABLE(backend);
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  const int64_t k = 4, n = 63, d = 16, matching = 2;
  const std::vector<float> bank = unit_rows(rng, n, d);
  std::vector<float> local = unit_rows(rng, k * n, d);
  std::copy(bank.begin(), bank.end(), local.begin() + matching * n * d);
  const EnsembleOutputs got =
      run_ensemble_backend(backend, local, bank, k, n, d, 0.05f, EnsembleWeighting::kContrastive);
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t c = 0; c < k; ++c) {
      if (c == matching) continue;
      EXPECT_GT(got.weights[matching * n + j], got.weights[c * n + j])
          << "sample " << j << ", client " << c;
    }
  }
}

// A public set long enough that the device scoring splits the bank (2 splits of 3 and 2 tiles)
// with few enough stacked rows (3 tiles) to want it.
TEST_P(EnsembleTest, SplitBank) {
  const Backend backend = GetParam();
  MMFL_SKIP_IF_UNAVAILABLE(backend);
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  const int64_t k = 1, n = 260, d = 3;
  const std::vector<float> local = unit_rows(rng, k * n, d), bank = unit_rows(rng, n, d);
  check_ensemble(backend, local, bank, k, n, d, 0.1f, EnsembleWeighting::kContrastive);
}

// tau = 0.01: scores are differences of logits up to 100.
TEST_P(EnsembleTest, StableForLargeLogits) {
  const Backend backend = GetParam();
  MMFL_SKIP_IF_UNAVAILABLE(backend);
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  const int64_t k = 3, n = 65, d = 32;
  const std::vector<float> local = unit_rows(rng, k * n, d), bank = unit_rows(rng, n, d);
  check_ensemble(backend, local, bank, k, n, d, 0.01f, EnsembleWeighting::kContrastive);
}

INSTANTIATE_TEST_SUITE_P(Backends, EnsembleTest,
                         ::testing::Values(Backend::kRef, Backend::kCpu, Backend::kSimt,
                                           Backend::kCuda),
                         backend_param_name);

}  // namespace
}  // namespace mmfl::test
