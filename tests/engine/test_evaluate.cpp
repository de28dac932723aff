#include <gtest/gtest.h>
#include <torch/torch.h>

#include "engine/evaluate.h"

namespace mmfl::engine {
namespace {

TEST(Recall, HandComputed) {
  // Row 0: match scores 0.9, best -> rank 0. Row 1: match 0.2, two higher -> rank 2.
  // Row 2: match 0.5, one higher -> rank 1.
  const auto sim = torch::tensor({{0.9, 0.1, 0.3}, {0.5, 0.2, 0.4}, {0.7, 0.1, 0.5}});
  double r[3];
  recall_at(sim, r);
  EXPECT_DOUBLE_EQ(r[0], 1.0 / 3);
  EXPECT_DOUBLE_EQ(r[1], 1.0);
  EXPECT_DOUBLE_EQ(r[2], 1.0);
  std::vector<float> big(400 * 400, 0.f);
  for (int i = 0; i < 400; ++i) {
    big[size_t(i * 400 + i)] = 0.5f;
    big[size_t(i * 400 + (i + 7) % 400)] = 1.f;  // one item beats each match
  }
  recall_at(torch::tensor(big).reshape({400, 400}), r);
  EXPECT_DOUBLE_EQ(r[0], 0.0);
  EXPECT_DOUBLE_EQ(r[1], 1.0);
}

// Issue 10 item 1: ties count against the query and NaN is never a hit. The old rank counted only
// strictly greater scores, so identical features (a collapsed model) or NaN scored 100%.
TEST(Recall, TiesAndNanAreNotHits) {
  double r[3];
  recall_at(torch::ones({20, 20}), r);  // every feature the same: all scores tie
  EXPECT_DOUBLE_EQ(r[0], 0.0);
  EXPECT_DOUBLE_EQ(r[1], 0.0);
  EXPECT_DOUBLE_EQ(r[2], 0.0);
  recall_at(torch::full({20, 20}, std::nan("")), r);
  EXPECT_DOUBLE_EQ(r[0], 0.0);
  EXPECT_DOUBLE_EQ(r[2], 0.0);
  // One tie with the match: rank 1, a miss at R@1 and a hit at R@5.
  const auto sim = torch::tensor({{0.5, 0.5, 0.1}, {0.1, 0.9, 0.2}, {0.0, 0.1, 0.3}});
  recall_at(sim, r);
  EXPECT_DOUBLE_EQ(r[0], 2.0 / 3);
  EXPECT_DOUBLE_EQ(r[1], 1.0);
}

}  // namespace
}  // namespace mmfl::engine
