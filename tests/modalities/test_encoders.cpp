#include <gtest/gtest.h>
#include <torch/torch.h>

#include "mmfl/error.h"
#include "modalities/image/encoders.h"
#include "modalities/text/encoders.h"

namespace mmfl::modalities {
namespace {

TEST(Encoders, ImageShapes) {
  for (auto kind : {ImageEncoderKind::kCnn, ImageEncoderKind::kMlp}) {
    for (int64_t depth : {0, 1, 3}) {
      ImageEncoderConfig c{kind, 8, depth, 24};
      auto e = make_image_encoder(c, 28, 28);
      EXPECT_EQ(e->forward(torch::randn({5, 1, 28, 28})).sizes(), (torch::IntArrayRef{5, 24}))
          << to_string(kind) << " depth " << depth;
    }
  }
}

TEST(Encoders, TextShapesAndPaddingInvariance) {
  for (auto kind : {TextEncoderKind::kBow, TextEncoderKind::kTransformer}) {
    TextEncoderConfig c{kind, 16, 1, 4, 12};
    auto e = make_text_encoder(c, 50, 8);
    e->eval();
    auto ids = torch::tensor({{5, 6, 7, 0, 0, 0, 0, 0}}, torch::kInt64);
    auto longer = torch::tensor({{5, 6, 7, 0, 0, 0}}, torch::kInt64);
    const auto a = e->forward(ids), b = e->forward(longer);
    EXPECT_EQ(a.sizes(), (torch::IntArrayRef{1, 12}));
    // Pads are masked out of pooling (and attention): more padding gives the same features.
    EXPECT_TRUE(torch::allclose(a, b, 1e-5, 1e-5)) << to_string(kind);
  }
}

TEST(Encoders, BadConfigIsRefused) {
  TextEncoderConfig c{TextEncoderKind::kTransformer, 10, 1, 4, 12};
  EXPECT_THROW(make_text_encoder(c, 50, 8), Error);
  EXPECT_THROW(image_encoder_kind_from("resnet"), Error);
}

}  // namespace
}  // namespace mmfl::modalities
