#include <gtest/gtest.h>

#include <set>
#include <vector>

#include "modalities/paired/captions.h"

namespace mmfl::modalities {
namespace {

// A 28x28 image with a filled rectangle of value `v` over rows [r0, r1) and cols [c0, c1).
std::vector<uint8_t> rect(int r0, int r1, int c0, int c1, uint8_t v) {
  std::vector<uint8_t> px(28 * 28, 0);
  for (int r = r0; r < r1; ++r)
    for (int c = c0; c < c1; ++c)
      px[size_t(r * 28 + c)] = v;
  return px;
}

TEST(Captions, AttributesFollowThePixels) {
  const auto small_dim = measure_attributes(rect(10, 18, 10, 18, 80).data(), 28, 28);
  const auto big_bright = measure_attributes(rect(2, 26, 2, 26, 240).data(), 28, 28);
  EXPECT_LT(small_dim.area, big_bright.area);
  EXPECT_LT(small_dim.brightness, big_bright.brightness);
  EXPECT_NEAR(big_bright.brightness, 240 / 255.0, 1e-5);
  EXPECT_NEAR(small_dim.area, 64.0 / 784.0, 1e-6);
  const auto wide = measure_attributes(rect(10, 14, 2, 26, 200).data(), 28, 28);
  EXPECT_NEAR(wide.aspect, 24.0 / 4.0, 1e-5);
  EXPECT_NEAR(wide.asymmetry, 0.0, 1e-6);  // a rectangle is its own mirror image
  EXPECT_NEAR(wide.texture, 0.0, 1e-6);    // one intensity: no texture
  auto lopsided = rect(10, 14, 2, 26, 200);
  for (int r = 10; r < 14; ++r)
    lopsided[size_t(r * 28 + 3)] = 30;
  EXPECT_GT(measure_attributes(lopsided.data(), 28, 28).asymmetry, 0.01);
  EXPECT_GT(measure_attributes(lopsided.data(), 28, 28).texture, 0.01);
}

TEST(Captions, LevelsUseThresholdsFittedPerClass) {
  std::vector<ImageAttributes> attrs;
  std::vector<uint8_t> labels;
  for (int i = 0; i < 90; ++i) {
    ImageAttributes a;
    a.brightness = float(i) / 90.f;
    a.area = float(89 - i) / 90.f;
    attrs.push_back(a);
    labels.push_back(uint8_t(i % 2));
  }
  const auto m = CaptionModel::fit(attrs, labels);
  EXPECT_EQ(m.levels(attrs[0], 0).brightness, 0);
  EXPECT_EQ(m.levels(attrs[88], 0).brightness, 2);
  EXPECT_EQ(m.levels(attrs[0], 0).size, 2);
  EXPECT_EQ(m.levels(attrs[88], 0).size, 0);
}

TEST(Captions, DeterministicBySeedAndVariedInPhrasing) {
  AttributeLevels lv{2, 0, 1, 1, 0};
  EXPECT_EQ(CaptionModel::caption(9, lv, 7, 0, 123), CaptionModel::caption(9, lv, 7, 0, 123));
  std::set<std::string> phrasings;
  for (int i = 0; i < 64; ++i)
    phrasings.insert(CaptionModel::caption(9, lv, 7, 0, i));
  EXPECT_GT(phrasings.size(), 8u);
  std::set<std::string> other_seed;
  int differ = 0;
  for (int i = 0; i < 64; ++i)
    differ += CaptionModel::caption(9, lv, 7, 0, i) != CaptionModel::caption(9, lv, 8, 0, i);
  EXPECT_GT(differ, 32);
  // Levels change the words: a dark and a bright item never share a caption.
  AttributeLevels dark = lv;
  dark.brightness = 0;
  for (int i = 0; i < 64; ++i)
    EXPECT_NE(CaptionModel::caption(9, lv, 7, 0, i), CaptionModel::caption(9, dark, 7, 0, i));
}

TEST(Captions, KeysAreDistinctPerTuple) {
  std::set<int64_t> keys;
  for (int c = 0; c < 10; ++c)
    for (int b = 0; b < 3; ++b)
      for (int s = 0; s < 3; ++s)
        for (int w = 0; w < 3; ++w)
          for (int y = 0; y < 2; ++y)
            for (int t = 0; t < 2; ++t)
              keys.insert(AttributeLevels{b, s, w, y, t}.key(c));
  EXPECT_EQ(keys.size(), 10u * 3 * 3 * 3 * 2 * 2);
}

TEST(Captions, OracleRecallByHand) {
  // Keys: {1, 1, 2, 3, 3, 3}: R@1 = (1/2 + 1/2 + 1 + 1/3 * 3) / 6 = 0.5.
  const std::vector<int64_t> keys = {1, 1, 2, 3, 3, 3};
  EXPECT_DOUBLE_EQ(oracle_recall_at(keys, 1), 0.5);
  EXPECT_DOUBLE_EQ(oracle_recall_at(keys, 2), (1 + 1 + 1 + 3 * (2.0 / 3)) / 6);
  EXPECT_DOUBLE_EQ(oracle_recall_at(keys, 5), 1.0);
}

}  // namespace
}  // namespace mmfl::modalities
