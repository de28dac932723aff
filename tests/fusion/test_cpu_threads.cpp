// The adapters on CPU tensors run the fast kernels on LibTorch's intra-op threads: the results
// must be the same bits whatever torch::set_num_threads says, and the pool must really be used.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <mutex>
#include <set>
#include <thread>

#include "fusion/ops/aggregate.h"
#include "fusion/ops/bank_ce.h"
#include "fusion/ops/cpu_context.h"
#include "fusion/ops/infonce.h"

namespace mmfl::fusion {
namespace {

// Restores LibTorch's thread count when a test ends.
class ThreadCount {
 public:
  ThreadCount() : saved_(torch::get_num_threads()) {}
  ~ThreadCount() { torch::set_num_threads(saved_); }

 private:
  int saved_;
};

std::vector<torch::Tensor> run_all(const torch::Tensor& img, const torch::Tensor& txt,
                                   const torch::Tensor& local, const torch::Tensor& target,
                                   const torch::Tensor& updates, const torch::Tensor& w) {
  auto i = img.detach().clone().requires_grad_(), t = txt.detach().clone().requires_grad_();
  auto tau = torch::full({1}, 0.1f).requires_grad_();
  auto loss = ops::infonce(i, t, tau);
  loss.backward();
  auto q = img.detach().slice(0, 0, 40).clone().requires_grad_();
  auto bank = txt.detach().clone().requires_grad_();
  auto ce = ops::bank_cross_entropy(q, bank, target, 0.2);
  ce.sum().backward();
  const auto ens = ops::creamfl_ensemble(local, txt, 0.5, kernels::EnsembleWeighting::kContrastive);
  return {loss.detach(), i.grad(),    t.grad(), tau.grad(),  ce.detach(),
          q.grad(),      bank.grad(), ens.out,  ens.weights, ops::weighted_sum(updates, w)};
}

TEST(CpuThreads, SameBitsForOneTwoThreeThreads) {
  const ThreadCount restore;
  torch::manual_seed(::testing::UnitTest::GetInstance()->random_seed());
  // 600 rows: three 256-row InfoNCE tiles, five 128-row bank tiles; 70,000 values: two
  // aggregation chunks.
  const auto img = torch::randn({600, 24}), txt = torch::randn({600, 24});
  const auto local = torch::randn({3, 600, 24});
  const auto target = torch::randint(600, {40}, torch::kInt64);
  const auto updates = torch::randn({5, 70000}), w = torch::rand({5});
  torch::set_num_threads(1);
  const auto one = run_all(img, txt, local, target, updates, w);
  for (int threads : {2, 3}) {
    torch::set_num_threads(threads);
    const auto other = run_all(img, txt, local, target, updates, w);
    ASSERT_EQ(other.size(), one.size());
    for (size_t k = 0; k < one.size(); ++k)
      EXPECT_TRUE(torch::equal(other[k], one[k]))
          << "output " << k << ", " << threads << " threads";
  }
}

TEST(CpuThreads, ContextUsesLibTorchPool) {
  const ThreadCount restore;
  torch::set_num_threads(2);
  std::mutex mu;
  std::set<std::thread::id> ids;
  const auto ctx = ops::cpu_context();
  ctx.parallel_for(64, [&](int64_t, int64_t) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    const std::lock_guard<std::mutex> lock(mu);
    ids.insert(std::this_thread::get_id());
  });
  EXPECT_EQ(ids.size(), 2u) << "at::parallel_for ran on one thread: built without OpenMP?";
}

}  // namespace
}  // namespace mmfl::fusion
