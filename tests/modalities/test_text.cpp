#include <gtest/gtest.h>

#include <filesystem>

#include "mmfl/error.h"
#include "modalities/text/tokenizer.h"

namespace mmfl::modalities {
namespace {

TEST(Tokenizer, SplitsLowercasesAndKeepsHyphens) {
  EXPECT_EQ(Tokenizer::split("A Bright, mid-toned T-shirt!"),
            (std::vector<std::string>{"a", "bright", "mid-toned", "t-shirt"}));
}

TEST(Tokenizer, VocabularyByFrequencyThenAlphabet) {
  const auto t = Tokenizer::build({"b a c", "a b", "a"});
  EXPECT_EQ(t.tokens(), (std::vector<std::string>{"<pad>", "<unk>", "a", "b", "c"}));
  EXPECT_EQ(t.encode("c a zzz", 5), (std::vector<int64_t>{4, 2, Tokenizer::kUnk, 0, 0}));
  EXPECT_EQ(t.encode("a a a a", 2), (std::vector<int64_t>{2, 2}));
}

TEST(Tokenizer, SaveLoadRoundTrip) {
  const auto t = Tokenizer::build({"dark boot", "bright bag"});
  const auto p = std::filesystem::temp_directory_path() / "mmfl_vocab_test.txt";
  t.save(p.string());
  const auto u = Tokenizer::load(p.string());
  EXPECT_EQ(t.tokens(), u.tokens());
  std::filesystem::remove(p);
  EXPECT_THROW(Tokenizer::load(p.string()), Error);
}

}  // namespace
}  // namespace mmfl::modalities
