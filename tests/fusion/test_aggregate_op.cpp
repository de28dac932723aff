#include <gtest/gtest.h>
#include <torch/torch.h>

#include "fusion/ops/aggregate.h"
#include "mmfl/error.h"

namespace mmfl::fusion {
namespace {

TEST(AggregateOp, ExactOnSmallIntegers) {
  const auto x = torch::fmod(torch::arange(5 * 1001, torch::kFloat32), 9.0).reshape({5, 1001}) - 4;
  const auto w = torch::tensor({0.5f, 0.25f, 0.125f, 0.0625f, 0.0625f});
  const auto expect = (x * w.unsqueeze(1)).sum(0);
  for (auto acc : {kernels::Accumulator::kFloat32, kernels::Accumulator::kFloat64})
    EXPECT_TRUE(torch::equal(ops::weighted_sum(x, w, acc), expect));
}

TEST(AggregateOp, FiniteVariantSkipsAndRescales) {
  auto x = torch::ones({3, 10});
  x[1] *= 5;
  x[2][4] = std::numeric_limits<float>::infinity();
  const auto r = ops::weighted_sum_finite(x, torch::tensor({0.25f, 0.25f, 0.5f}));
  EXPECT_EQ(r.skipped, 1);
  EXPECT_TRUE(torch::equal(r.bad, torch::tensor({false, false, true})));
  // Weights 0.25 + 0.25 rescaled to 0.5 + 0.5: out = 0.5 * 1 + 0.5 * 5.
  EXPECT_TRUE(torch::equal(r.out, torch::full({10}, 3.0)));
}

TEST(AggregateOp, BadArgumentsAreRefused) {
  EXPECT_THROW(ops::weighted_sum(torch::ones({3, 4}), torch::ones({2})), Error);
  EXPECT_THROW(ops::weighted_sum(torch::ones({3, 4}, torch::kFloat64), torch::ones({3})), Error);
}

}  // namespace
}  // namespace mmfl::fusion
