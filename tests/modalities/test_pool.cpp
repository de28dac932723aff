#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <limits>

#include "modalities/image/pool.h"

namespace mmfl::modalities {
namespace {

// Forward and input gradient of the fused op and of LibTorch's composition, for one input and one
// upstream gradient.
struct Both {
  torch::Tensor y_fused, y_ref, dx_fused, dx_ref;
};

Both run_both(const torch::Tensor& x, const torch::Tensor& g) {
  auto a = x.clone().requires_grad_(true), b = x.clone().requires_grad_(true);
  auto ya = relu_max_pool2(a);
  auto yb = torch::max_pool2d(torch::relu(b), 2);
  (ya * g).sum().backward();
  (yb * g).sum().backward();
  return {ya.detach(), yb.detach(), a.grad(), b.grad()};
}

void expect_same_bits(const torch::Tensor& a, const torch::Tensor& b, const char* what) {
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  // NaN compares equal to NaN here; every other value must match exactly.
  EXPECT_TRUE(torch::equal(torch::nan_to_num(a, 1234.5), torch::nan_to_num(b, 1234.5)))
      << what << ": max difference " << (a - b).abs().nan_to_num(0).max().item<float>();
  EXPECT_TRUE(torch::equal(a.isnan(), b.isnan())) << what;
}

TEST(ReluMaxPool2, EqualsLibTorchOnRandomInputsOfOddAndEvenSizes) {
  torch::manual_seed(3);
  for (auto hw : std::vector<std::pair<int64_t, int64_t>>{{28, 28}, {7, 9}, {2, 2}, {5, 4}}) {
    const auto x = torch::randn({3, 5, hw.first, hw.second});
    const auto g = torch::randn({3, 5, hw.first / 2, hw.second / 2});
    const auto r = run_both(x, g);
    expect_same_bits(r.y_fused, r.y_ref, "forward");
    expect_same_bits(r.dx_fused, r.dx_ref, "gradient");
  }
}

TEST(ReluMaxPool2, TiesNegativesAndNaNFollowLibTorch) {
  // Small integers: many ties inside a window, whole windows negative or zero, NaN in some.
  torch::manual_seed(4);
  auto x = torch::randint(-2, 3, {2, 3, 6, 6}).to(torch::kFloat32);
  x.index_put_({0, 0, 0, 1}, std::numeric_limits<float>::quiet_NaN());
  x.index_put_({1, 2, 3, 3}, std::numeric_limits<float>::quiet_NaN());
  x.index_put_({1, 2, 2, 2}, std::numeric_limits<float>::quiet_NaN());
  const auto g = torch::randint(1, 5, {2, 3, 3, 3}).to(torch::kFloat32);
  const auto r = run_both(x, g);
  expect_same_bits(r.y_fused, r.y_ref, "forward");
  expect_same_bits(r.dx_fused, r.dx_ref, "gradient");
  EXPECT_TRUE(r.y_fused[0][0][0][0].isnan().item<bool>());
}

TEST(ReluMaxPool2, SameBitsForAnyThreadCountAndNonContiguousInput) {
  torch::manual_seed(5);
  const auto x = torch::randn({4, 40, 12, 10}).transpose(2, 3);  // not contiguous
  const auto g = torch::randn({4, 40, 5, 6});
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  const auto one = run_both(x, g);
  at::set_num_threads(2);
  const auto two = run_both(x, g);
  at::set_num_threads(threads);
  expect_same_bits(one.y_fused, one.y_ref, "forward");
  expect_same_bits(one.dx_fused, one.dx_ref, "gradient");
  expect_same_bits(one.y_fused, two.y_fused, "forward, 1 vs 2 threads");
  expect_same_bits(one.dx_fused, two.dx_fused, "gradient, 1 vs 2 threads");
}

TEST(ReluMaxPool2, RefusesWhatIsNotAnImageBatch) {
  EXPECT_ANY_THROW(relu_max_pool2(torch::randn({3, 4, 5})));
  EXPECT_ANY_THROW(relu_max_pool2(torch::randn({1, 1, 1, 8})));
}

}  // namespace
}  // namespace mmfl::modalities
