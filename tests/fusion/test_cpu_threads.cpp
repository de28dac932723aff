// The adapters on CPU tensors run the fast kernels on LibTorch's intra-op threads: the results
// must be the same bits whatever torch::set_num_threads says (the library GEMM that the MoE and
// multi-adapter LoRA ops run on tiles included), and the pool must really be used.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <mutex>
#include <set>
#include <thread>

#include "fusion/ops/aggregate.h"
#include "fusion/ops/bank_ce.h"
#include "fusion/ops/cpu_context.h"
#include "fusion/ops/infonce.h"
#include "fusion/ops/moe.h"
#include "fusion/ops/multi_lora.h"

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

// The MoE expert FFN (expert choice) and the multi-adapter LoRA layer, forward and every gradient.
std::vector<torch::Tensor> run_tiled(const std::vector<torch::Tensor>& moe_in,
                                     const std::vector<torch::Tensor>& lora_in,
                                     const std::vector<int64_t>& offsets) {
  std::vector<torch::Tensor> m;
  for (const auto& t : moe_in)
    m.push_back(t.clone().requires_grad_());
  const auto routing = ops::route_expert_choice(torch::mm(m[0], m[1]), 1100);
  const auto y = ops::moe_ffn(m[0], routing, m[2], m[3], m[4], m[5]);
  y.pow(2).sum().backward();
  auto x = lora_in[0].clone().requires_grad_(), a = lora_in[3].clone().requires_grad_(),
       b = lora_in[4].clone().requires_grad_();
  const auto z = ops::multi_lora_linear(x, lora_in[1], lora_in[2], a, b, offsets, 2.0);
  z.pow(2).sum().backward();
  std::vector<torch::Tensor> out{y.detach(), z.detach(), x.grad(), a.grad(), b.grad()};
  for (const auto& t : m)
    out.push_back(t.grad());
  return out;
}

TEST(CpuThreads, TiledLibraryGemmOpsSameBitsForOneTwoThreeThreads) {
  const ThreadCount restore;
  torch::manual_seed(::testing::UnitTest::GetInstance()->random_seed());
  // MoE: 2 experts x 1,100 slots and f 1,100, so every product spans two 1,024 tiles each way.
  const int64_t t = 1500, d = 24, f = 1100, e = 2;
  const std::vector<torch::Tensor> moe_in{torch::randn({t, d}),         torch::randn({d, e}),
                                          torch::randn({e, f, d}) / 5,  torch::randn({e, f}) / 10,
                                          torch::randn({e, d, f}) / 30, torch::randn({e, d}) / 10};
  // LoRA: five clients (one with no rows), 70 rows each, rank 5.
  const std::vector<int64_t> offsets{0, 70, 140, 140, 210, 280};
  const std::vector<torch::Tensor> lora_in{torch::randn({280, 40}), torch::randn({33, 40}),
                                           torch::randn({33}), torch::randn({5, 5, 40}),
                                           torch::randn({5, 33, 5})};
  torch::set_num_threads(1);
  const auto one = run_tiled(moe_in, lora_in, offsets);
  for (int threads : {2, 3}) {
    torch::set_num_threads(threads);
    const auto other = run_tiled(moe_in, lora_in, offsets);
    ASSERT_EQ(other.size(), one.size());
    for (size_t k = 0; k < one.size(); ++k)
      EXPECT_TRUE(torch::equal(other[k], one[k]))
          << "output " << k << ", " << threads << " threads";
  }
}

// The library GEMM (MKL where LibTorch has it) against the tile GEMM: every transpose, beta 0 over
// NaN (C not read) and 1, padded leading dimensions, empty and depth-0 products.
TEST(CpuThreads, LibraryGemmMatchesTileGemm) {
  const kernels::cpu::Gemm lib = ops::library_gemm();
  if (lib == nullptr)
    GTEST_SKIP() << "LibTorch's BLAS is not MKL here: the kernels use the tile GEMM";
  using kernels::cpu::Transpose;
  torch::manual_seed(::testing::UnitTest::GetInstance()->random_seed());
  struct Dims {
    int64_t m, n, k;
  };
  for (const Dims dm : {Dims{37, 53, 71}, Dims{1, 1, 1}, Dims{5, 9, 0}, Dims{0, 4, 3}}) {
    for (Transpose ta : {Transpose::kNo, Transpose::kYes})
      for (Transpose tb : {Transpose::kNo, Transpose::kYes})
        for (float beta : {0.0f, 1.0f}) {
          SCOPED_TRACE(::testing::Message() << dm.m << "x" << dm.n << "x" << dm.k << " ta "
                                            << int(ta) << " tb " << int(tb) << " beta " << beta);
          // Stored shapes with 3 columns of padding: op(A) is [m, k], op(B) is [k, n].
          const int64_t ar = ta == Transpose::kNo ? dm.m : dm.k,
                        ac = ta == Transpose::kNo ? dm.k : dm.m;
          const int64_t br = tb == Transpose::kNo ? dm.k : dm.n,
                        bc = tb == Transpose::kNo ? dm.n : dm.k;
          const auto a = torch::randn({ar, ac + 3}), b = torch::randn({br, bc + 3});
          const auto c0 =
              beta == 0.0f ? torch::full({dm.m, dm.n + 3}, NAN) : torch::randn({dm.m, dm.n + 3});
          auto want = c0.clone(), got = c0.clone();
          kernels::cpu::sgemm(ta, tb, dm.m, dm.n, dm.k, a.data_ptr<float>(), ac + 3,
                              b.data_ptr<float>(), bc + 3, beta, want.data_ptr<float>(), dm.n + 3);
          lib(ta, tb, dm.m, dm.n, dm.k, a.data_ptr<float>(), ac + 3, b.data_ptr<float>(), bc + 3,
              beta, got.data_ptr<float>(), dm.n + 3);
          const auto wv = want.narrow(1, 0, dm.n), gv = got.narrow(1, 0, dm.n);
          ASSERT_FALSE(gv.isnan().any().item<bool>());
          EXPECT_TRUE(torch::allclose(gv, wv, 1e-5, 1e-4));
          // The padding is never written.
          EXPECT_TRUE(torch::equal(got.narrow(1, dm.n, 3).isnan(), c0.narrow(1, dm.n, 3).isnan()));
        }
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
