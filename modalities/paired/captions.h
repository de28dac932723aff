// FashionMNIST-Captions: each real FashionMNIST image paired with a caption generated from its
// class and from attributes measured on its own pixels, so image<->text retrieval depends on the
// instance and not only on the class. Deterministic by seed.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace mmfl::modalities {

// Raw measurements of one 28x28 (or any size) grayscale image, pixels 0..255.
struct ImageAttributes {
  float brightness = 0;  // mean intensity of foreground pixels, 0..1
  float area = 0;        // foreground pixels / all pixels
  float aspect = 0;      // bounding-box width / height
  float asymmetry = 0;   // mean |x - mirror(x)| over the box / mean foreground intensity
  float texture = 0;     // std of foreground intensity / mean foreground intensity
};

ImageAttributes measure_attributes(const uint8_t* pixels, int64_t rows, int64_t cols);

// Attribute levels that go into the caption.
struct AttributeLevels {
  int brightness = 0;  // 0 dark, 1 mid, 2 bright
  int size = 0;        // 0 small, 1 medium, 2 large
  int width = 0;       // 0 slim, 1 regular, 2 wide
  int symmetry = 0;    // 0 symmetric, 1 asymmetric
  int texture = 0;     // 0 plain, 1 patterned
  // One integer per (class, levels) tuple: two samples with the same key get captions that no
  // reader could tell apart beyond phrasing.
  int64_t key(int label) const;
};

// Per-class quantile thresholds fitted on the training split (tertiles for three-level
// attributes, medians for two-level ones), so every level is populated within every class.
class CaptionModel {
 public:
  static constexpr int kNumClasses = 10;
  static CaptionModel fit(const std::vector<ImageAttributes>& attrs,
                          const std::vector<uint8_t>& labels);
  AttributeLevels levels(const ImageAttributes& a, int label) const;
  // Caption for sample `index` of a split; the phrasing and synonyms are chosen by a hash of
  // (seed, salt, index), so a split's captions are fixed by the seed.
  static std::string caption(int label, const AttributeLevels& lv, uint64_t seed, uint64_t salt,
                             int64_t index);
  static const std::array<const char*, kNumClasses>& class_names();

 private:
  // [class][attribute][threshold]; three-level attributes use two thresholds.
  std::array<std::array<std::array<float, 2>, 5>, kNumClasses> cuts_{};
};

// Recall@K that an oracle knowing class and attribute levels reaches on a retrieval set: it ranks
// the m items that share the query's key first, in random order, so its expected R@K is
// min(1, K / m), averaged over queries. The ceiling of caption-based retrieval.
double oracle_recall_at(const std::vector<int64_t>& keys, int k);

}  // namespace mmfl::modalities
