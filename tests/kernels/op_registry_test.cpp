// One registry of op cases, run over every backend (as ggml's test-backend-ops does): a case makes
// fresh random inputs, runs the op on a backend and names its outputs with their error bounds;
// the single test body below compares every backend with the reference. Adding an op adds cases
// here, not a test per backend. The per-op files hold what a registry cannot say: golden values,
// finite differences, properties, error messages, misaligned and split layouts.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "backend.h"
#include "mmfl/error.h"
#include "ops.h"
#include "sparse_inputs.h"
#include "test_util.h"

namespace mmfl::test {
namespace {

using kernels::Accumulator;
using kernels::EnsembleWeighting;
using kernels::Precision;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// One output of a run and its bound against the reference: |x - ref| <= atol + rtol |ref| with
// atol = scale_atol * max(max |ref|, floor) (floor: the size of the terms a cancelling sum adds).
struct Output {
  std::string name;
  std::vector<float> values;
  double rtol = 0, scale_atol = 0, floor = 0;
};

// A case with its inputs drawn: run(backend) gives the outputs, the same for every backend.
using CaseRun = std::function<std::vector<Output>(Backend)>;

struct OpCase {
  std::string name;
  std::function<CaseRun(std::mt19937_64&)> make;
};

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

// fp32 bounds shared by the GEMM-shaped ops: log-sum-exps and losses to 2e-5 of their scale,
// gradients to 1e-4 of the terms they add up (logits up to 1 / tau = 10).
// The tensor-core paths round the operands of both products (unit-norm rows, so a logit moves by
// up to ~2^-10 / tau for tf32 and ~2^-7 / tau for bf16 in the worst case, far less on average):
// every output to 1e-3 (tf32) or 1e-2 (bf16) of its scale, relative and absolute, with the
// logit scale 1 / tau as the floor of the log-sum-exps and losses. Measured on the emulator (four
// seeds): at most 35% of these bounds for the gradients, 13% for log-sum-exps and losses.
double tc_bound(Precision p, double fp32_bound) {
  switch (p) {
    case Precision::kFp32:
      return fp32_bound;
    case Precision::kTf32:
      return 1e-3;
    case Precision::kBf16:
      return 1e-2;
    default:
      MMFL_FAIL("unknown Precision ", static_cast<int>(p));
  }
}

std::string precision_suffix(Precision p) {
  return p == Precision::kFp32 ? "" : std::string("_") + kernels::precision_name(p);
}

OpCase infonce_case(int64_t n, int64_t d, Precision p = Precision::kFp32) {
  return {"infonce_n" + std::to_string(n) + "_d" + std::to_string(d) + precision_suffix(p),
          [=](std::mt19937_64& rng) {
            const auto img = unit_rows(rng, n, d), txt = unit_rows(rng, n, d);
            const float tau = std::uniform_real_distribution<float>(0.1f, 1.0f)(rng);
            const float g = 1.5f;
            return CaseRun([=](Backend be) {
              DeviceBuffer<float> d_img(be, img), d_txt(be, txt), d_tau(be, std::vector{tau}),
                  d_g(be, std::vector{g});
              DeviceBuffer<float> loss(be, 1), li(be, n), lt(be, n), gi(be, n * d), gt(be, n * d),
                  gtau(be, 1);
              for (auto* b : {&loss, &li, &lt, &gi, &gt, &gtau})
                b->fill(kNaN);
              ops::infonce_forward(be, d_img.get(), d_txt.get(), n, d, d_tau.get(), loss.get(),
                                   li.get(), lt.get(), p);
              ops::infonce_backward(be, d_img.get(), d_txt.get(), n, d, d_tau.get(), li.get(),
                                    lt.get(), d_g.get(), gi.get(), gt.get(), gtau.get(), p);
              const double terms = g / (double(n) * tau);
              const double f = tc_bound(p, 2e-5), b = tc_bound(p, 1e-4);
              const double logits = p == Precision::kFp32 ? 1 : 1 / tau;
              return std::vector<Output>{{"loss", loss.download(), f, f, logits},
                                         {"lse_img", li.download(), f, f, logits},
                                         {"lse_txt", lt.download(), f, f, logits},
                                         {"grad_img", gi.download(), b, b, terms},
                                         {"grad_txt", gt.download(), b, b, terms},
                                         {"grad_tau", gtau.download(), b, b, terms / tau}};
            });
          }};
}

OpCase bank_ce_case(int64_t b, int64_t n, int64_t d, Precision p = Precision::kFp32) {
  return {"bank_ce_b" + std::to_string(b) + "_n" + std::to_string(n) + "_d" + std::to_string(d) +
              precision_suffix(p),
          [=](std::mt19937_64& rng) {
            const auto q = unit_rows(rng, b, d), bank = unit_rows(rng, n, d);
            std::vector<int64_t> target(b);
            for (int64_t& t : target)
              t = std::uniform_int_distribution<int64_t>(0, n - 1)(rng);
            const auto g = random_normal(rng, b, 1.0f);
            const float tau = std::uniform_real_distribution<float>(0.1f, 1.0f)(rng);
            return CaseRun([=](Backend be) {
              DeviceBuffer<float> d_q(be, q), d_bank(be, bank), d_tau(be, std::vector{tau}),
                  d_g(be, g);
              DeviceBuffer<int64_t> d_t(be, target);
              DeviceBuffer<float> lse(be, b), loss(be, b), gq(be, b * d), gb(be, n * d);
              for (auto* x : {&lse, &loss, &gq, &gb})
                x->fill(kNaN);
              ops::bank_ce_forward(be, d_q.get(), d_bank.get(), d_t.get(), b, n, d, d_tau.get(),
                                   lse.get(), loss.get(), p);
              ops::bank_ce_backward(be, d_q.get(), d_bank.get(), d_t.get(), b, n, d, d_tau.get(),
                                    lse.get(), d_g.get(), gq.get(), gb.get(), p);
              double gmax = 0;
              for (float x : g)
                gmax = std::max(gmax, double(std::fabs(x)));
              const double terms = gmax / tau;
              const double f = tc_bound(p, 2e-5), bo = tc_bound(p, 1e-4);
              const double logits = p == Precision::kFp32 ? 1 : 1 / tau;
              return std::vector<Output>{{"lse", lse.download(), f, f, logits},
                                         {"loss", loss.download(), f, f, logits},
                                         {"grad_q", gq.download(), bo, bo, terms},
                                         {"grad_bank", gb.download(), bo, bo, terms}};
            });
          }};
}

OpCase ensemble_case(int64_t k, int64_t n, int64_t d, EnsembleWeighting w,
                     Precision p = Precision::kFp32) {
  return {"ensemble_" + std::string(w == EnsembleWeighting::kMean ? "mean" : "contrastive") + "_k" +
              std::to_string(k) + "_n" + std::to_string(n) + "_d" + std::to_string(d) +
              precision_suffix(p),
          [=](std::mt19937_64& rng) {
            const auto local = unit_rows(rng, k * n, d), bank = unit_rows(rng, n, d);
            const float tau = std::uniform_real_distribution<float>(0.1f, 1.0f)(rng);
            return CaseRun([=](Backend be) {
              DeviceBuffer<float> d_local(be, local), d_bank(be, bank), d_tau(be, std::vector{tau});
              DeviceBuffer<float> weights(be, k * n), out(be, n * d);
              weights.fill(kNaN);
              out.fill(kNaN);
              ops::creamfl_ensemble(be, d_local.get(), d_bank.get(), k, n, d, d_tau.get(), w,
                                    weights.get(), out.get(), p);
              // Weights are softmaxes of fp32 score differences (the scores are cross entropies
              // over the bank: with tensor cores they carry the logits' error, up to the logit
              // scale 1 / tau).
              const double wr = tc_bound(p, 1e-4), wa = tc_bound(p, 2e-5);
              const double logits = p == Precision::kFp32 ? 1 : 1 / tau;
              return std::vector<Output>{{"weights", weights.download(), wr, wa, logits},
                                         {"out", out.download(), wr, tc_bound(p, 1e-4), 1}};
            });
          }};
}

// Small integers and power-of-two weights: every sum exact, so the bound is 0 whatever the order.
OpCase aggregate_case(int64_t clients, int64_t n, Accumulator acc, bool with_nan) {
  return {std::string(with_nan ? "aggregate_finite_" : "aggregate_") +
              (acc == Accumulator::kFloat32 ? "f32" : "f64") + "_k" + std::to_string(clients) +
              "_n" + std::to_string(n),
          [=](std::mt19937_64& rng) {
            auto updates = random_small_ints(rng, clients * n, -8, 8);
            std::vector<float> weights(clients);
            for (float& x : weights)
              x = std::ldexp(float(std::uniform_int_distribution<int>(-4, 4)(rng)), -3);
            if (with_nan && n > 0) updates[(clients / 2) * n + (n - 1)] = kNaN;
            return CaseRun([=](Backend be) {
              DeviceBuffer<float> d_u(be, updates), d_w(be, weights), out(be, n);
              out.fill(kNaN);
              if (!with_nan) {
                ops::weighted_sum(be, d_u.get(), d_w.get(), clients, n, out.get(), acc);
                return std::vector<Output>{{"out", out.download(), 0, 0, 0}};
              }
              DeviceBuffer<uint8_t> bad(be, clients);
              bad.fill(0xab);
              ops::weighted_sum_finite(be, d_u.get(), d_w.get(), clients, n, out.get(), bad.get(),
                                       acc);
              std::vector<float> flags;
              for (uint8_t x : bad.download())
                flags.push_back(float(x));
              return std::vector<Output>{{"out", out.download(), 0, 0, 0}, {"bad", flags, 0, 0, 0}};
            });
          }};
}

// Multi-adapter LoRA: clients of the given row counts (zeros included), forward then backward.
// y and gx start from a random "base" (the kernels add to it). Every output is an fp32 sum of at
// most max(in, out, rows) terms against the double reference: 1e-5 relative plus 1e-5 of the
// output's largest value (cancellation). Measured (four seeds): at most 5% of the bound on the
// fast CPU path and the emulator.
OpCase multi_lora_case(std::vector<int64_t> client_rows, int64_t in, int64_t out, int64_t rank,
                       bool with_gx = true) {
  std::string name = "multi_lora_rows";
  for (int64_t n : client_rows)
    name += "_" + std::to_string(n);
  name += "_in" + std::to_string(in) + "_out" + std::to_string(out) + "_r" + std::to_string(rank) +
          (with_gx ? "" : "_nogx");
  return {name, [=](std::mt19937_64& rng) {
            const int64_t clients = static_cast<int64_t>(client_rows.size());
            std::vector<int64_t> offsets{0};
            for (int64_t n : client_rows)
              offsets.push_back(offsets.back() + n);
            const int64_t rows = offsets.back();
            const kernels::MultiLoraShape shape{clients, rows, in, out, rank};
            const auto x = random_normal(rng, rows * in, 1.0f);
            const auto a = random_normal(rng, clients * rank * in, 1.0f / std::sqrt(float(in)));
            const auto b = random_normal(rng, clients * out * rank, 1.0f);
            const auto y0 = random_normal(rng, rows * out, 1.0f);
            const auto gy = random_normal(rng, rows * out, 1.0f);
            const auto gx0 = random_normal(rng, rows * in, 1.0f);
            const float scale = std::uniform_real_distribution<float>(0.25f, 4.0f)(rng);
            return CaseRun([=](Backend be) {
              DeviceBuffer<float> d_x(be, x), d_a(be, a), d_b(be, b), y(be, y0), d_gy(be, gy),
                  gx(be, gx0);
              DeviceBuffer<int64_t> d_off(be, offsets);
              DeviceBuffer<float> h(be, rows * rank), g(be, rows * rank),
                  ga(be, clients * rank * in), gb(be, clients * out * rank);
              for (auto* buf : {&h, &g, &ga, &gb})
                buf->fill(kNaN);
              ops::multi_lora_forward(be, d_x.get(), d_a.get(), d_b.get(), d_off.get(), shape,
                                      scale, h.get(), y.get());
              ops::multi_lora_backward(be, d_x.get(), d_a.get(), d_b.get(), d_off.get(), shape,
                                       scale, h.get(), d_gy.get(), g.get(),
                                       with_gx ? gx.get() : nullptr, ga.get(), gb.get());
              const double t = 1e-5;
              return std::vector<Output>{
                  {"h", h.download(), t, t, 1},   {"y", y.download(), t, t, 1},
                  {"g", g.download(), t, t, 1},   {"gx", gx.download(), t, t, 1},
                  {"ga", ga.download(), t, t, 1}, {"gb", gb.download(), t, t, 1}};
            });
          }};
}

// MoE experts: expert slot counts (zeros included), forward (gather, both GEMMs, the gated
// combine) then backward (slot gradients, both GEMMs, weight and bias gradients, the combine of
// dx). Each backend's backward runs on its own forward's outputs. Bounds as multi_lora's: 1e-5
// relative plus 1e-5 of the output's largest value (fp32 sums of at most max(d, f, slots) terms;
// the CPU path's vectorized erf adds at most 2e-7 absolute to the GELU).
OpCase moe_case(std::vector<int64_t> counts, int64_t tokens, int64_t d, int64_t f) {
  std::string name = "moe_slots";
  for (int64_t n : counts)
    name += "_" + std::to_string(n);
  name += "_T" + std::to_string(tokens) + "_d" + std::to_string(d) + "_f" + std::to_string(f);
  return {
      name, [=](std::mt19937_64& rng) {
        const int64_t experts = static_cast<int64_t>(counts.size());
        std::vector<int64_t> offsets{0}, order;
        std::vector<int64_t> perm(static_cast<size_t>(tokens));
        for (int64_t n : counts) {
          offsets.push_back(offsets.back() + n);
          for (int64_t t = 0; t < tokens; ++t)
            perm[t] = t;
          std::shuffle(perm.begin(), perm.end(), rng);
          std::sort(perm.begin(), perm.begin() + n);
          order.insert(order.end(), perm.begin(), perm.begin() + n);
        }
        const int64_t slots = offsets.back();
        const kernels::MoeShape shape{tokens, experts, slots, d, f};
        const auto x = random_normal(rng, tokens * d, 1.0f);
        std::vector<float> gate(static_cast<size_t>(slots));
        for (float& g : gate)
          g = std::uniform_real_distribution<float>(0.0f, 1.0f)(rng);
        const auto w1 = random_normal(rng, experts * f * d, 1.0f / std::sqrt(float(d)));
        const auto b1 = random_normal(rng, experts * f, 0.1f);
        const auto w2 = random_normal(rng, experts * d * f, 1.0f / std::sqrt(float(f)));
        const auto b2 = random_normal(rng, experts * d, 0.1f);
        const auto gy = random_normal(rng, tokens * d, 1.0f);
        return CaseRun([=](Backend be) {
          DeviceBuffer<float> d_x(be, x), d_gate(be, gate), d_w1(be, w1), d_b1(be, b1),
              d_w2(be, w2), d_b2(be, b2), d_gy(be, gy);
          DeviceBuffer<int64_t> d_order(be, order), d_off(be, offsets), tok_off(be, tokens + 1),
              tok_slots(be, std::max<int64_t>(slots, 1));
          DeviceBuffer<float> x_slots(be, slots * d), pre(be, slots * f), act(be, slots * f),
              out(be, slots * d), y(be, tokens * d), g_gate(be, slots), g_out(be, slots * d),
              g_pre(be, slots * f), g_xs(be, slots * d), gx(be, tokens * d),
              gw1(be, experts * f * d), gb1(be, experts * f), gw2(be, experts * d * f),
              gb2(be, experts * d);
          for (auto* buf : {&x_slots, &pre, &act, &out, &y, &g_gate, &g_out, &g_pre, &g_xs, &gx,
                            &gw1, &gb1, &gw2, &gb2})
            buf->fill(kNaN);
          ops::moe_token_slots(be, d_order.get(), slots, tokens, tok_off.get(), tok_slots.get());
          ops::moe_experts_forward(be, d_x.get(), d_order.get(), d_off.get(), d_w1.get(),
                                   d_b1.get(), d_w2.get(), d_b2.get(), shape, x_slots.get(),
                                   pre.get(), act.get(), out.get());
          ops::moe_combine(be, out.get(), d_gate.get(), tok_off.get(), tok_slots.get(), shape,
                           y.get());
          ops::moe_experts_backward(be, d_order.get(), d_off.get(), d_gate.get(), d_w1.get(),
                                    d_w2.get(), shape, x_slots.get(), pre.get(), act.get(),
                                    out.get(), d_gy.get(), g_gate.get(), g_out.get(), g_pre.get(),
                                    g_xs.get(), gw1.get(), gb1.get(), gw2.get(), gb2.get());
          ops::moe_combine(be, g_xs.get(), nullptr, tok_off.get(), tok_slots.get(), shape,
                           gx.get());
          const double t = 1e-5;
          return std::vector<Output>{{"x_slots", x_slots.download(), 0, 0, 0},
                                     {"pre", pre.download(), t, t, 1},
                                     {"act", act.download(), t, t, 1},
                                     {"out", out.download(), t, t, 1},
                                     {"y", y.download(), t, t, 1},
                                     {"grad_gate", g_gate.download(), t, t, 1},
                                     {"grad_out", g_out.download(), t, t, 1},
                                     {"grad_pre", g_pre.download(), t, t, 1},
                                     {"grad_x_slots", g_xs.download(), t, t, 1},
                                     {"gx", gx.download(), t, t, 1},
                                     {"gw1", gw1.download(), t, t, 1},
                                     {"gb1", gb1.download(), t, t, 1},
                                     {"gw2", gw2.download(), t, t, 1},
                                     {"gb2", gb2.download(), t, t, 1}};
        });
      }};
}

// Top-k: exact (selection and copies only), so every output is compared bit for bit. Indices are
// compared as floats: exact below 2^24.
OpCase topk_case(int64_t rows, int64_t n, int64_t k, bool all_ties = false) {
  return {std::string(all_ties ? "topk_allties" : "topk") + "_r" + std::to_string(rows) + "_n" +
              std::to_string(n) + "_k" + std::to_string(k),
          [=](std::mt19937_64& rng) {
            const auto x = topk_input(rng, rows, n, all_ties);
            return CaseRun([=](Backend be) {
              DeviceBuffer<float> d_x(be, x), values(be, rows * k), residual(be, rows * n);
              DeviceBuffer<int32_t> indices(be, rows * k);
              values.fill(kNaN);
              residual.fill(kNaN);
              indices.fill(-7);
              ops::topk_by_magnitude(be, d_x.get(), rows, n, k, indices.get(), values.get(),
                                     residual.get());
              std::vector<float> idx;
              for (int32_t i : indices.download())
                idx.push_back(float(i));
              return std::vector<Output>{{"indices", idx, 0, 0, 0},
                                         {"values", values.download(), 0, 0, 0},
                                         {"residual", residual.download(), 0, 0, 0}};
            });
          }};
}

// Sparse aggregation on small integers and power-of-two weights: exact in either accumulator.
OpCase sparse_sum_case(int64_t rows, int64_t k, int64_t n, Accumulator acc) {
  return {std::string("sparse_sum_") + (acc == Accumulator::kFloat32 ? "f32" : "f64") + "_r" +
              std::to_string(rows) + "_k" + std::to_string(k) + "_n" + std::to_string(n),
          [=](std::mt19937_64& rng) {
            const Packets p = random_packets(rng, rows, k, n);
            return CaseRun([=](Backend be) {
              DeviceBuffer<int32_t> d_i(be, p.indices);
              DeviceBuffer<float> d_v(be, p.values), d_w(be, p.weights), out(be, n);
              out.fill(kNaN);
              ops::sparse_weighted_sum(be, d_i.get(), d_v.get(), d_w.get(), rows, k, n, out.get(),
                                       acc);
              return std::vector<Output>{{"out", out.download(), 0, 0, 0}};
            });
          }};
}

// Sizes: 1, primes, non-multiples of every backend's tiles (the CUDA code's 64, the CPU path's
// 128 and 256), banks split into chunks and across blocks.
const std::vector<OpCase>& registry() {
  static const std::vector<OpCase> cases = [] {
    std::vector<OpCase> c;
    for (auto [n, d] :
         std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {7, 3}, {131, 67}, {257, 32}})
      c.push_back(infonce_case(n, d));
    for (auto [b, n, d] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
             {1, 1, 1}, {65, 131, 32}, {3, 2053, 19}, {257, 300, 8}})
      c.push_back(bank_ce_case(b, n, d));
    for (auto w : {EnsembleWeighting::kContrastive, EnsembleWeighting::kMean})
      for (auto [k, n, d] :
           std::vector<std::tuple<int64_t, int64_t, int64_t>>{{1, 1, 1}, {3, 131, 17}})
        c.push_back(ensemble_case(k, n, d, w));
    for (auto acc : {Accumulator::kFloat32, Accumulator::kFloat64})
      for (bool nan : {false, true})
        for (auto [k, n] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {7, 70001}})
          c.push_back(aggregate_case(k, n, acc, nan));
    // Multi-adapter LoRA: R = 1, clients without rows (first, middle, last, all), ranks that are
    // not multiples of 16 or 32, segments across the CPU path's 64-row and the GPU's 32-row tiles,
    // widths across the CPU's 256-column gradient blocks.
    c.push_back(multi_lora_case({1}, 1, 1, 1));
    c.push_back(multi_lora_case({3, 0, 5}, 7, 5, 3));
    c.push_back(multi_lora_case({0, 70, 1, 33}, 67, 45, 13));
    c.push_back(multi_lora_case({130, 0, 64}, 300, 257, 64));
    c.push_back(multi_lora_case({0, 0}, 5, 4, 2));
    c.push_back(multi_lora_case({9, 40, 0}, 33, 31, 17, /*with_gx=*/false));
    // MoE experts: one slot, experts without slots (first, middle, last, all), counts that are not
    // multiples of the GPU's 64-row tile or the CPU's 256-row tile, widths not multiples of 16,
    // tokens that no slot names and tokens with several slots.
    c.push_back(moe_case({1}, 1, 1, 1));
    c.push_back(moe_case({3, 0, 5}, 9, 7, 11));
    c.push_back(moe_case({0, 70, 1, 33}, 80, 19, 45));
    c.push_back(moe_case({260, 0, 20}, 300, 9, 70));
    c.push_back(moe_case({0, 0}, 5, 4, 2));
    // Top-k: k = 0, 1, n; n = 1, primes, not a multiple of 16 lanes or 256 threads; 1% and 10%.
    for (auto [r, n, kk] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{1, 1, 0},
                                                                              {1, 1, 1},
                                                                              {3, 1000, 0},
                                                                              {3, 1000, 1},
                                                                              {3, 1000, 1000},
                                                                              {5, 4099, 41},
                                                                              {2, 20011, 2000},
                                                                              {4, 257, 26}})
      c.push_back(topk_case(r, n, kk));
    c.push_back(topk_case(3, 1031, 100, true));
    for (auto acc : {Accumulator::kFloat32, Accumulator::kFloat64})
      for (auto [r, kk, n] :
           std::vector<std::tuple<int64_t, int64_t, int64_t>>{{1, 1, 1}, {3, 0, 10}, {7, 41, 4099}})
        c.push_back(sparse_sum_case(r, kk, n, acc));
    return c;
  }();
  return cases;
}

// The tensor-core paths (device backends only): each GEMM-shaped op per precision, sizes that are
// not multiples of 16 (the fragment) or of 64 (the tile), d below one fragment step and across
// several 32-deep slices, and a bank split over blocks.
const std::vector<OpCase>& tensor_core_registry() {
  static const std::vector<OpCase> cases = [] {
    std::vector<OpCase> c;
    for (Precision p : {Precision::kTf32, Precision::kBf16}) {
      // Sizes kept small: under ThreadSanitizer every wmma call is a 32-thread rendezvous.
      for (auto [n, d] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {37, 5}, {70, 67}})
        c.push_back(infonce_case(n, d, p));
      for (auto [b, n, d] :
           std::vector<std::tuple<int64_t, int64_t, int64_t>>{{65, 131, 32}, {3, 700, 19}})
        c.push_back(bank_ce_case(b, n, d, p));
      c.push_back(ensemble_case(3, 131, 17, EnsembleWeighting::kContrastive, p));
    }
    return c;
  }();
  return cases;
}

double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v)
    m = std::max(m, double(std::fabs(x)));
  return m;
}

// Runs case `c` on `backend` and on the reference and compares every output within its bound.
void expect_matches_reference(Backend backend, const OpCase& c) {
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  const CaseRun run = c.make(rng);
  const std::vector<Output> want = run(Backend::kRef), got = run(backend);
  ASSERT_EQ(got.size(), want.size());
  for (size_t o = 0; o < want.size(); ++o) {
    const Output& w = want[o];
    const double atol = w.scale_atol * std::max(max_abs(w.values), w.floor);
    std::vector<double> expected(w.values.begin(), w.values.end());
    EXPECT_TRUE(all_close(got[o].values, expected, Tolerance{atol, w.rtol}, w.name));
    // The largest error as a fraction of its bound, in the test's XML/JSON output: how much room
    // a bound leaves, measured (the GPU check's JSON carries it too).
    double worst = 0;
    for (size_t i = 0; i < expected.size() && i < got[o].values.size(); ++i) {
      const double allowed = atol + w.rtol * std::fabs(expected[i]);
      const double err = std::fabs(double(got[o].values[i]) - expected[i]);
      if (allowed > 0) worst = std::max(worst, err / allowed);
    }
    ::testing::Test::RecordProperty("error_over_bound_" + w.name, std::to_string(worst));
  }
}

class OpRegistry : public ::testing::TestWithParam<std::tuple<Backend, size_t>> {};

TEST_P(OpRegistry, MatchesReference) {
  const auto [backend, index] = GetParam();
  MMFL_SKIP_IF_UNAVAILABLE(backend);
  expect_matches_reference(backend, registry()[index]);
}

class TensorCoreRegistry : public ::testing::TestWithParam<std::tuple<Backend, size_t>> {};

TEST_P(TensorCoreRegistry, MatchesReference) {
  const auto [backend, index] = GetParam();
  MMFL_SKIP_IF_UNAVAILABLE(backend);
  expect_matches_reference(backend, tensor_core_registry()[index]);
}

std::string registry_name(const ::testing::TestParamInfo<std::tuple<Backend, size_t>>& info) {
  return std::string(backend_name(std::get<0>(info.param))) + "_" +
         registry()[std::get<1>(info.param)].name;
}

// The operand rounding of a tensor-core path, on the host: tf32 to nearest with ties away from
// zero (cvt.rna.tf32.f32, what __float_to_tf32 does), bf16 to nearest even (__float2bfloat16_rn).
float round_operand(float x, Precision p) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  if (p == Precision::kTf32) {
    bits = (bits + 0x1000u) & 0xffffe000u;
  } else if (p == Precision::kBf16) {
    bits = (bits + 0x7fffu + ((bits >> 16) & 1u)) & 0xffff0000u;
  }
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

std::vector<float> rounded(std::vector<float> v, Precision p) {
  for (float& x : v)
    x = round_operand(x, p);
  return v;
}

// The forward log-sum-exps of a tensor-core path equal the reference's on the operands rounded to
// the precision, to fp32 accuracy: the products of rounded operands are exact and accumulate in
// fp32. This pins the rounding itself (an fp32 path, or a wrong rounding, misses by the rounding
// error, ~1e-3 of the logits for tf32 and ~1e-2 for bf16, far outside the fp32 bound).
class TensorCoreRounding : public ::testing::TestWithParam<std::tuple<Backend, Precision>> {};

TEST_P(TensorCoreRounding, ForwardEqualsReferenceOnRoundedOperands) {
  const auto [backend, p] = GetParam();
  MMFL_SKIP_IF_UNAVAILABLE(backend);
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  const int64_t n = 77, b = 19, d = 45;
  const auto img = unit_rows(rng, n, d), txt = unit_rows(rng, n, d), q = unit_rows(rng, b, d);
  std::vector<int64_t> target(b);
  for (int64_t& t : target)
    t = std::uniform_int_distribution<int64_t>(0, n - 1)(rng);
  const float tau = 0.1f;  // logits up to 10: rounding errors of ~1e-3 relative show
  // InfoNCE: lse_img and lse_txt (the loss also holds fp32 diagonal products of the unrounded
  // features, so it is left to the registry's bounds).
  auto infonce_lse = [&](Backend be, const std::vector<float>& a, const std::vector<float>& t2,
                         Precision prec) {
    DeviceBuffer<float> d_a(be, a), d_t(be, t2), d_tau(be, std::vector{tau});
    DeviceBuffer<float> loss(be, 1), li(be, n), lt(be, n);
    for (auto* x : {&loss, &li, &lt})
      x->fill(kNaN);
    ops::infonce_forward(be, d_a.get(), d_t.get(), n, d, d_tau.get(), loss.get(), li.get(),
                         lt.get(), prec);
    std::vector<float> both = li.download(), second = lt.download();
    both.insert(both.end(), second.begin(), second.end());
    return both;
  };
  auto bank_lse = [&](Backend be, const std::vector<float>& qq, const std::vector<float>& bank,
                      Precision prec) {
    DeviceBuffer<float> d_q(be, qq), d_bank(be, bank), d_tau(be, std::vector{tau});
    DeviceBuffer<int64_t> d_t(be, target);
    DeviceBuffer<float> lse(be, b), loss(be, b);
    lse.fill(kNaN);
    loss.fill(kNaN);
    ops::bank_ce_forward(be, d_q.get(), d_bank.get(), d_t.get(), b, n, d, d_tau.get(), lse.get(),
                         loss.get(), prec);
    return lse.download();
  };
  const std::vector<std::pair<std::string, std::pair<std::vector<float>, std::vector<float>>>>
      runs = {
          {"infonce lse",
           {infonce_lse(backend, img, txt, p),
            infonce_lse(Backend::kRef, rounded(img, p), rounded(txt, p), Precision::kFp32)}},
          {"bank_ce lse",
           {bank_lse(backend, q, img, p),
            bank_lse(Backend::kRef, rounded(q, p), rounded(img, p), Precision::kFp32)}},
      };
  for (const auto& [what, r] : runs) {
    const std::vector<double> want(r.second.begin(), r.second.end());
    EXPECT_TRUE(all_close(r.first, want, Tolerance{2e-5 / tau, 2e-5}, what));
  }
}

std::string rounding_name(const ::testing::TestParamInfo<std::tuple<Backend, Precision>>& p) {
  return std::string(backend_name(std::get<0>(p.param))) + "_" +
         kernels::precision_name(std::get<1>(p.param));
}

INSTANTIATE_TEST_SUITE_P(Backends, TensorCoreRounding,
                         ::testing::Combine(::testing::Values(Backend::kSimt, Backend::kCuda),
                                            ::testing::Values(Precision::kTf32, Precision::kBf16)),
                         rounding_name);

std::string tensor_core_name(const ::testing::TestParamInfo<std::tuple<Backend, size_t>>& info) {
  return std::string(backend_name(std::get<0>(info.param))) + "_" +
         tensor_core_registry()[std::get<1>(info.param)].name;
}

INSTANTIATE_TEST_SUITE_P(Backends, TensorCoreRegistry,
                         ::testing::Combine(::testing::Values(Backend::kSimt, Backend::kCuda),
                                            ::testing::Range(size_t{0},
                                                             tensor_core_registry().size())),
                         tensor_core_name);

// The reference runs too (against itself: it checks that every case runs and fills its outputs).
INSTANTIATE_TEST_SUITE_P(Backends, OpRegistry,
                         ::testing::Combine(::testing::Values(Backend::kRef, Backend::kCpu,
                                                              Backend::kSimt, Backend::kCuda),
                                            ::testing::Range(size_t{0}, registry().size())),
                         registry_name);

}  // namespace
}  // namespace mmfl::test
