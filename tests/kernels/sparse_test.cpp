// Properties of the sparse ops on every backend, checked against oracles written here rather than
// against the reference: top-k sends exactly k entries, none smaller in magnitude than one left
// behind, ties to the lower index, in ascending order; sent + residual == x bit for bit; NaN and
// Inf rank as documented; the in-place residual; the aggregate equals the dense weighted sum of
// the scattered packets exactly; bad packets are refused (host backends); the CPU path gives the
// same bits on 1, 2 and 3 threads.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "backend.h"
#include "mmfl/kernels/sparse.h"
#include "ops.h"
#include "sparse_inputs.h"
#include "test_util.h"

namespace mmfl::test {
namespace {

using kernels::Accumulator;

uint32_t bits_of(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  return b;
}
uint32_t key_of(float v) {
  return bits_of(v) & 0x7fffffffu;
}

struct TopkResult {
  std::vector<int32_t> indices;
  std::vector<float> values, residual;
};

TopkResult run_topk(Backend be, const std::vector<float>& x, int64_t rows, int64_t n, int64_t k) {
  DeviceBuffer<float> d_x(be, x), values(be, rows * k), residual(be, rows * n);
  DeviceBuffer<int32_t> indices(be, rows * k);
  values.fill(std::numeric_limits<float>::quiet_NaN());
  residual.fill(std::numeric_limits<float>::quiet_NaN());
  indices.fill(-7);
  ops::topk_by_magnitude(be, d_x.get(), rows, n, k, indices.get(), values.get(), residual.get());
  return {indices.download(), values.download(), residual.download()};
}

// The top-k contract, from first principles, for every row.
void expect_topk_contract(const std::vector<float>& x, int64_t rows, int64_t n, int64_t k,
                          const TopkResult& r) {
  for (int64_t c = 0; c < rows; ++c) {
    SCOPED_TRACE("row " + std::to_string(c) + " n=" + std::to_string(n) +
                 " k=" + std::to_string(k));
    const float* row = x.data() + c * n;
    std::vector<char> sent(static_cast<size_t>(n), 0);
    for (int64_t i = 0; i < k; ++i) {
      const int32_t j = r.indices[c * k + i];
      ASSERT_TRUE(j >= 0 && j < n) << "index " << j << " at " << i;
      if (i > 0) {
        ASSERT_LT(r.indices[c * k + i - 1], j) << "indices not strictly ascending";
      }
      sent[j] = 1;
      EXPECT_EQ(bits_of(r.values[c * k + i]), bits_of(row[j])) << "value of index " << j;
    }
    // Every sent key beats every key left behind; an equal key left behind has a larger index.
    uint32_t min_sent = 0xffffffffu;
    int64_t last_sent_at_min = -1;
    for (int64_t j = 0; j < n; ++j)
      if (sent[j] && key_of(row[j]) <= min_sent) {
        if (key_of(row[j]) < min_sent) last_sent_at_min = -1;
        min_sent = key_of(row[j]);
        last_sent_at_min = j;
      }
    for (int64_t j = 0; j < n; ++j) {
      const float res = r.residual[c * n + j];
      if (sent[j]) {
        EXPECT_EQ(bits_of(res), 0u) << "residual of sent entry " << j << " is not +0";
        continue;
      }
      EXPECT_EQ(bits_of(res), bits_of(row[j])) << "residual differs from x at " << j;
      if (k == 0) continue;
      EXPECT_LE(key_of(row[j]), min_sent) << "entry " << j << " left behind beats a sent one";
      if (key_of(row[j]) == min_sent) {
        EXPECT_GT(j, last_sent_at_min) << "tie at " << j << " not broken to the lower index";
      }
    }
    // sent + residual == x exactly.
    for (int64_t j = 0; j < n; ++j) {
      float sum = r.residual[c * n + j];
      for (int64_t i = 0; i < k; ++i)
        if (r.indices[c * k + i] == j) sum += r.values[c * k + i];
      if (!std::isnan(row[j])) {
        EXPECT_EQ(sum, row[j]) << "sent + residual != x at " << j;
      }
    }
  }
}

class Sparse : public ::testing::TestWithParam<Backend> {};

TEST_P(Sparse, TopkSendsExactlyTheLargestMagnitudes) {
  const Backend be = GetParam();
  MMFL_SKIP_IF_UNAVAILABLE(be);
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  for (auto [rows, n, k] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{2, 1, 0},
                                                                              {2, 1, 1},
                                                                              {3, 300, 0},
                                                                              {3, 300, 1},
                                                                              {3, 300, 300},
                                                                              {3, 300, 299},
                                                                              {4, 1237, 12},
                                                                              {2, 5003, 500},
                                                                              {1, 17, 5}}) {
    const auto x = topk_input(rng, rows, n);
    expect_topk_contract(x, rows, n, k, run_topk(be, x, rows, n, k));
  }
  // Every entry tied: the lowest k indices.
  const auto ties = topk_input(rng, 2, 333, true);
  const TopkResult r = run_topk(be, ties, 2, 333, 40);
  expect_topk_contract(ties, 2, 333, 40, r);
  for (int64_t i = 0; i < 40; ++i)
    EXPECT_EQ(r.indices[i], i);
}

TEST_P(Sparse, NanRanksAboveInfinityAboveFinite) {
  const Backend be = GetParam();
  MMFL_SKIP_IF_UNAVAILABLE(be);
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  //                           0     1     2    3     4     5      6     7
  const std::vector<float> x = {1.0f, -inf, 3e38f, nan, -2.0f, inf, -0.0f, 5.0f};
  const TopkResult r3 = run_topk(be, x, 1, 8, 3);
  EXPECT_EQ(r3.indices, (std::vector<int32_t>{1, 3, 5}));  // NaN, then -inf and inf (ties: 1, 5)
  EXPECT_TRUE(std::isnan(r3.values[1]));
  EXPECT_EQ(r3.values[0], -inf);
  const TopkResult r2 = run_topk(be, x, 1, 8, 2);
  EXPECT_EQ(r2.indices, (std::vector<int32_t>{1, 3}));  // the lower-indexed infinity
  EXPECT_EQ(r2.residual[5], inf);
  const TopkResult r5 = run_topk(be, x, 1, 8, 5);
  EXPECT_EQ(r5.indices, (std::vector<int32_t>{1, 2, 3, 5, 7}));
  EXPECT_EQ(bits_of(r5.residual[6]), bits_of(-0.0f));  // -0 left behind keeps its sign
}

TEST_P(Sparse, TopkInPlaceResidual) {
  const Backend be = GetParam();
  MMFL_SKIP_IF_UNAVAILABLE(be);
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  const int64_t rows = 3, n = 2000, k = 77;
  const auto x = topk_input(rng, rows, n);
  const TopkResult apart = run_topk(be, x, rows, n, k);
  DeviceBuffer<float> d_x(be, x), values(be, rows * k);
  DeviceBuffer<int32_t> indices(be, rows * k);
  ops::topk_by_magnitude(be, d_x.get(), rows, n, k, indices.get(), values.get(), d_x.get());
  EXPECT_EQ(indices.download(), apart.indices);
  EXPECT_TRUE(all_equal(values.download(), apart.values, "values"));
  EXPECT_TRUE(all_equal(d_x.download(), apart.residual, "in-place residual"));
}

TEST_P(Sparse, SumEqualsDenseSumOfScatteredPackets) {
  const Backend be = GetParam();
  MMFL_SKIP_IF_UNAVAILABLE(be);
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  for (auto acc : {Accumulator::kFloat32, Accumulator::kFloat64})
    for (auto [rows, k, n] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
             {0, 0, 5}, {1, 1, 1}, {4, 0, 9}, {6, 50, 50}, {9, 31, 4500}, {260, 7, 700}}) {
      SCOPED_TRACE("rows=" + std::to_string(rows) + " k=" + std::to_string(k) +
                   " n=" + std::to_string(n));
      const Packets p = random_packets(rng, rows, k, n);
      std::vector<double> dense(static_cast<size_t>(n), 0.0);
      for (int64_t c = 0; c < rows; ++c)
        for (int64_t i = 0; i < k; ++i)
          dense[p.indices[c * k + i]] += double(p.weights[c]) * p.values[c * k + i];
      DeviceBuffer<int32_t> d_i(be, p.indices);
      DeviceBuffer<float> d_v(be, p.values), d_w(be, p.weights), out(be, n);
      out.fill(std::numeric_limits<float>::quiet_NaN());
      ops::sparse_weighted_sum(be, d_i.get(), d_v.get(), d_w.get(), rows, k, n, out.get(), acc);
      EXPECT_TRUE(all_close(out.download(), dense, Tolerance{0, 0}, "sparse sum"));
    }
}

INSTANTIATE_TEST_SUITE_P(Backends, Sparse,
                         ::testing::Values(Backend::kRef, Backend::kCpu, Backend::kSimt,
                                           Backend::kCuda),
                         backend_param_name);

// The host backends validate packets: an index outside [0, n) or out of order names the row
// (client) and entry; nothing is written.
class SparseHost : public ::testing::TestWithParam<Backend> {};

TEST_P(SparseHost, BadPacketsAreRefused) {
  const Backend be = GetParam();
  const std::vector<float> values(6, 1.0f), weights(2, 1.0f);
  std::vector<float> out(10, 7.0f);
  auto run = [&](const std::vector<int32_t>& idx) {
    ops::sparse_weighted_sum(be, idx.data(), values.data(), weights.data(), 2, 3, 10, out.data(),
                             Accumulator::kFloat64);
  };
  expect_error_mentioning(
      [&] {
        run({0, 1, 2, 3, 4, 10});
      },
      {"indices[1, 2] = 10", "outside [0, n) = [0, 10)", "client 1"});
  expect_error_mentioning([&] { run({0, 1, 2, -1, 4, 5}); }, {"indices[1, 0] = -1"});
  expect_error_mentioning(
      [&] {
        run({0, 2, 2, 3, 4, 5});
      },
      {"strictly ascending", "indices[0, 2] = 2", "client 0"});
  EXPECT_EQ(out, std::vector<float>(10, 7.0f));
  std::vector<int32_t> idx(3);
  std::vector<float> x(4, 1.0f), v(3), res(4);
  expect_error_mentioning(
      [&] { ops::topk_by_magnitude(be, x.data(), 1, 4, 5, idx.data(), v.data(), res.data()); },
      {"k must be in [0, n] = [0, 4], got 5"});
}

INSTANTIATE_TEST_SUITE_P(Backends, SparseHost, ::testing::Values(Backend::kRef, Backend::kCpu),
                         backend_param_name);

// The fast CPU path: the same bits on 1, 2 and 3 threads, on rows long enough that the sample
// threshold and the vector loop matter, and at a density where the sample can misjudge.
TEST(CpuSparse, SameBitsForOneTwoThreeThreads) {
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  const int64_t rows = 7, n = 40000, k = 400;
  const auto x = topk_input(rng, rows, n);
  const Packets p = random_packets(rng, rows, 300, n);
  std::vector<std::vector<int32_t>> idx(3, std::vector<int32_t>(rows * k));
  std::vector<std::vector<float>> val(3, std::vector<float>(rows * k)),
      res(3, std::vector<float>(rows * n)), sum(3, std::vector<float>(n));
  for (int t = 0; t < 3; ++t) {
    const kernels::cpu::Context ctx = thread_context(t + 1);
    kernels::cpu::topk_by_magnitude(x.data(), rows, n, k, idx[t].data(), val[t].data(),
                                    res[t].data(), ctx);
    kernels::cpu::sparse_weighted_sum(p.indices.data(), p.values.data(), p.weights.data(), rows,
                                      300, n, sum[t].data(), Accumulator::kFloat32, ctx);
  }
  for (int t = 1; t < 3; ++t) {
    EXPECT_EQ(idx[t], idx[0]);
    EXPECT_TRUE(all_equal(val[t], val[0], "values"));
    EXPECT_TRUE(all_equal(res[t], res[0], "residual"));
    EXPECT_TRUE(all_equal(sum[t], sum[0], "sparse sum"));
  }
}

// A row the strided sample misjudges: the sampled positions (every 8th of n = 16384, 2048 of
// them) hold the only large values, 100 of them, so the sample's threshold admits 100 < k
// candidates and the CPU path must fall back to a full pass. Checked against the contract.
TEST(CpuSparse, SampleMisjudgedFallsBack) {
  const int64_t n = 16384, k = 300;
  std::vector<float> x(static_cast<size_t>(n), 0.5f);
  for (int64_t i = 0; i < 2048; ++i)
    x[8 * i] = i < 100 ? 1000.0f : 1.0f;
  TopkResult r{std::vector<int32_t>(k), std::vector<float>(k), std::vector<float>(n)};
  kernels::cpu::topk_by_magnitude(x.data(), 1, n, k, r.indices.data(), r.values.data(),
                                  r.residual.data(), thread_context(2));
  expect_topk_contract(x, 1, n, k, r);
}

#if defined(MMFL_TEST_HAVE_CUDA)
// The CUB variant (GPU build only) selects exactly what the radix-select kernel does.
class SparseCub : public ::testing::TestWithParam<Backend> {};

TEST_P(SparseCub, MatchesRadixSelect) {
  const Backend be = GetParam();
  MMFL_SKIP_IF_UNAVAILABLE(be);
  std::mt19937_64 rng(test_seed());
  for (auto [rows, n, k] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {3, 300, 0}, {3, 300, 1}, {3, 300, 300}, {5, 70001, 700}}) {
    const auto x = topk_input(rng, rows, n);
    const TopkResult want = run_topk(be, x, rows, n, k);
    DeviceBuffer<float> d_x(be, x), values(be, rows * k), residual(be, rows * n);
    DeviceBuffer<int32_t> indices(be, rows * k);
    kernels::cuda::topk_by_magnitude_cub(d_x.get(), rows, n, k, indices.get(), values.get(),
                                         residual.get(), nullptr);
    EXPECT_EQ(indices.download(), want.indices);
    EXPECT_TRUE(all_equal(values.download(), want.values, "values"));
    EXPECT_TRUE(all_equal(residual.download(), want.residual, "residual"));
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, SparseCub, ::testing::Values(Backend::kCuda),
                         backend_param_name);
#endif

}  // namespace
}  // namespace mmfl::test
