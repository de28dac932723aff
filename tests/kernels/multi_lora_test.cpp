// Multi-adapter LoRA beyond the op registry: a hand-computed case on every backend (small
// integers and a power-of-two scale, so every sum is exact and compared bit for bit), the fast CPU
// path's same bits for 1, 2 and 3 threads, and the argument checks' messages.
#include "mmfl/kernels/multi_lora.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
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

namespace k = mmfl::kernels;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

struct LoraOut {
  std::vector<float> h, y, g, gx, ga, gb;
};

LoraOut run(Backend be, const std::vector<float>& x, const std::vector<float>& a,
            const std::vector<float>& b, const std::vector<int64_t>& offsets,
            const k::MultiLoraShape& s, float scale, const std::vector<float>& y0,
            const std::vector<float>& gy, const std::vector<float>& gx0) {
  DeviceBuffer<float> d_x(be, x), d_a(be, a), d_b(be, b), y(be, y0), d_gy(be, gy), gx(be, gx0);
  DeviceBuffer<int64_t> d_off(be, offsets);
  DeviceBuffer<float> h(be, s.rows * s.rank), g(be, s.rows * s.rank),
      ga(be, s.clients * s.rank * s.in), gb(be, s.clients * s.out * s.rank);
  for (auto* buf : {&h, &g, &ga, &gb})
    buf->fill(kNaN);
  ops::multi_lora_forward(be, d_x.get(), d_a.get(), d_b.get(), d_off.get(), s, scale, h.get(),
                          y.get());
  ops::multi_lora_backward(be, d_x.get(), d_a.get(), d_b.get(), d_off.get(), s, scale, h.get(),
                           d_gy.get(), g.get(), gx.get(), ga.get(), gb.get());
  return {h.download(), y.download(), g.download(), gx.download(), ga.download(), gb.download()};
}

class MultiLoraTest : public ::testing::TestWithParam<Backend> {};

// Three clients of in = out = 2, rank 1, scale 1/2; client 1 owns no rows.
//   client 0: A = [1 2], B = [1 3]^T, x = [1 1], gy = [1 1]
//   client 2: A = [0 -1], B = [2 0]^T, x = [2 3], gy = [1 2]
// h = A x: 3, -3.  y = s B h: [1.5 4.5], [-3 0].  g = s B^T gy: 2, 1.
// gx = A^T g: [2 4], [0 -1].  ga = g x^T: [2 2], [0 0], [2 3].
// gb = s gy h^T: [1.5 1.5]^T, [0 0]^T, [-1.5 -3]^T.
TEST_P(MultiLoraTest, HandComputedCase) {
  const Backend be = GetParam();
  MMFL_SKIP_IF_UNAVAILABLE(be);
  const k::MultiLoraShape s{3, 2, 2, 2, 1};
  const std::vector<int64_t> offsets{0, 1, 1, 2};
  const std::vector<float> x{1, 1, 2, 3};
  const std::vector<float> a{1, 2, 5, 5, 0, -1};
  const std::vector<float> b{1, 3, 1, 1, 2, 0};
  const std::vector<float> gy{1, 1, 1, 2};
  const LoraOut o = run(be, x, a, b, offsets, s, 0.5f, std::vector<float>(4, 0.0f), gy,
                        std::vector<float>(4, 0.0f));
  EXPECT_TRUE(all_equal(o.h, {3, -3}, "h"));
  EXPECT_TRUE(all_equal(o.y, {1.5f, 4.5f, -3, 0}, "y"));
  EXPECT_TRUE(all_equal(o.g, {2, 1}, "g"));
  EXPECT_TRUE(all_equal(o.gx, {2, 4, 0, -1}, "gx"));
  EXPECT_TRUE(all_equal(o.ga, {2, 2, 0, 0, 2, 3}, "ga"));
  EXPECT_TRUE(all_equal(o.gb, {1.5f, 1.5f, 0, 0, -1.5f, -3}, "gb"));
}

// y and gx are accumulated into (they hold the base product), h, g, ga, gb overwritten.
TEST_P(MultiLoraTest, AddsToBaseAndOverwritesTheRest) {
  const Backend be = GetParam();
  MMFL_SKIP_IF_UNAVAILABLE(be);
  const k::MultiLoraShape s{1, 1, 1, 1, 1};
  const LoraOut o = run(be, {2}, {3}, {4}, {0, 1}, s, 1.0f, {100}, {1}, {-50});
  EXPECT_TRUE(all_equal(o.h, {6}, "h"));
  EXPECT_TRUE(all_equal(o.y, {124}, "y"));    // 100 + 4 * 6
  EXPECT_TRUE(all_equal(o.g, {4}, "g"));      // B^T gy
  EXPECT_TRUE(all_equal(o.gx, {-38}, "gx"));  // -50 + 3 * 4
  EXPECT_TRUE(all_equal(o.ga, {8}, "ga"));    // g x
  EXPECT_TRUE(all_equal(o.gb, {6}, "gb"));    // gy h
}

TEST_P(MultiLoraTest, RejectsBadSizes) {
  const Backend be = GetParam();
  MMFL_SKIP_IF_UNAVAILABLE(be);
  DeviceBuffer<float> buf(be, 64);
  DeviceBuffer<int64_t> off(be, std::vector<int64_t>{0, 2});
  float* p = buf.get();
  expect_error_mentioning(
      [&] {
        ops::multi_lora_forward(be, p, p, p, off.get(), {1, 2, 2, 2, 0}, 1.0f, p, p);
      },
      {"rank must be >= 1", "0"});
  expect_error_mentioning(
      [&] {
        ops::multi_lora_forward(be, p, p, p, off.get(), {0, 2, 2, 2, 1}, 1.0f, p, p);
      },
      {"clients must be >= 1"});
  expect_error_mentioning(
      [&] {
        ops::multi_lora_backward(be, p, p, p, off.get(), {1, 2, 2, 2, 1}, 1.0f, p, p, p, p, nullptr,
                                 p);
      },
      {"ga and gb must not be null"});
}

INSTANTIATE_TEST_SUITE_P(Backends, MultiLoraTest,
                         ::testing::Values(Backend::kRef, Backend::kCpu, Backend::kSimt,
                                           Backend::kCuda),
                         backend_param_name);

// The host backends check the offsets themselves (the device API leaves that to its caller).
TEST(RefMultiLora, RejectsBadOffsetsNamingTheClient) {
  std::vector<float> buf(64, 0.0f);
  float* p = buf.data();
  const k::MultiLoraShape s{3, 4, 2, 2, 1};
  for (bool fast : {false, true}) {
    auto fwd = [&](std::vector<int64_t> off) {
      if (fast) {
        k::cpu::multi_lora_forward(p, p, p, off.data(), s, 1.0f, p, p);
      } else {
        k::ref::multi_lora_forward(p, p, p, off.data(), s, 1.0f, p, p);
      }
    };
    expect_error_mentioning([&] { fwd({1, 2, 3, 4}); }, {"offsets[0] must be 0", "got 1"});
    expect_error_mentioning(
        [&] {
          fwd({0, 3, 2, 4});
        },
        {"offsets must not decrease", "offsets[2] = 2", "client 1"});
    expect_error_mentioning([&] { fwd({0, 1, 2, 3}); }, {"must equal rows = 4", "got 3"});
  }
}

// Clients of several 64-row blocks, an empty one, gradient widths across 256-column blocks: the
// same bits for 1, 2 and 3 threads, and within fp32 error of the reference.
TEST(CpuMultiLora, ThreadCountInvariantAndMatchesReference) {
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  const std::vector<int64_t> offsets{0, 65, 65, 195, 202};
  const k::MultiLoraShape s{4, 202, 300, 97, 9};
  const auto x = random_normal(rng, s.rows * s.in, 1.0f);
  const auto a = random_normal(rng, s.clients * s.rank * s.in, 0.05f);
  const auto b = random_normal(rng, s.clients * s.out * s.rank, 1.0f);
  const auto y0 = random_normal(rng, s.rows * s.out, 1.0f);
  const auto gy = random_normal(rng, s.rows * s.out, 1.0f);
  const auto gx0 = random_normal(rng, s.rows * s.in, 1.0f);
  const float scale = 2.0f;
  auto run_cpu = [&](int threads) {
    const k::cpu::Context ctx = thread_context(threads);
    LoraOut o{std::vector<float>(s.rows * s.rank, kNaN),
              y0,
              std::vector<float>(s.rows * s.rank),
              gx0,
              std::vector<float>(s.clients * s.rank * s.in, kNaN),
              std::vector<float>(s.clients * s.out * s.rank, kNaN)};
    k::cpu::multi_lora_forward(x.data(), a.data(), b.data(), offsets.data(), s, scale, o.h.data(),
                               o.y.data(), ctx);
    k::cpu::multi_lora_backward(x.data(), a.data(), b.data(), offsets.data(), s, scale, o.h.data(),
                                gy.data(), o.g.data(), o.gx.data(), o.ga.data(), o.gb.data(), ctx);
    return o;
  };
  const LoraOut one = run_cpu(1);
  for (int threads : {2, 3}) {
    const LoraOut t = run_cpu(threads);
    for (auto [got, want, name] : {std::tuple{&t.h, &one.h, "h"},
                                   {&t.y, &one.y, "y"},
                                   {&t.g, &one.g, "g"},
                                   {&t.gx, &one.gx, "gx"},
                                   {&t.ga, &one.ga, "ga"},
                                   {&t.gb, &one.gb, "gb"}})
      EXPECT_TRUE(got->size() == want->size() &&
                  std::memcmp(got->data(), want->data(), got->size() * sizeof(float)) == 0)
          << name << " differs between 1 and " << threads << " threads";
  }
  const LoraOut ref = run(Backend::kRef, x, a, b, offsets, s, scale, y0, gy, gx0);
  for (auto [got, want, name] : {std::tuple{&one.h, &ref.h, "h"},
                                 {&one.y, &ref.y, "y"},
                                 {&one.g, &ref.g, "g"},
                                 {&one.gx, &ref.gx, "gx"},
                                 {&one.ga, &ref.ga, "ga"},
                                 {&one.gb, &ref.gb, "gb"}}) {
    double scale_of = 1;
    for (float v : *want)
      scale_of = std::max(scale_of, double(std::fabs(v)));
    EXPECT_TRUE(all_close(*got, std::vector<double>(want->begin(), want->end()),
                          Tolerance{1e-5 * scale_of, 1e-5}, name));
  }
}

}  // namespace
}  // namespace mmfl::test
