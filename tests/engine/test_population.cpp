#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "engine/population.h"
#include "mmfl/error.h"

namespace mmfl::engine {
namespace {

std::vector<int64_t> labels_for(int64_t n, int classes) {
  std::vector<int64_t> l(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    l[size_t(i)] = i % classes;
  return l;
}

void expect_exact_cover(const std::vector<std::vector<int64_t>>& parts, int64_t n) {
  std::vector<int> seen(size_t(n), 0);
  for (const auto& p : parts)
    for (int64_t i : p) {
      ASSERT_GE(i, 0);
      ASSERT_LT(i, n);
      ++seen[size_t(i)];
    }
  for (int64_t i = 0; i < n; ++i)
    ASSERT_EQ(seen[size_t(i)], 1) << "sample " << i;
}

// Mean over clients of the number of classes holding >= 5% of the client's samples.
double mean_classes_per_client(const std::vector<std::vector<int64_t>>& parts,
                               const std::vector<int64_t>& labels) {
  double total = 0;
  for (const auto& p : parts) {
    std::vector<int> count(10, 0);
    for (int64_t i : p)
      ++count[size_t(labels[size_t(i)])];
    for (int c : count)
      total += c >= 0.05 * double(p.size()) && c > 0;
  }
  return total / double(parts.size());
}

TEST(Partition, EverySampleAssignedExactlyOnce) {
  const auto labels = labels_for(5003, 10);
  for (double skew : {0.0, 1.0}) {
    auto rng = make_rng(3, 0);
    const auto shares = client_shares(37, skew, rng);
    auto iid = partition_iid(5003, shares, rng);
    expect_exact_cover(iid, 5003);
    for (double alpha : {0.05, 1.0, 100.0}) {
      auto d = partition_dirichlet(labels, 10, alpha, shares, rng);
      enforce_min_samples(d, 10, rng);
      expect_exact_cover(d, 5003);
      for (const auto& p : d)
        EXPECT_GE(p.size(), 10u);
    }
  }
}

TEST(Partition, DirichletAlphaControlsLabelSkew) {
  const auto labels = labels_for(20000, 10);
  auto rng = make_rng(11, 0);
  const auto shares = client_shares(50, 0.0, rng);
  const double skewed =
      mean_classes_per_client(partition_dirichlet(labels, 10, 0.05, shares, rng), labels);
  const double mild =
      mean_classes_per_client(partition_dirichlet(labels, 10, 1.0, shares, rng), labels);
  const double flat =
      mean_classes_per_client(partition_dirichlet(labels, 10, 1000.0, shares, rng), labels);
  EXPECT_LT(skewed, 3.0);  // alpha -> 0: about one class per client
  EXPECT_GT(mild, skewed + 1.0);
  EXPECT_GT(flat, 9.5);  // alpha -> inf: every client sees every class evenly
}

TEST(Partition, QuantitySkewSpreadsSizes) {
  auto rng = make_rng(5, 0);
  const auto even = partition_iid(10000, client_shares(20, 0.0, rng), rng);
  const auto skew = partition_iid(10000, client_shares(20, 1.5, rng), rng);
  auto spread = [](const std::vector<std::vector<int64_t>>& p) {
    size_t lo = SIZE_MAX, hi = 0;
    for (const auto& x : p)
      lo = std::min(lo, x.size()), hi = std::max(hi, x.size());
    return double(hi) / double(std::max<size_t>(lo, 1));
  };
  EXPECT_LE(spread(even), 1.01);
  EXPECT_GT(spread(skew), 5.0);
}

TEST(Partition, MinSamplesImpossibleIsAnError) {
  std::vector<std::vector<int64_t>> parts = {{0, 1}, {2}};
  auto rng = make_rng(1, 0);
  EXPECT_THROW(enforce_min_samples(parts, 2, rng), Error);
}

TEST(Population, ModalityMixGivesExactCounts) {
  auto rng = make_rng(2, 0);
  const auto kinds = assign_kinds(101, ModalityMix{0.3, 0.2, 0.5}, rng);
  EXPECT_EQ(std::count(kinds.begin(), kinds.end(), ClientKind::kImage), 30);
  EXPECT_EQ(std::count(kinds.begin(), kinds.end(), ClientKind::kText), 20);
  EXPECT_EQ(std::count(kinds.begin(), kinds.end(), ClientKind::kPaired), 51);
}

TEST(Population, DeterministicBySeed) {
  PopulationConfig cfg;
  cfg.clients = 30;
  const auto labels = labels_for(3000, 10);
  const auto a = make_population(cfg, labels, 10, 9), b = make_population(cfg, labels, 10, 9);
  const auto c = make_population(cfg, labels, 10, 10);
  bool differs = false;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].indices, b[i].indices);
    EXPECT_EQ(a[i].kind, b[i].kind);
    differs |= a[i].indices != c[i].indices;
  }
  EXPECT_TRUE(differs);
}

TEST(Sampling, DistinctSortedAndSeeded) {
  const auto s = sample_clients(1000, 50, 4, 7);
  EXPECT_EQ(s.size(), 50u);
  EXPECT_TRUE(std::is_sorted(s.begin(), s.end()));
  EXPECT_EQ(std::set<int64_t>(s.begin(), s.end()).size(), 50u);
  EXPECT_EQ(s, sample_clients(1000, 50, 4, 7));
  EXPECT_NE(s, sample_clients(1000, 50, 4, 8));
  EXPECT_EQ(sample_clients(5, 5, 1, 1), (std::vector<int64_t>{0, 1, 2, 3, 4}));
  // Uniform: over many rounds every client is picked about k/n of the time.
  std::vector<int> hits(100, 0);
  for (int r = 0; r < 2000; ++r)
    for (int64_t id : sample_clients(100, 10, 1, r))
      ++hits[size_t(id)];
  for (int h : hits)
    EXPECT_NEAR(h, 200, 60);
}

}  // namespace
}  // namespace mmfl::engine
