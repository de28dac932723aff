// MoE kernels beyond the op registry, on every backend: the routers against the reference exactly
// (and expert choice giving every expert exactly its capacity of top tokens, token choice every
// token its top k), the permutation token -> slots exactly, the combine inverting the gather
// exactly on small integers, a hand-computed FFN case; the fast CPU path's same bits for 1, 2 and
// 3 threads; argument errors.
#include "mmfl/kernels/moe.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "backend.h"
#include "mmfl/error.h"
#include "ops.h"
#include "test_util.h"

namespace mmfl::test {
namespace {

namespace k = mmfl::kernels;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Logits with many exact ties (a few distinct values, -0 and +0 among them) or all distinct.
std::vector<float> router_logits(std::mt19937_64& rng, int64_t n, bool ties) {
  std::vector<float> v = random_normal(rng, static_cast<size_t>(n), 1.0f);
  if (ties)
    for (float& x : v) {
      x = std::round(x * 2.0f) / 2.0f;
      if (x == 0.0f && (rng() & 1)) x = -0.0f;
    }
  return v;
}

class MoeTest : public ::testing::TestWithParam<Backend> {};

TEST_P(MoeTest, ExpertChoiceTakesExactlyCapacityTopTokensAsTheReference) {
  const Backend be = GetParam();
  MMFL_SKIP_IF_UNAVAILABLE(be);
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  for (auto [tokens, experts, capacity, ties] :
       std::vector<std::tuple<int64_t, int64_t, int64_t, bool>>{
           {1, 1, 1, false}, {37, 4, 9, false}, {300, 3, 100, true}, {13, 5, 13, true}}) {
    SCOPED_TRACE("T " + std::to_string(tokens) + " E " + std::to_string(experts) + " capacity " +
                 std::to_string(capacity));
    const auto logits = router_logits(rng, tokens * experts, ties);
    const int64_t slots = experts * capacity;
    std::vector<int64_t> want_order(slots), want_gate(slots);
    k::ref::moe_route_expert_choice(logits.data(), tokens, experts, capacity, want_order.data(),
                                    want_gate.data());
    DeviceBuffer<float> d_logits(be, logits);
    DeviceBuffer<int64_t> order(be, slots), gate_index(be, slots);
    order.fill(-1);
    gate_index.fill(-1);
    ops::moe_route_expert_choice(be, d_logits.get(), tokens, experts, capacity, order.get(),
                                 gate_index.get());
    const auto got = order.download();
    EXPECT_EQ(got, want_order);
    EXPECT_EQ(gate_index.download(), want_gate);
    // The property itself: expert e's slots are distinct tokens in increasing order, each beating
    // every token left out (a larger logit, or an equal one at a lower index).
    for (int64_t e = 0; e < experts; ++e) {
      std::set<int64_t> chosen(got.begin() + e * capacity, got.begin() + (e + 1) * capacity);
      ASSERT_EQ(static_cast<int64_t>(chosen.size()), capacity) << "expert " << e;
      EXPECT_TRUE(std::is_sorted(got.begin() + e * capacity, got.begin() + (e + 1) * capacity));
      for (int64_t c : chosen)
        for (int64_t t = 0; t < tokens; ++t)
          if (!chosen.count(t)) {
            const float lc = logits[c * experts + e], lt = logits[t * experts + e];
            EXPECT_TRUE(lc > lt || (lc == lt && c < t))
                << "expert " << e << " token " << c << " over " << t;
          }
    }
  }
}

TEST_P(MoeTest, TokenChoiceGivesEveryTokenItsTopKAsTheReference) {
  const Backend be = GetParam();
  MMFL_SKIP_IF_UNAVAILABLE(be);
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  for (auto [tokens, experts, kk, ties] : std::vector<std::tuple<int64_t, int64_t, int64_t, bool>>{
           {1, 1, 1, false}, {29, 8, 2, false}, {300, 6, 3, true}, {7, 4, 4, true}}) {
    SCOPED_TRACE("T " + std::to_string(tokens) + " E " + std::to_string(experts) + " k " +
                 std::to_string(kk));
    const auto logits = router_logits(rng, tokens * experts, ties);
    const int64_t slots = tokens * kk;
    std::vector<int64_t> want_order(slots), want_gate(slots), want_off(experts + 1);
    k::ref::moe_route_token_choice(logits.data(), tokens, experts, kk, want_order.data(),
                                   want_gate.data(), want_off.data());
    DeviceBuffer<float> d_logits(be, logits);
    DeviceBuffer<int64_t> order(be, slots), gate_index(be, slots), offsets(be, experts + 1);
    for (auto* b : {&order, &gate_index, &offsets})
      b->fill(-1);
    ops::moe_route_token_choice(be, d_logits.get(), tokens, experts, kk, order.get(),
                                gate_index.get(), offsets.get());
    const auto got = order.download(), off = offsets.download(), gi = gate_index.download();
    EXPECT_EQ(got, want_order);
    EXPECT_EQ(gi, want_gate);
    EXPECT_EQ(off, want_off);
    // Every token exactly k distinct experts, each ranking above every expert it did not pick.
    std::vector<std::set<int64_t>> picked(tokens);
    for (int64_t s = 0; s < slots; ++s)
      picked[got[s]].insert(gi[s] % experts);
    for (int64_t t = 0; t < tokens; ++t) {
      ASSERT_EQ(static_cast<int64_t>(picked[t].size()), kk) << "token " << t;
      for (int64_t c : picked[t])
        for (int64_t e = 0; e < experts; ++e)
          if (!picked[t].count(e)) {
            const float lc = logits[t * experts + c], le = logits[t * experts + e];
            EXPECT_TRUE(lc > le || (lc == le && c < e)) << "token " << t;
          }
    }
  }
}

// A random routing: each expert n distinct tokens in increasing order.
std::vector<int64_t> random_order(std::mt19937_64& rng, const std::vector<int64_t>& counts,
                                  int64_t tokens) {
  std::vector<int64_t> order, perm(static_cast<size_t>(tokens));
  for (int64_t n : counts) {
    for (int64_t t = 0; t < tokens; ++t)
      perm[t] = t;
    std::shuffle(perm.begin(), perm.end(), rng);
    std::sort(perm.begin(), perm.begin() + n);
    order.insert(order.end(), perm.begin(), perm.begin() + n);
  }
  return order;
}

// The permutation matches the reference exactly, and combining the gathered rows (weight 1) gives
// each token its row times its number of slots, exactly (small integers).
TEST_P(MoeTest, CombineInvertsTheGatherExactly) {
  const Backend be = GetParam();
  MMFL_SKIP_IF_UNAVAILABLE(be);
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  for (auto [counts, tokens] : std::vector<std::tuple<std::vector<int64_t>, int64_t>>{
           {{1}, 1}, {{3, 0, 5}, 9}, {{70, 0, 64, 1}, 300}, {{0, 0}, 4}, {{257, 257}, 257}}) {
    const int64_t experts = static_cast<int64_t>(counts.size()), d = 5, f = 3;
    const auto order = random_order(rng, counts, tokens);
    const int64_t slots = static_cast<int64_t>(order.size());
    SCOPED_TRACE("T " + std::to_string(tokens) + " S " + std::to_string(slots));
    std::vector<int64_t> offsets{0};
    for (int64_t n : counts)
      offsets.push_back(offsets.back() + n);
    std::vector<int64_t> want_off(tokens + 1), want_slots(slots);
    k::ref::moe_token_slots(order.data(), slots, tokens, want_off.data(), want_slots.data());
    DeviceBuffer<int64_t> d_order(be, order), d_off(be, offsets), tok_off(be, tokens + 1),
        tok_slots(be, std::max<int64_t>(slots, 1));
    tok_off.fill(-1);
    tok_slots.fill(-1);
    ops::moe_token_slots(be, d_order.get(), slots, tokens, tok_off.get(), tok_slots.get());
    EXPECT_EQ(tok_off.download(), want_off);
    auto got_slots = tok_slots.download();
    got_slots.resize(slots);
    EXPECT_EQ(got_slots, want_slots);

    std::vector<float> x(tokens * d);
    for (float& v : x)
      v = static_cast<float>(static_cast<int>(rng() % 201) - 100);
    const k::MoeShape shape{tokens, experts, slots, d, f};
    DeviceBuffer<float> d_x(be, x), w1(be, std::vector<float>(experts * f * d, 0.0f)),
        b1(be, std::vector<float>(experts * f, 0.0f)), w2(be, std::vector<float>(experts * d * f)),
        b2(be, std::vector<float>(experts * d, 0.0f)), x_slots(be, slots * d), pre(be, slots * f),
        act(be, slots * f), out(be, slots * d), y(be, tokens * d);
    y.fill(kNaN);
    ops::moe_experts_forward(be, d_x.get(), d_order.get(), d_off.get(), w1.get(), b1.get(),
                             w2.get(), b2.get(), shape, x_slots.get(), pre.get(), act.get(),
                             out.get());
    ops::moe_combine(be, x_slots.get(), nullptr, tok_off.get(), tok_slots.get(), shape, y.get());
    std::vector<float> want(tokens * d);
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t j = 0; j < d; ++j)
        want[t * d + j] = x[t * d + j] * float(want_off[t + 1] - want_off[t]);
    EXPECT_TRUE(all_equal(y.download(), want, "combine(gather(x))"));
  }
}

// One expert of d = 2, f = 1 over tokens 0 and 2 of three (token 1 unrouted), and an empty one.
//   w1 = [1 -1], b1 = 0.5, w2 = [2 0]^T, b2 = [1 -1], gates 0.5 and 2.
//   x0 = [1 1]: pre 0.5;  x2 = [3 1]: pre 2.5.  act = gelu(pre).  out = [2 act + 1, -1].
//   y0 = 0.5 out0, y1 = 0, y2 = 2 out2.
TEST_P(MoeTest, HandComputedCase) {
  const Backend be = GetParam();
  MMFL_SKIP_IF_UNAVAILABLE(be);
  const k::MoeShape shape{3, 2, 2, 2, 1};
  auto gelu = [](double v) { return 0.5 * v * (1 + std::erf(v / std::sqrt(2.0))); };
  DeviceBuffer<float> x(be, {1, 1, 5, 5, 3, 1}), gate(be, {0.5f, 2.0f}), w1(be, {1, -1, 7, 7}),
      b1(be, {0.5f, 9}), w2(be, {2, 0, 7, 7}), b2(be, {1, -1, 9, 9});
  DeviceBuffer<int64_t> order(be, {0, 2}), offsets(be, {0, 2, 2}), tok_off(be, 4), tok_slots(be, 2);
  DeviceBuffer<float> x_slots(be, 4), pre(be, 2), act(be, 2), out(be, 4), y(be, 6);
  for (auto* b : {&x_slots, &pre, &act, &out, &y})
    b->fill(kNaN);
  ops::moe_token_slots(be, order.get(), 2, 3, tok_off.get(), tok_slots.get());
  ops::moe_experts_forward(be, x.get(), order.get(), offsets.get(), w1.get(), b1.get(), w2.get(),
                           b2.get(), shape, x_slots.get(), pre.get(), act.get(), out.get());
  ops::moe_combine(be, out.get(), gate.get(), tok_off.get(), tok_slots.get(), shape, y.get());
  EXPECT_TRUE(all_equal(x_slots.download(), {1, 1, 3, 1}, "x_slots"));
  EXPECT_TRUE(all_equal(pre.download(), {0.5f, 2.5f}, "pre"));
  const double a0 = gelu(0.5), a2 = gelu(2.5);
  const Tolerance tol{1e-6, 1e-6};
  EXPECT_TRUE(all_close(act.download(), {a0, a2}, tol, "act"));
  EXPECT_TRUE(all_close(out.download(), {2 * a0 + 1, -1, 2 * a2 + 1, -1}, tol, "out"));
  EXPECT_TRUE(
      all_close(y.download(), {0.5 * (2 * a0 + 1), -0.5, 0, 0, 2 * (2 * a2 + 1), -2}, tol, "y"));
}

INSTANTIATE_TEST_SUITE_P(Backends, MoeTest,
                         ::testing::Values(Backend::kRef, Backend::kCpu, Backend::kSimt,
                                           Backend::kCuda),
                         backend_param_name);

// The host backends check the offsets and orders themselves (the device API leaves that to its
// caller).
TEST(RefMoe, RejectsBadArgumentsNamingWhatToFix) {
  std::vector<float> buf(64, 0.0f);
  float* p = buf.data();
  std::vector<int64_t> ibuf(64, 0);
  int64_t* q = ibuf.data();
  const k::MoeShape s{4, 2, 3, 2, 2};
  for (bool fast : {false, true}) {
    auto fwd = [&](std::vector<int64_t> off, std::vector<int64_t> order) {
      if (fast) {
        k::cpu::moe_experts_forward(p, order.data(), off.data(), p, p, p, p, s, p, p, p, p);
      } else {
        k::ref::moe_experts_forward(p, order.data(), off.data(), p, p, p, p, s, p, p, p, p);
      }
    };
    expect_error_mentioning([&] { fwd({1, 2, 3}, {0, 1, 2}); }, {"offsets[0] must be 0"});
    expect_error_mentioning(
        [&] {
          fwd({0, 2, 1}, {0, 1, 2});
        },
        {"offsets must not decrease", "expert 1"});
    expect_error_mentioning([&] { fwd({0, 1, 2}, {0, 1, 2}); }, {"must equal slots = 3"});
    expect_error_mentioning(
        [&] {
          fwd({0, 1, 3}, {0, 4, 2});
        },
        {"order[1] = 4", "not a token in 0 .. 3"});
    auto route = [&](int64_t cap) {
      if (fast) {
        k::cpu::moe_route_expert_choice(p, 4, 2, cap, q, q);
      } else {
        k::ref::moe_route_expert_choice(p, 4, 2, cap, q, q);
      }
    };
    expect_error_mentioning([&] { route(5); }, {"capacity must be in 1 .. tokens = 4", "got 5"});
    expect_error_mentioning([&] { route(0); }, {"capacity must be in 1"});
  }
}

// Experts over several of the CPU path's 256-row tiles and 256-column blocks, an empty expert:
// the same bits for 1, 2 and 3 threads.
TEST(CpuMoe, ThreadCountInvariant) {
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  const std::vector<int64_t> counts{300, 0, 257};
  const int64_t tokens = 400, d = 261, f = 300, experts = 3;
  const auto order = random_order(rng, counts, tokens);
  const std::vector<int64_t> offsets{0, 300, 300, 557};
  const int64_t slots = 557;
  const k::MoeShape s{tokens, experts, slots, d, f};
  const auto x = random_normal(rng, tokens * d, 1.0f);
  const auto gate = random_normal(rng, slots, 1.0f);
  const auto w1 = random_normal(rng, experts * f * d, 0.06f);
  const auto b1 = random_normal(rng, experts * f, 0.1f);
  const auto w2 = random_normal(rng, experts * d * f, 0.06f);
  const auto b2 = random_normal(rng, experts * d, 0.1f);
  const auto gy = random_normal(rng, tokens * d, 1.0f);
  const auto logits = router_logits(rng, tokens * experts, true);
  using Out = std::vector<std::vector<float>>;
  auto run_cpu = [&](int threads) {
    const k::cpu::Context ctx = thread_context(threads);
    std::vector<int64_t> tok_off(tokens + 1), tok_slots(slots), ec(experts * 100),
        ec_gate(experts * 100), tc(tokens * 2), tc_gate(tokens * 2), tc_off(experts + 1);
    std::vector<float> xs(slots * d), pre(slots * f), act(slots * f), out(slots * d), y(tokens * d),
        gg(slots), go(slots * d), gp(slots * f), gxs(slots * d), gx(tokens * d),
        gw1(experts * f * d), gb1(experts * f), gw2(experts * d * f), gb2(experts * d);
    k::cpu::moe_route_expert_choice(logits.data(), tokens, experts, 100, ec.data(), ec_gate.data(),
                                    ctx);
    k::cpu::moe_route_token_choice(logits.data(), tokens, experts, 2, tc.data(), tc_gate.data(),
                                   tc_off.data(), ctx);
    k::cpu::moe_token_slots(order.data(), slots, tokens, tok_off.data(), tok_slots.data(), ctx);
    k::cpu::moe_experts_forward(x.data(), order.data(), offsets.data(), w1.data(), b1.data(),
                                w2.data(), b2.data(), s, xs.data(), pre.data(), act.data(),
                                out.data(), ctx);
    k::cpu::moe_combine(out.data(), gate.data(), tok_off.data(), tok_slots.data(), s, y.data(),
                        ctx);
    k::cpu::moe_experts_backward(order.data(), offsets.data(), gate.data(), w1.data(), w2.data(), s,
                                 xs.data(), pre.data(), act.data(), out.data(), gy.data(),
                                 gg.data(), go.data(), gp.data(), gxs.data(), gw1.data(),
                                 gb1.data(), gw2.data(), gb2.data(), ctx);
    k::cpu::moe_combine(gxs.data(), nullptr, tok_off.data(), tok_slots.data(), s, gx.data(), ctx);
    std::vector<float> routes;
    for (auto* v : {&ec, &ec_gate, &tc, &tc_gate, &tc_off})
      for (int64_t i : *v)
        routes.push_back(static_cast<float>(i));
    return Out{routes, pre, act, out, y, gg, gp, gxs, gx, gw1, gb1, gw2, gb2};
  };
  const Out one = run_cpu(1);
  for (int threads : {2, 3}) {
    const Out t = run_cpu(threads);
    for (size_t i = 0; i < one.size(); ++i)
      EXPECT_TRUE(t[i].size() == one[i].size() &&
                  std::memcmp(t[i].data(), one[i].data(), t[i].size() * sizeof(float)) == 0)
          << "output " << i << " differs between 1 and " << threads << " threads";
  }
}

}  // namespace
}  // namespace mmfl::test
