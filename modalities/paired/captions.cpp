#include "modalities/paired/captions.h"

#include <algorithm>
#include <cmath>
#include <unordered_map>

#include "mmfl/error.h"

namespace mmfl::modalities {

namespace {

constexpr int kForeground = 25;  // pixel value above which a pixel belongs to the item

// splitmix64: a fast, well-mixed hash for phrasing choices.
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

template <size_t N>
const char* pick(const std::array<const char*, N>& options, uint64_t& h) {
  h = mix(h);
  return options[h % N];
}

using Words = std::array<const char*, 3>;
const std::array<Words, 10> kClassWords = {{{"t-shirt", "top", "tee"},
                                            {"trousers", "pants", "slacks"},
                                            {"pullover", "sweater", "jumper"},
                                            {"dress", "frock", "gown"},
                                            {"coat", "jacket", "overcoat"},
                                            {"sandal", "strappy sandal", "open shoe"},
                                            {"shirt", "button-up shirt", "blouse"},
                                            {"sneaker", "trainer", "running shoe"},
                                            {"bag", "handbag", "purse"},
                                            {"ankle boot", "boot", "bootie"}}};
const std::array<Words, 3> kBrightWords = {{{"dark", "dim", "deep-toned"},
                                            {"mid-toned", "medium-toned", "greyish"},
                                            {"bright", "light", "pale"}}};
const std::array<Words, 3> kSizeWords = {{{"small", "compact", "little"},
                                          {"medium-sized", "mid-sized", "average-sized"},
                                          {"large", "big", "bulky"}}};
const std::array<Words, 3> kWidthWords = {{{"slim", "narrow", "slender"},
                                           {"regular-width", "standard-width", "normal-width"},
                                           {"wide", "broad", "roomy"}}};
const std::array<Words, 2> kSymWords = {
    {{"symmetric", "balanced", "even"}, {"asymmetric", "lopsided", "uneven"}}};
const std::array<Words, 2> kTexWords = {
    {{"plain", "solid", "smooth"}, {"patterned", "textured", "detailed"}}};

float quantile(std::vector<float> v, double q) {
  if (v.empty()) return 0.f;
  const size_t i = std::min(v.size() - 1, size_t(q * double(v.size())));
  std::nth_element(v.begin(), v.begin() + long(i), v.end());
  return v[i];
}

float field(const ImageAttributes& a, int which) {
  switch (which) {
    case 0:
      return a.brightness;
    case 1:
      return a.area;
    case 2:
      return a.aspect;
    case 3:
      return a.asymmetry;
    case 4:
      return a.texture;
    default:
      MMFL_FAIL("attribute index ", which, " out of range 0..4");
  }
}

constexpr std::array<int, 5> kLevels = {3, 3, 3, 2, 2};

}  // namespace

ImageAttributes measure_attributes(const uint8_t* px, int64_t rows, int64_t cols) {
  ImageAttributes a;
  int64_t r0 = rows, r1 = -1, c0 = cols, c1 = -1, count = 0;
  double sum = 0, sum2 = 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const int v = px[r * cols + c];
      if (v <= kForeground) continue;
      ++count;
      sum += v / 255.0;
      sum2 += (v / 255.0) * (v / 255.0);
      r0 = std::min(r0, r);
      r1 = std::max(r1, r);
      c0 = std::min(c0, c);
      c1 = std::max(c1, c);
    }
  }
  if (count == 0) return a;
  const double mean = sum / double(count);
  a.brightness = float(mean);
  a.area = float(double(count) / double(rows * cols));
  a.aspect = float(double(c1 - c0 + 1) / double(r1 - r0 + 1));
  a.texture = float(std::sqrt(std::max(0.0, sum2 / double(count) - mean * mean)) / mean);
  // Mirror about the bounding box's vertical axis, so position does not count as asymmetry.
  double diff = 0;
  for (int64_t r = r0; r <= r1; ++r)
    for (int64_t c = c0; c <= c1; ++c)
      diff += std::abs(int(px[r * cols + c]) - int(px[r * cols + (c0 + c1 - c)])) / 255.0;
  a.asymmetry = float(diff / double((r1 - r0 + 1) * (c1 - c0 + 1)) / mean);
  return a;
}

int64_t AttributeLevels::key(int label) const {
  return ((((int64_t(label) * 3 + brightness) * 3 + size) * 3 + width) * 2 + symmetry) * 2 +
         texture;
}

CaptionModel CaptionModel::fit(const std::vector<ImageAttributes>& attrs,
                               const std::vector<uint8_t>& labels) {
  MMFL_CHECK(attrs.size() == labels.size(), "caption model: ", attrs.size(), " attributes but ",
             labels.size(), " labels");
  CaptionModel m;
  for (int cls = 0; cls < kNumClasses; ++cls) {
    for (int f = 0; f < 5; ++f) {
      std::vector<float> v;
      for (size_t i = 0; i < attrs.size(); ++i)
        if (labels[i] == cls) v.push_back(field(attrs[i], f));
      if (kLevels[f] == 3) {
        m.cuts_[cls][f] = {quantile(v, 1.0 / 3), quantile(v, 2.0 / 3)};
      } else {
        const float med = quantile(v, 0.5);
        m.cuts_[cls][f] = {med, med};
      }
    }
  }
  return m;
}

AttributeLevels CaptionModel::levels(const ImageAttributes& a, int label) const {
  MMFL_CHECK(label >= 0 && label < kNumClasses, "label ", label, " outside 0..9");
  auto level = [&](int f) {
    const auto& c = cuts_[label][f];
    const float x = field(a, f);
    if (kLevels[f] == 2) return x > c[0] ? 1 : 0;
    return x <= c[0] ? 0 : (x <= c[1] ? 1 : 2);
  };
  return AttributeLevels{level(0), level(1), level(2), level(3), level(4)};
}

std::string CaptionModel::caption(int label, const AttributeLevels& lv, uint64_t seed,
                                  uint64_t salt, int64_t index) {
  uint64_t h = mix(seed ^ mix(salt ^ mix(uint64_t(index))));
  const std::string cls = pick(kClassWords.at(size_t(label)), h);
  const std::string b = pick(kBrightWords.at(size_t(lv.brightness)), h);
  const std::string s = pick(kSizeWords.at(size_t(lv.size)), h);
  const std::string w = pick(kWidthWords.at(size_t(lv.width)), h);
  const std::string y = pick(kSymWords.at(size_t(lv.symmetry)), h);
  const std::string t = pick(kTexWords.at(size_t(lv.texture)), h);
  h = mix(h);
  switch (h % 4) {
    case 0:
      return "a " + b + " " + s + " " + w + " " + cls + ", " + y + " and " + t;
    case 1:
      return s + " " + cls + " in " + b + " tones, " + w + " cut, " + y + ", " + t;
    case 2:
      return "photo of a " + t + " " + y + " " + cls + " that is " + b + ", " + s + " and " + w;
    case 3:
      return cls + ": " + b + ", " + w + ", " + s + ", " + t + ", " + y;
    default:
      MMFL_FAIL("caption template ", h % 4, " out of range");
  }
}

const std::array<const char*, CaptionModel::kNumClasses>& CaptionModel::class_names() {
  static const std::array<const char*, kNumClasses> names = {
      "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
      "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  return names;
}

double oracle_recall_at(const std::vector<int64_t>& keys, int k) {
  MMFL_CHECK(!keys.empty() && k >= 1, "oracle recall needs a non-empty set and K >= 1");
  std::unordered_map<int64_t, int64_t> count;
  for (int64_t key : keys)
    ++count[key];
  double total = 0;
  for (int64_t key : keys)
    total += std::min(1.0, double(k) / double(count[key]));
  return total / double(keys.size());
}

}  // namespace mmfl::modalities
