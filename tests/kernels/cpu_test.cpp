// The fast CPU path (kernels/cpu) beyond the backend-parameterized suites: its GEMM against a plain
// matrix product (exactly, on small integers), every op against the reference on shapes of several
// 128-wide tiles (primes, non-multiples, 1), and the same bits for 1, 2 and 3 threads.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "backend.h"
#include "mmfl/kernels/aggregate.h"
#include "mmfl/kernels/bank_ce.h"
#include "mmfl/kernels/cpu.h"
#include "mmfl/kernels/infonce.h"
#include "test_util.h"

namespace mmfl::test {
namespace {

namespace k = mmfl::kernels;
using k::cpu::Transpose;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

std::vector<float> unit_rows(std::mt19937_64& rng, int64_t rows, int64_t d) {
  std::vector<float> v = random_normal(rng, rows * d, 1.0f);
  for (int64_t i = 0; i < rows; ++i) {
    double norm = 0;
    for (int64_t x = 0; x < d; ++x)
      norm += double(v[i * d + x]) * v[i * d + x];
    norm = std::sqrt(std::max(norm, 1e-30));
    for (int64_t x = 0; x < d; ++x)
      v[i * d + x] = float(v[i * d + x] / norm);
  }
  return v;
}

std::vector<double> widen(const std::vector<float>& v) {
  return {v.begin(), v.end()};
}

double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v)
    m = std::max(m, double(std::fabs(x)));
  return m;
}

// Per element atol + rtol |ref|, atol relative to the largest reference value or to `terms`, the
// size of the terms a cancelling sum adds up (a gradient that is 0 in exact arithmetic): fp32 tiles
// against the double-precision reference.
::testing::AssertionResult close_to_ref(const std::vector<float>& got,
                                        const std::vector<float>& ref, double rel,
                                        const std::string& what, double terms = 0) {
  return all_close(got, widen(ref), Tolerance{rel * std::max({max_abs(ref), terms, 1e-6}), rel},
                   what);
}

::testing::AssertionResult same_bits(const std::vector<float>& a, const std::vector<float>& b,
                                     const std::string& what) {
  if (a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0)
    return ::testing::AssertionSuccess();
  return all_equal(a, b, what) ? ::testing::AssertionFailure() << what << ": bits differ (+-0?)"
                               : all_equal(a, b, what);
}

// ---- sgemm
// ---------------------------------------------------------------------------------------

TEST(CpuSgemm, MatchesPlainProductExactly) {
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  const std::string isa = k::cpu::isa_name();
  EXPECT_TRUE(isa == "avx512" || isa == "avx2" || isa == "baseline") << isa;
  // Small integers: every product and partial sum is exact in fp32, so any order is exact.
  for (int64_t m : {1, 7, 33, 130})
    for (int64_t n : {1, 17, 64, 131})
      for (int64_t kk : {1, 5, 256, 300})
        for (Transpose ta : {Transpose::kNo, Transpose::kYes})
          for (Transpose tb : {Transpose::kNo, Transpose::kYes})
            for (float beta : {0.0f, 1.0f}) {
              SCOPED_TRACE(::testing::Message()
                           << "m=" << m << " n=" << n << " k=" << kk << " ta=" << int(ta)
                           << " tb=" << int(tb) << " beta=" << beta);
              const std::vector<float> a = random_small_ints(rng, m * kk, -4, 4);
              const std::vector<float> b = random_small_ints(rng, kk * n, -4, 4);
              const std::vector<float> c0 = random_small_ints(rng, m * (n + 3), -9, 9);
              const int64_t lda = ta == Transpose::kNo ? kk : m,
                            ldb = tb == Transpose::kNo ? n : kk;
              std::vector<float> want(m * (n + 3));
              for (int64_t i = 0; i < m; ++i)
                for (int64_t j = 0; j < n + 3; ++j) {
                  if (j >= n) {
                    want[i * (n + 3) + j] = c0[i * (n + 3) + j];  // outside C: untouched
                    continue;
                  }
                  double s = beta * c0[i * (n + 3) + j];
                  for (int64_t p = 0; p < kk; ++p) {
                    const float av = ta == Transpose::kNo ? a[i * lda + p] : a[p * lda + i];
                    const float bv = tb == Transpose::kNo ? b[p * ldb + j] : b[j * ldb + p];
                    s += double(av) * bv;
                  }
                  want[i * (n + 3) + j] = float(s);
                }
              std::vector<float> c = c0;
              if (beta == 0.0f)
                for (int64_t i = 0; i < m; ++i)
                  std::fill(c.begin() + i * (n + 3), c.begin() + i * (n + 3) + n, kNaN);
              k::cpu::sgemm(ta, tb, m, n, kk, a.data(), lda, b.data(), ldb, beta, c.data(), n + 3);
              ASSERT_TRUE(all_equal(c, want, "C"));
            }
}

TEST(CpuSgemm, RejectsBadBeta) {
  float a = 1, b = 1, c = 0;
  expect_error_mentioning(
      [&] { k::cpu::sgemm(Transpose::kNo, Transpose::kNo, 1, 1, 1, &a, 1, &b, 1, 0.5f, &c, 1); },
      {"beta must be 0 or 1", "0.5"});
}

// ---- Each op: against the reference on multi-tile shapes, and thread-count invariance ----------

struct InfonceOut {
  std::vector<float> loss, lse_img, lse_txt, grad_img, grad_txt, grad_tau;
};

InfonceOut run_infonce(bool fast, const k::cpu::Context& ctx, const std::vector<float>& img,
                       const std::vector<float>& txt, int64_t n, int64_t d, float tau, float g) {
  InfonceOut o{std::vector<float>(1, kNaN),     std::vector<float>(n, kNaN),
               std::vector<float>(n, kNaN),     std::vector<float>(n * d, kNaN),
               std::vector<float>(n * d, kNaN), std::vector<float>(1, kNaN)};
  if (fast) {
    k::cpu::infonce_forward(img.data(), txt.data(), n, d, &tau, o.loss.data(), o.lse_img.data(),
                            o.lse_txt.data(), ctx);
    k::cpu::infonce_backward(img.data(), txt.data(), n, d, &tau, o.lse_img.data(), o.lse_txt.data(),
                             &g, o.grad_img.data(), o.grad_txt.data(), o.grad_tau.data(), ctx);
  } else {
    k::ref::infonce_forward(img.data(), txt.data(), n, d, &tau, o.loss.data(), o.lse_img.data(),
                            o.lse_txt.data());
    k::ref::infonce_backward(img.data(), txt.data(), n, d, &tau, o.lse_img.data(), o.lse_txt.data(),
                             &g, o.grad_img.data(), o.grad_txt.data(), o.grad_tau.data());
  }
  return o;
}

TEST(CpuFastInfonce, MatchesReferenceAndThreadCountInvariant) {
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  for (auto [n, d] :
       std::vector<std::pair<int64_t, int64_t>>{{1, 5}, {127, 16}, {257, 37}, {300, 64}}) {
    SCOPED_TRACE(::testing::Message() << "n=" << n << " d=" << d);
    const auto img = unit_rows(rng, n, d), txt = unit_rows(rng, n, d);
    const float tau = std::uniform_real_distribution<float>(0.05f, 1.0f)(rng);
    const InfonceOut ref = run_infonce(false, {}, img, txt, n, d, tau, 1.5f);
    const InfonceOut one = run_infonce(true, thread_context(1), img, txt, n, d, tau, 1.5f);
    // fp32 logits (|S| <= 1 / tau <= 20) and fp32 sums over n terms.
    // The loss is lse minus a logit, both up to 1/tau: with one column it is 0 in exact
    // arithmetic, and the fp32 path's rounding is relative to 1/tau, not to 0 (a seed gave
    // -4.8e-7).
    EXPECT_TRUE(close_to_ref(one.loss, ref.loss, 2e-5, "loss", 1.0 / tau));
    EXPECT_TRUE(close_to_ref(one.lse_img, ref.lse_img, 2e-5, "lse_img"));
    EXPECT_TRUE(close_to_ref(one.lse_txt, ref.lse_txt, 2e-5, "lse_txt"));
    // dL/dS terms are about g / n, times features <= 1, over tau.
    const double terms = 1.5 / (double(n) * tau);
    EXPECT_TRUE(close_to_ref(one.grad_img, ref.grad_img, 1e-4, "grad_img", terms));
    EXPECT_TRUE(close_to_ref(one.grad_txt, ref.grad_txt, 1e-4, "grad_txt", terms));
    EXPECT_TRUE(close_to_ref(one.grad_tau, ref.grad_tau, 1e-4, "grad_tau", terms / tau));
    for (int threads : {2, 3}) {
      SCOPED_TRACE(::testing::Message() << threads << " threads");
      const InfonceOut t = run_infonce(true, thread_context(threads), img, txt, n, d, tau, 1.5f);
      EXPECT_TRUE(same_bits(t.loss, one.loss, "loss"));
      EXPECT_TRUE(same_bits(t.lse_img, one.lse_img, "lse_img"));
      EXPECT_TRUE(same_bits(t.lse_txt, one.lse_txt, "lse_txt"));
      EXPECT_TRUE(same_bits(t.grad_img, one.grad_img, "grad_img"));
      EXPECT_TRUE(same_bits(t.grad_txt, one.grad_txt, "grad_txt"));
      EXPECT_TRUE(same_bits(t.grad_tau, one.grad_tau, "grad_tau"));
    }
  }
}

struct BankOut {
  std::vector<float> lse, loss, grad_q, grad_bank, grad_q_alone;
};

BankOut run_bank(bool fast, const k::cpu::Context& ctx, const std::vector<float>& q,
                 const std::vector<float>& bank, const std::vector<int64_t>& target,
                 const std::vector<float>& g, int64_t b, int64_t n, int64_t d, float tau) {
  BankOut o{std::vector<float>(b, kNaN), std::vector<float>(b, kNaN),
            std::vector<float>(b * d, kNaN), std::vector<float>(n * d, kNaN),
            std::vector<float>(b * d, kNaN)};
  if (fast) {
    k::cpu::bank_ce_forward(q.data(), bank.data(), target.data(), b, n, d, &tau, o.lse.data(),
                            o.loss.data(), ctx);
    k::cpu::bank_ce_backward(q.data(), bank.data(), target.data(), b, n, d, &tau, o.lse.data(),
                             g.data(), o.grad_q.data(), o.grad_bank.data(), ctx);
    k::cpu::bank_ce_backward(q.data(), bank.data(), target.data(), b, n, d, &tau, o.lse.data(),
                             g.data(), o.grad_q_alone.data(), nullptr, ctx);
  } else {
    k::ref::bank_ce_forward(q.data(), bank.data(), target.data(), b, n, d, &tau, o.lse.data(),
                            o.loss.data());
    k::ref::bank_ce_backward(q.data(), bank.data(), target.data(), b, n, d, &tau, o.lse.data(),
                             g.data(), o.grad_q.data(), o.grad_bank.data());
    o.grad_q_alone = o.grad_q;
  }
  return o;
}

TEST(CpuFastBankCe, MatchesReferenceAndThreadCountInvariant) {
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  // Banks of 1, 2 and 17 tiles (17 tiles: 16 chunks of uneven length).
  for (auto [b, n, d] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {1, 1, 3}, {131, 257, 20}, {3, 2053, 19}, {257, 2179, 8}}) {
    SCOPED_TRACE(::testing::Message() << "b=" << b << " n=" << n << " d=" << d);
    const auto q = unit_rows(rng, b, d), bank = unit_rows(rng, n, d);
    std::vector<int64_t> target(b);
    for (int64_t& t : target)
      t = std::uniform_int_distribution<int64_t>(0, n - 1)(rng);
    const auto g = random_normal(rng, b, 1.0f);
    const float tau = std::uniform_real_distribution<float>(0.05f, 1.0f)(rng);
    const BankOut ref = run_bank(false, {}, q, bank, target, g, b, n, d, tau);
    const BankOut one = run_bank(true, thread_context(1), q, bank, target, g, b, n, d, tau);
    EXPECT_TRUE(close_to_ref(one.lse, ref.lse, 2e-5, "lse"));
    // The loss is lse minus a logit, both up to 1/tau: with one column it is 0 in exact
    // arithmetic, and the fp32 path's rounding is relative to 1/tau, not to 0 (a seed gave
    // -4.8e-7).
    EXPECT_TRUE(close_to_ref(one.loss, ref.loss, 2e-5, "loss", 1.0 / tau));
    const double terms = max_abs(g) / tau;  // |g_i| (P + onehot) |feature| / tau
    EXPECT_TRUE(close_to_ref(one.grad_q, ref.grad_q, 1e-4, "grad_q", terms));
    EXPECT_TRUE(close_to_ref(one.grad_bank, ref.grad_bank, 1e-4, "grad_bank", terms));
    // With or without grad_bank, grad_q is computed by the same tiles in the same order.
    EXPECT_TRUE(same_bits(one.grad_q_alone, one.grad_q, "grad_q without grad_bank"));
    for (int threads : {2, 3}) {
      SCOPED_TRACE(::testing::Message() << threads << " threads");
      const BankOut t = run_bank(true, thread_context(threads), q, bank, target, g, b, n, d, tau);
      EXPECT_TRUE(same_bits(t.lse, one.lse, "lse"));
      EXPECT_TRUE(same_bits(t.loss, one.loss, "loss"));
      EXPECT_TRUE(same_bits(t.grad_q, one.grad_q, "grad_q"));
      EXPECT_TRUE(same_bits(t.grad_bank, one.grad_bank, "grad_bank"));
      EXPECT_TRUE(same_bits(t.grad_q_alone, one.grad_q_alone, "grad_q without grad_bank"));
    }
  }
}

TEST(CpuFastEnsemble, MatchesReferenceAndThreadCountInvariant) {
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  for (auto [kk, n, d] :
       std::vector<std::tuple<int64_t, int64_t, int64_t>>{{1, 1, 4}, {3, 131, 17}, {10, 257, 32}}) {
    for (auto w : {k::EnsembleWeighting::kContrastive, k::EnsembleWeighting::kMean}) {
      SCOPED_TRACE(::testing::Message()
                   << "k=" << kk << " n=" << n << " d=" << d << " weighting=" << int(w));
      const auto local = unit_rows(rng, kk * n, d), bank = unit_rows(rng, n, d);
      const float tau = std::uniform_real_distribution<float>(0.05f, 1.0f)(rng);
      std::vector<float> ref_w(kk * n), ref_out(n * d);
      k::ref::creamfl_ensemble(local.data(), bank.data(), kk, n, d, &tau, w, ref_w.data(),
                               ref_out.data());
      std::vector<std::vector<float>> ws, outs;
      for (int threads : {1, 2, 3}) {
        std::vector<float> wt(kk * n, kNaN), ot(n * d, kNaN);
        k::cpu::creamfl_ensemble(local.data(), bank.data(), kk, n, d, &tau, w, wt.data(), ot.data(),
                                 thread_context(threads));
        ws.push_back(wt);
        outs.push_back(ot);
      }
      // Weights are softmaxes of score differences: fp32 logits up to 1 / tau = 20.
      EXPECT_TRUE(all_close(ws[0], widen(ref_w), Tolerance{2e-5, 1e-4}, "weights"));
      EXPECT_TRUE(close_to_ref(outs[0], ref_out, 1e-4, "out"));
      for (int t : {1, 2}) {
        EXPECT_TRUE(same_bits(ws[t], ws[0], "weights, " + std::to_string(t + 1) + " threads"));
        EXPECT_TRUE(same_bits(outs[t], outs[0], "out, " + std::to_string(t + 1) + " threads"));
      }
    }
  }
}

TEST(CpuFastAggregate, ThreadCountInvariantAndMatchesReference) {
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  const int64_t clients = 7, n = 3 * 4096 + 5;  // three full chunks and a ragged one
  const auto updates = random_normal(rng, clients * n, 1.0f);
  const auto weights = random_normal(rng, clients, 0.3f);
  for (auto acc : {k::Accumulator::kFloat32, k::Accumulator::kFloat64}) {
    SCOPED_TRACE(acc == k::Accumulator::kFloat32 ? "fp32" : "fp64");
    std::vector<float> ref(n);
    k::ref::weighted_sum(updates.data(), weights.data(), clients, n, ref.data(), acc);
    std::vector<std::vector<float>> outs;
    for (int threads : {1, 2, 3}) {
      std::vector<float> out(n, kNaN);
      k::cpu::weighted_sum(updates.data(), weights.data(), clients, n, out.data(), acc,
                           thread_context(threads));
      outs.push_back(out);
    }
    EXPECT_TRUE(close_to_ref(outs[0], ref, 1e-6, "out"));
    EXPECT_TRUE(same_bits(outs[1], outs[0], "2 threads"));
    EXPECT_TRUE(same_bits(outs[2], outs[0], "3 threads"));
    // A NaN in client 2's last chunk only: the chunked finite check must still see it.
    auto poisoned = updates;
    poisoned[2 * n + n - 1] = kNaN;
    std::vector<uint8_t> bad(clients, 0xab);
    std::vector<float> out(n, kNaN);
    EXPECT_EQ(k::cpu::weighted_sum_finite(poisoned.data(), weights.data(), clients, n, out.data(),
                                          bad.data(), acc, thread_context(3)),
              1);
    EXPECT_EQ(bad, (std::vector<uint8_t>{0, 0, 1, 0, 0, 0, 0}));
  }
}

TEST(CpuFastAggregate, RowsInPlaceGiveTheStackedBits) {
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  const int64_t clients = 6, n = 2 * 65536 + 77;  // two full chunks and a ragged one
  const auto updates = random_normal(rng, clients * n, 1.0f);
  const auto weights = random_normal(rng, clients, 0.3f);
  // The same rows copied apart, in reverse memory order, each at an odd float offset.
  std::vector<std::vector<float>> apart(clients);
  std::vector<const float*> rows(clients);
  for (int64_t k = clients - 1; k >= 0; --k) {
    apart[k].assign(size_t(n + 3), 0.0f);
    std::copy(updates.begin() + k * n, updates.begin() + (k + 1) * n, apart[k].begin() + 3);
    rows[k] = apart[k].data() + 3;
  }
  for (auto acc : {k::Accumulator::kFloat32, k::Accumulator::kFloat64}) {
    SCOPED_TRACE(acc == k::Accumulator::kFloat32 ? "fp32" : "fp64");
    std::vector<float> stacked(n, kNaN), in_place(n, kNaN);
    k::cpu::weighted_sum(updates.data(), weights.data(), clients, n, stacked.data(), acc,
                         thread_context(2));
    k::cpu::weighted_sum_rows(rows.data(), weights.data(), clients, n, in_place.data(), acc,
                              thread_context(3));
    EXPECT_TRUE(same_bits(in_place, stacked, "rows in place"));
    if (acc != k::Accumulator::kFloat64) continue;
    // The unrounded fp64 sums round to the same fp32 bits, and equal an fp64 loop in the same
    // order (four clients per pass are rounded as four single additions).
    std::vector<double> sums(n, -1.0);
    k::cpu::weighted_sum_rows_f64(rows.data(), weights.data(), clients, n, sums.data(),
                                  thread_context(1));
    std::vector<float> rounded(n);
    int64_t loop_mismatch = 0;
    for (int64_t j = 0; j < n; ++j) {
      rounded[j] = float(sums[j]);
      double loop = 0;
      for (int64_t c = 0; c < clients; ++c)
        loop += double(weights[c]) * double(rows[c][j]);
      loop_mismatch += std::abs(loop - sums[j]) > 1e-12 * (1 + std::abs(loop));
    }
    EXPECT_TRUE(same_bits(rounded, stacked, "fp64 sums rounded"));
    EXPECT_EQ(loop_mismatch, 0);
  }
}

TEST(CpuFastAggregate, AllFiniteSeesEveryPosition) {
  std::vector<float> x(67, 1.5f);
  EXPECT_TRUE(k::cpu::all_finite(x.data(), int64_t(x.size())));
  EXPECT_TRUE(k::cpu::all_finite(nullptr, 0));
  for (float bad :
       {kNaN, std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()}) {
    for (size_t at : {size_t(0), size_t(15), size_t(16), size_t(63), size_t(66)}) {
      auto y = x;
      y[at] = bad;
      EXPECT_FALSE(k::cpu::all_finite(y.data(), int64_t(y.size()))) << "at " << at;
    }
  }
  x[5] = std::numeric_limits<float>::max();
  x[6] = std::numeric_limits<float>::denorm_min();
  EXPECT_TRUE(k::cpu::all_finite(x.data(), int64_t(x.size())));
}

}  // namespace
}  // namespace mmfl::test
