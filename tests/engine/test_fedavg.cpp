#include <gtest/gtest.h>
#include <torch/torch.h>

#include "engine/strategy.h"

namespace mmfl::engine {
namespace {

GlobalModel tiny_model() {
  const modalities::ImageEncoderConfig img{modalities::ImageEncoderKind::kMlp, 4, 1, 3};
  const modalities::TextEncoderConfig txt{modalities::TextEncoderKind::kBow, 4, 0, 1, 3};
  return GlobalModel{make_image_tower(img, 2, 2, 2), make_text_tower(txt, 6, 4, 2)};
}

Update update(int64_t id, ClientKind kind, int64_t samples, torch::Tensor img, torch::Tensor txt) {
  Update u;
  u.client_id = id;
  u.kind = kind;
  u.num_samples = samples;
  if (img.defined()) u.up.dense["image"] = img;
  if (txt.defined()) u.up.dense["text"] = txt;
  return u;
}

TEST(FedAvg, ExactOnSmallIntegersWithUnequalWeights) {
  auto g = tiny_model();
  const int64_t pi = g.image->num_params(), pt = g.text->num_params();
  const auto j = torch::arange(pi, torch::kFloat32);
  const auto a = torch::fmod(j, 5.0), b = torch::fmod(j, 3.0) * 2 - 3, c = torch::fmod(j, 7.0);
  const auto t1 = torch::fmod(torch::arange(pt, torch::kFloat32), 4.0);
  const auto text_before = g.text->flat();
  // Samples 1, 3 and 4: weights 1/8, 3/8, 4/8, exact in binary.
  std::vector<Update> ups = {update(0, ClientKind::kImage, 1, a, {}),
                             update(1, ClientKind::kPaired, 3, b, t1),
                             update(2, ClientKind::kImage, 4, c, {})};
  const auto rep = FedAvg().aggregate(ups, g);
  EXPECT_EQ(rep.image_clients, 3);
  EXPECT_EQ(rep.text_clients, 1);
  const auto expect = (a * 1 + b * 3 + c * 4) / 8;
  EXPECT_TRUE(torch::equal(g.image->flat(), expect));
  // The text tower is the mean over text holders only: here client 1 alone.
  EXPECT_TRUE(torch::equal(g.text->flat(), t1));
  EXPECT_FALSE(torch::equal(g.text->flat(), text_before));
}

TEST(FedAvg, TowerWithoutHoldersIsKept) {
  auto g = tiny_model();
  const auto text_before = g.text->flat();
  const auto img = torch::ones({g.image->num_params()});
  const auto rep = FedAvg().aggregate({update(3, ClientKind::kImage, 10, img, {})}, g);
  EXPECT_EQ(rep.text_clients, 0);
  EXPECT_TRUE(torch::equal(g.text->flat(), text_before));
  EXPECT_TRUE(torch::equal(g.image->flat(), img));
}

TEST(FedAvg, NonFiniteClientIsSkippedAndReported) {
  auto g = tiny_model();
  const int64_t pi = g.image->num_params();
  auto bad = torch::ones({pi});
  bad[2] = std::numeric_limits<float>::quiet_NaN();
  const auto good = torch::full({pi}, 3.0);
  const auto rep = FedAvg().aggregate(
      {update(7, ClientKind::kImage, 5, bad, {}), update(8, ClientKind::kImage, 3, good, {})}, g);
  EXPECT_EQ(rep.skipped, (std::vector<int64_t>{7}));
  EXPECT_EQ(rep.image_clients, 1);
  EXPECT_TRUE(torch::equal(g.image->flat(), good));
}

}  // namespace
}  // namespace mmfl::engine
