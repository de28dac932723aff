// engine/comm without mpirun: placement, packing, and the gathers through a fake second rank
// (the real multi-rank runs are tests/engine/multi_rank.py).
#include <gtest/gtest.h>

#include <cstdlib>

#include "engine/comm/communicator.h"
#include "engine/comm/distribute.h"
#include "engine/config.h"
#include "mmfl/error.h"

namespace mmfl::engine::comm {
namespace {

std::vector<ClientSpec> specs(const std::vector<int64_t>& sizes) {
  std::vector<ClientSpec> out;
  for (size_t i = 0; i < sizes.size(); ++i) {
    ClientSpec s;
    s.id = int64_t(10 + i);
    s.indices.resize(size_t(sizes[i]));
    out.push_back(s);
  }
  return out;
}

std::vector<const ClientSpec*> ptrs(const std::vector<ClientSpec>& v) {
  std::vector<const ClientSpec*> out;
  for (const auto& s : v)
    out.push_back(&s);
  return out;
}

TEST(Placement, CostBalancesLongestFirstAndIsDeterministic) {
  const auto pop = specs({50, 10, 40, 30, 20, 20});
  std::vector<double> cost;
  for (const auto& s : pop)
    cost.push_back(double(s.indices.size()));
  const auto p = place(ptrs(pop), cost, 2, Placement::kCost);
  // Longest first: 50 -> r0, 40 -> r1, 30 -> r1, 20 -> r0, 20 -> r0 (70 = 70: the lower rank),
  // 10 -> r1: loads 90 and 80.
  EXPECT_EQ(p, (std::vector<int>{0, 1, 1, 1, 0, 0}));
  double load[2] = {0, 0};
  for (size_t i = 0; i < pop.size(); ++i)
    load[p[i]] += cost[i];
  EXPECT_DOUBLE_EQ(load[0] + load[1], 170);
  EXPECT_LE(std::abs(load[0] - load[1]), 10);  // LPT bound here: within the smallest job
  EXPECT_EQ(p, place(ptrs(pop), cost, 2, Placement::kCost));
  EXPECT_EQ(p[0], 0);  // the costliest client goes first, onto rank 0
}

TEST(Placement, OwnerIsIdModRanks) {
  const auto pop = specs({5, 5, 5, 5, 5});
  const auto p = place(ptrs(pop), {}, 3, Placement::kOwner);
  for (size_t i = 0; i < pop.size(); ++i)
    EXPECT_EQ(p[i], int(pop[i].id % 3));
}

TEST(Placement, OneRankGetsTheWholeCohort) {
  const auto pop = specs({5, 7});
  auto local = make_local();
  EXPECT_EQ(local_share(ptrs(pop), *local, Placement::kCost).size(), 2u);
}

TEST(Pack, RoundTripsEveryDtypeAndShape) {
  std::vector<std::pair<std::string, torch::Tensor>> in = {
      {"f", torch::randn({3, 4})},
      {"d", torch::randn({2}, torch::kFloat64)},
      {"i", torch::tensor({int64_t(1) << 40, int64_t(-3)})},
      {"j", torch::tensor({7, 8, 9}, torch::kInt32)},
      {"empty", torch::zeros({0, 5})},
      {"scalar", torch::tensor(2.5)}};
  std::string meta;
  const auto out = unpack_tensors(pack_tensors(in, "hello"), &meta);
  EXPECT_EQ(meta, "hello");
  ASSERT_EQ(out.size(), in.size());
  for (size_t k = 0; k < in.size(); ++k) {
    EXPECT_EQ(out[k].first, in[k].first);
    EXPECT_EQ(out[k].second.sizes(), in[k].second.sizes());
    EXPECT_EQ(out[k].second.scalar_type(), in[k].second.scalar_type());
    EXPECT_TRUE(torch::equal(out[k].second, in[k].second)) << in[k].first;
  }
}

TEST(Pack, CutOrDamagedMessagesAreErrors) {
  const auto bytes = pack_tensors({{"x", torch::ones({4})}});
  for (size_t cut : {size_t(0), size_t(5), size_t(20), bytes.size() - 1})
    EXPECT_THROW(unpack_tensors(bytes.substr(0, cut)), Error) << cut;
  EXPECT_THROW(unpack_tensors(bytes + "z"), Error);
  auto bad = bytes;
  bad[0] = 'X';
  EXPECT_THROW(unpack_tensors(bad), Error);
}

// Rank 0 of two, the other rank's messages canned: all_gather returns [mine, theirs].
class FakeTwoRanks : public Communicator {
 public:
  std::string backend() const override { return "fake"; }
  int rank() const override { return 0; }
  int size() const override { return 2; }
  int local_rank() const override { return 0; }
  void all_reduce_sum(torch::Tensor& t) override { t.add_(other_sum); }
  std::vector<torch::Tensor> all_gather(const torch::Tensor& t) override {
    auto next = theirs.front();
    theirs.erase(theirs.begin());
    return {t, next};
  }
  void broadcast(torch::Tensor&, int) override {}
  void barrier() override {}
  std::vector<torch::Tensor> theirs;
  torch::Tensor other_sum;
};

Update make_update(int64_t id, float v) {
  Update u;
  u.client_id = id;
  u.kind = ClientKind::kText;
  u.num_samples = 3 * id;
  u.loss = 0.5 * double(id);
  u.bytes_down = 100 + id;
  u.up.dense["text"] = torch::full({4}, v);
  u.up.sparse["adapter"] = {torch::tensor({1, 3}, torch::kInt32), torch::tensor({v, -v}), 9};
  u.up.reps["image"] = torch::full({2, 3}, v);
  return u;
}

TEST(Gather, UpdatesOfBothRanksInClientOrderWithEveryPart) {
  // Rank 1's message (clients 2 and 7) is what gather_updates sends from a rank holding them:
  // captured from a gather on a fake, then fed to rank 0's gather as the other rank's part.
  FakeTwoRanks other;
  struct Capture : FakeTwoRanks {
    std::vector<torch::Tensor> all_gather(const torch::Tensor& t) override {
      sent = t.clone();
      return {t, t};
    }
    torch::Tensor sent;
  } cap;
  std::vector<Update> theirs;
  theirs.push_back(make_update(2, 2.f));
  theirs.push_back(make_update(7, 7.f));
  gather_updates(cap, theirs, torch::kCPU);
  other.theirs = {cap.sent};
  std::vector<Update> mine;
  mine.push_back(make_update(5, 5.f));
  const auto all = gather_updates(other, mine, torch::kCPU);
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[0].client_id, 2);
  EXPECT_EQ(all[1].client_id, 5);
  EXPECT_EQ(all[2].client_id, 7);
  const auto& u = all[2];
  EXPECT_EQ(u.kind, ClientKind::kText);
  EXPECT_EQ(u.num_samples, 21);
  EXPECT_DOUBLE_EQ(u.loss, 3.5);
  EXPECT_EQ(u.bytes_down, 107);
  EXPECT_TRUE(torch::equal(u.up.dense.at("text"), torch::full({4}, 7.f)));
  EXPECT_EQ(u.up.sparse.at("adapter").indices.scalar_type(), torch::kInt32);
  EXPECT_EQ(u.up.sparse.at("adapter").dense_numel, 9);
  EXPECT_TRUE(torch::equal(u.up.reps.at("image"), torch::full({2, 3}, 7.f)));
  EXPECT_EQ(u.bytes_up(), make_update(7, 7.f).bytes_up());
}

TEST(Comm, BackendResolutionAndItsErrors) {
  CommConfig cfg;
  LaunchInfo alone;
  EXPECT_EQ(resolve_backend(cfg, alone, false), CommBackend::kLocal);
  LaunchInfo mpirun{1, 3, true};
  EXPECT_EQ(resolve_backend(cfg, mpirun, false), CommBackend::kMpi);
  cfg.backend = CommBackend::kLocal;
  EXPECT_THROW(resolve_backend(cfg, mpirun, false), Error);
  cfg.backend = CommBackend::kNccl;
  if (built_with(CommBackend::kNccl)) EXPECT_THROW(resolve_backend(cfg, alone, false), Error);
}

TEST(Comm, ConfigKeysAreChecked) {
  EXPECT_EQ(parse_config_text("comm: {backend: mpi, timeout_s: 30}\n").comm.backend,
            CommBackend::kMpi);
  EXPECT_THROW(parse_config_text("comm: {backend: gloo}\n"), Error);
  EXPECT_THROW(parse_config_text("comm: {timeout_s: -1}\n"), Error);
  EXPECT_THROW(parse_config_text("comm: {timeouts: 3}\n"), Error);
}

}  // namespace
}  // namespace mmfl::engine::comm
