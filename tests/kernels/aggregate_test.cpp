// Weighted aggregation: golden cases for the CPU reference, then one body per backend (CPU
// reference, emulated CUDA, real CUDA) on small-integer inputs, compared exactly: every partial
// sum is an integer below 2^24, so any summation order gives the same bits.
#include "mmfl/kernels/aggregate.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
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

using kernels::Accumulator;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

const char* accumulator_name(Accumulator acc) {
  return acc == Accumulator::kFloat32 ? "fp32" : "fp64";
}

void run_weighted_sum(Backend backend, const float* updates, const float* weights, int64_t clients,
                      int64_t n, float* out, Accumulator acc) {
  ops::weighted_sum(backend, updates, weights, clients, n, out, acc);
}

// Returns the CPU reference's count of skipped clients; the device versions return nothing (the
// count is sum(bad)), so -1.
int64_t run_weighted_sum_finite(Backend backend, const float* updates, const float* weights,
                                int64_t clients, int64_t n, float* out, uint8_t* bad,
                                Accumulator acc) {
  return ops::weighted_sum_finite(backend, updates, weights, clients, n, out, bad, acc);
}

// ---- CPU reference: golden cases ----------------------------------------------------------------

TEST(RefAggregate, WeightedSumGolden) {
  const std::vector<float> updates = {1, 2, 3,   // client 0
                                      4, 5, 6};  // client 1
  const std::vector<float> weights = {0.5f, 0.25f};
  for (Accumulator acc : {Accumulator::kFloat32, Accumulator::kFloat64}) {
    std::vector<float> out(3, kNaN);
    kernels::ref::weighted_sum(updates.data(), weights.data(), 2, 3, out.data(), acc);
    // 0.5*1 + 0.25*4, 0.5*2 + 0.25*5, 0.5*3 + 0.25*6
    EXPECT_EQ(out, (std::vector<float>{1.5f, 2.25f, 3.0f})) << accumulator_name(acc);
  }
}

TEST(RefAggregate, FiniteSkipsAndRescales) {
  const std::vector<float> updates = {1,    2,   // client 0
                                      kNaN, 5,   // client 1: skipped
                                      3,    4};  // client 2
  const std::vector<float> weights = {1, 2, 1};
  for (Accumulator acc : {Accumulator::kFloat32, Accumulator::kFloat64}) {
    std::vector<float> out(2, kNaN);
    std::vector<uint8_t> bad(3, 0xab);
    const int64_t skipped = kernels::ref::weighted_sum_finite(updates.data(), weights.data(), 3, 2,
                                                              out.data(), bad.data(), acc);
    EXPECT_EQ(skipped, 1);
    EXPECT_EQ(bad, (std::vector<uint8_t>{0, 1, 0}));
    // The remaining weights 1 + 1 are rescaled to the total 4: factor 2.
    // 2 * (1*1 + 1*3), 2 * (1*2 + 1*4)
    EXPECT_EQ(out, (std::vector<float>{8, 12})) << accumulator_name(acc);
  }
}

TEST(RefAggregate, FiniteAllSkippedGivesZero) {
  const std::vector<float> updates = {kInf, 1, -kInf, 2};
  const std::vector<float> weights = {0.5f, 0.5f};
  std::vector<float> out(2, kNaN);
  std::vector<uint8_t> bad(2, 0xab);
  EXPECT_EQ(kernels::ref::weighted_sum_finite(updates.data(), weights.data(), 2, 2, out.data(),
                                              bad.data(), Accumulator::kFloat64),
            2);
  EXPECT_EQ(bad, (std::vector<uint8_t>{1, 1}));
  EXPECT_EQ(out, (std::vector<float>{0, 0}));
}

TEST(RefAggregate, FiniteZeroRemainingWeightIsNotRescaled) {
  const std::vector<float> updates = {7, 8, kNaN, 1};
  const std::vector<float> weights = {0, 3};  // the only finite client has weight 0
  std::vector<float> out(2, kNaN);
  std::vector<uint8_t> bad(2, 0xab);
  EXPECT_EQ(kernels::ref::weighted_sum_finite(updates.data(), weights.data(), 2, 2, out.data(),
                                              bad.data(), Accumulator::kFloat32),
            1);
  EXPECT_EQ(out, (std::vector<float>{0, 0}));
}

// ---- Every backend
// --------------------------------------------------------------------------------

class AggregateTest : public ::testing::TestWithParam<std::tuple<Backend, Accumulator>> {
 protected:
  Backend backend() const { return std::get<0>(GetParam()); }
  Accumulator acc() const { return std::get<1>(GetParam()); }
};

struct SumCase {
  int64_t clients;
  int64_t n;
  int64_t offset;  // floats between the allocation and the data: misaligns the float4 path
};

// Sizes: 1, primes, non-multiples of 4 (the float4 width) and of the 4-row unroll, a misaligned
// start, and n = 0.
const SumCase kSumCases[] = {{1, 1, 0},     {1, 4, 0},    {3, 7, 0},   {2, 8, 1},    {5, 131, 0},
                             {17, 1028, 0}, {4, 4099, 0}, {6, 256, 3}, {9, 2048, 0}, {3, 0, 0}};

TEST_P(AggregateTest, WeightedSumIsExact) {
  MMFL_SKIP_IF_UNAVAILABLE(backend());
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  for (const SumCase& c : kSumCases) {
    SCOPED_TRACE(::testing::Message()
                 << "clients=" << c.clients << " n=" << c.n << " offset=" << c.offset);
    const std::vector<float> updates = random_small_ints(rng, c.clients * c.n, -8, 8);
    const std::vector<float> weights = random_small_ints(rng, c.clients, -4, 4);
    std::vector<float> expected(c.n);
    for (int64_t j = 0; j < c.n; ++j) {
      double s = 0;
      for (int64_t k = 0; k < c.clients; ++k)
        s += double(weights[k]) * updates[k * c.n + j];
      expected[j] = static_cast<float>(s);
    }
    std::vector<float> padded(c.offset, 0.0f);
    padded.insert(padded.end(), updates.begin(), updates.end());
    DeviceBuffer<float> d_updates(backend(), padded);
    DeviceBuffer<float> d_weights(backend(), weights);
    DeviceBuffer<float> d_out(backend(), c.offset + c.n);
    d_out.fill(kNaN);
    run_weighted_sum(backend(), d_updates.get() + c.offset, d_weights.get(), c.clients, c.n,
                     d_out.get() + c.offset, acc());
    const std::vector<float> out = d_out.download();
    for (int64_t j = 0; j < c.offset; ++j)
      EXPECT_TRUE(std::isnan(out[j])) << "wrote before out";
    EXPECT_TRUE(all_equal(std::vector<float>(out.begin() + c.offset, out.end()), expected, "out"));
  }
}

struct FiniteCase {
  int64_t clients;
  int64_t n;
  int64_t offset;
  int64_t num_bad;
  int scale;  // the rescaling factor the weights are built for (a power of 2: exact)
};

const FiniteCase kFiniteCases[] = {{1, 5, 0, 0, 1},    {1, 5, 0, 1, 1},    {4, 8, 0, 2, 2},
                                   {5, 131, 0, 1, 4},  {8, 4099, 0, 3, 2}, {6, 1028, 0, 6, 1},
                                   {7, 1024, 1, 2, 4}, {3, 0, 0, 0, 1},    {12, 9000, 0, 5, 2}};

TEST_P(AggregateTest, WeightedSumFiniteSkipsAndRescalesExactly) {
  MMFL_SKIP_IF_UNAVAILABLE(backend());
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  for (const FiniteCase& c : kFiniteCases) {
    SCOPED_TRACE(::testing::Message() << "clients=" << c.clients << " n=" << c.n
                                      << " bad=" << c.num_bad << " offset=" << c.offset);
    std::vector<float> updates = random_small_ints(rng, c.clients * c.n, -8, 8);
    // Choose the skipped clients and plant one to three non-finite values in each (first and
    // last positions included, since those are the edges of the vector and scalar paths).
    std::vector<int64_t> order(c.clients);
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    std::vector<uint8_t> expected_bad(c.clients, 0);
    const float poison[] = {kNaN, kInf, -kInf};
    for (int64_t b = 0; b < c.num_bad; ++b) {
      const int64_t k = order[b];
      expected_bad[k] = 1;
      std::uniform_int_distribution<int64_t> pos(0, c.n - 1);
      const int64_t spots[] = {pos(rng), b % 2 == 0 ? c.n - 1 : 0, pos(rng)};
      for (int s = 0; s <= b % 3; ++s)
        updates[k * c.n + spots[s]] = poison[(b + s) % 3];
    }
    // Remaining clients' weights are integers in [1, 4]; the skipped ones carry (scale - 1) times
    // their sum, split at random, so the rescaling factor is exactly `scale`.
    std::vector<float> weights(c.clients, 0.0f);
    int good_total = 0;
    for (int64_t k = 0; k < c.clients; ++k) {
      if (expected_bad[k] == 0) {
        weights[k] = static_cast<float>(std::uniform_int_distribution<int>(1, 4)(rng));
        good_total += static_cast<int>(weights[k]);
      }
    }
    int bad_left = (c.scale - 1) * good_total;
    for (int64_t b = 0; b < c.num_bad; ++b) {
      const int share =
          b + 1 == c.num_bad ? bad_left : std::uniform_int_distribution<int>(0, bad_left)(rng);
      weights[order[b]] = static_cast<float>(share);
      bad_left -= share;
    }
    std::vector<float> expected(c.n, 0.0f);
    for (int64_t j = 0; j < c.n; ++j) {
      double s = 0;
      for (int64_t k = 0; k < c.clients; ++k) {
        if (expected_bad[k] == 0) s += double(weights[k]) * updates[k * c.n + j];
      }
      expected[j] = static_cast<float>(s * c.scale);
    }

    std::vector<float> padded(c.offset, 0.0f);
    padded.insert(padded.end(), updates.begin(), updates.end());
    DeviceBuffer<float> d_updates(backend(), padded);
    DeviceBuffer<float> d_weights(backend(), weights);
    DeviceBuffer<float> d_out(backend(), c.offset + c.n);
    DeviceBuffer<uint8_t> d_bad(backend(), c.clients);
    d_out.fill(kNaN);
    d_bad.fill(0xab);
    const int64_t skipped =
        run_weighted_sum_finite(backend(), d_updates.get() + c.offset, d_weights.get(), c.clients,
                                c.n, d_out.get() + c.offset, d_bad.get(), acc());
    if (backend() == Backend::kRef || backend() == Backend::kCpu) {
      EXPECT_EQ(skipped, c.num_bad);
    }
    EXPECT_EQ(d_bad.download(), expected_bad);
    const std::vector<float> out = d_out.download();
    EXPECT_TRUE(all_equal(std::vector<float>(out.begin() + c.offset, out.end()), expected, "out"));
  }
}

TEST_P(AggregateTest, RejectsBadArguments) {
  MMFL_SKIP_IF_UNAVAILABLE(backend());
  DeviceBuffer<float> buf(backend(), 8);
  DeviceBuffer<uint8_t> bad(backend(), 2);
  float* p = buf.get();
  expect_error_mentioning([&] { run_weighted_sum(backend(), p, p, 0, 4, p, acc()); },
                          {"num_clients"});
  expect_error_mentioning([&] { run_weighted_sum(backend(), p, p, 2, -1, p, acc()); }, {"n "});
  expect_error_mentioning([&] { run_weighted_sum(backend(), p, nullptr, 2, 4, p, acc()); },
                          {"weights"});
  expect_error_mentioning([&] { run_weighted_sum(backend(), nullptr, p, 2, 4, p, acc()); },
                          {"updates"});
  expect_error_mentioning([&] { run_weighted_sum(backend(), p, p, 2, 4, nullptr, acc()); },
                          {"out"});
  expect_error_mentioning(
      [&] { run_weighted_sum(backend(), p, p, 2, 4, p, static_cast<Accumulator>(7)); }, {"acc"});
  expect_error_mentioning(
      [&] { run_weighted_sum_finite(backend(), p, p, 2, 4, p, nullptr, acc()); }, {"bad"});
}

std::string aggregate_param_name(
    const ::testing::TestParamInfo<std::tuple<Backend, Accumulator>>& info) {
  return std::string(backend_name(std::get<0>(info.param))) + "_" +
         accumulator_name(std::get<1>(info.param));
}

INSTANTIATE_TEST_SUITE_P(Backends, AggregateTest,
                         ::testing::Combine(::testing::Values(Backend::kRef, Backend::kCpu,
                                                              Backend::kSimt, Backend::kCuda),
                                            ::testing::Values(Accumulator::kFloat32,
                                                              Accumulator::kFloat64)),
                         aggregate_param_name);

}  // namespace
}  // namespace mmfl::test
