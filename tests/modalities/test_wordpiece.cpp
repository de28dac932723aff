// The BERT tokenizer on a small hand-made vocabulary (the real vocabulary's golden ids are in
// tests/fusion/test_minilm.cpp).
#include <gtest/gtest.h>

#include "mmfl/error.h"
#include "modalities/text/wordpiece.h"

namespace mmfl::modalities {
namespace {

// ids: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4, then the words in order.
const char* kVocab =
    "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nun\n##aff\n##able\naff\nable\n,\n!\n'\nt\ncafe\nnaive\n"
    "\xe4\xb8\xad\n\xe6\x96\x87\na\n##b\n##c\nhello\n$\n";

WordPieceTokenizer vocab() {
  return WordPieceTokenizer::from_vocab_text(kVocab, "test");
}

std::string error_of(const std::string& vocab_text) {
  try {
    WordPieceTokenizer::from_vocab_text(vocab_text, "v.txt");
  } catch (const Error& e) {
    return e.reason();
  }
  return "";
}

TEST(WordPiece, GreedyLongestMatchWithContinuations) {
  const auto t = vocab();
  EXPECT_EQ(t.encode("unaffable", 16), (std::vector<int64_t>{2, 5, 6, 7, 3}));
  // "abc" -> a ##b ##c; a word with a piece not in the vocabulary is one [UNK].
  EXPECT_EQ(t.encode("abc abx", 16), (std::vector<int64_t>{2, 18, 19, 20, 1, 3}));
}

TEST(WordPiece, BasicTokenizerLowercasesStripsAccentsSplitsPunctuation) {
  const auto t = vocab();
  EXPECT_EQ(t.basic_tokenize("Caf\xc3\xa9, NA\xc3\x8f"
                             "VE!  don't $5"),
            (std::vector<std::string>{"cafe", ",", "naive", "!", "don", "'", "t", "$", "5"}));
  // A combining accent (U+0301) after a plain letter goes too; control characters vanish;
  // other whitespace (NBSP, ideographic space, tabs) separates.
  EXPECT_EQ(t.basic_tokenize("cafe\xcc\x81\x01\x7f\tx\xc2\xa0y\xe3\x80\x80z"),
            (std::vector<std::string>{"cafe", "x", "y", "z"}));
  // CJK ideographs are words of their own; Hangul is decomposed into jamo (as BERT does).
  EXPECT_EQ(t.basic_tokenize("\xe4\xb8\xad\xe6\x96\x87"
                             "ab"),
            (std::vector<std::string>{"\xe4\xb8\xad", "\xe6\x96\x87", "ab"}));
  EXPECT_EQ(t.basic_tokenize("\xed\x95\x9c"),
            (std::vector<std::string>{"\xe1\x84\x92\xe1\x85\xa1\xe1\x86\xab"}));
  EXPECT_EQ(t.encode("\xe4\xb8\xad\xe6\x96\x87", 8), (std::vector<int64_t>{2, 16, 17, 3}));
}

TEST(WordPiece, SpecialTokensWrittenLiterallyAreKept) {
  const auto t = vocab();
  EXPECT_EQ(t.encode("hello[SEP]a [MASK] [sep]", 16),
            (std::vector<int64_t>{2, 21, 3, 18, 4, 1, 1, 1, 3}));
}

TEST(WordPiece, LongWordsAreUnknownAndTextsAreTruncated) {
  const auto t = vocab();
  // 101 code points: [UNK] without trying pieces; 100 are tokenized (then truncated).
  EXPECT_EQ(t.encode("a" + std::string(100, 'b'), 4), (std::vector<int64_t>{2, 1, 3}));
  EXPECT_EQ(t.encode("a" + std::string(99, 'b'), 4), (std::vector<int64_t>{2, 18, 19, 3}));
  std::string ok = "a";
  for (int i = 0; i < 99; ++i)
    ok += "c";  // 100 code points: a ##c ##c ... is still tokenized
  EXPECT_EQ(t.encode(ok, 200).size(), 102u);
  EXPECT_EQ(t.encode(ok + "c", 200), (std::vector<int64_t>{2, 1, 3}));
  // [CLS] + pieces + [SEP] never exceed max_len.
  EXPECT_EQ(t.encode("hello hello hello", 4), (std::vector<int64_t>{2, 21, 21, 3}));
  EXPECT_EQ(t.encode("hello", 2), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(t.encode("", 8), (std::vector<int64_t>{2, 3}));
  EXPECT_THROW(t.encode("hello", 1), Error);
}

TEST(WordPiece, InvalidUtf8IsAnErrorWithTheOffset) {
  const auto t = vocab();
  for (const std::string bad : {std::string("ab\xff"), std::string("ab\xc3"),
                                std::string("ab\xc0\x80"), std::string("ab\xed\xa0\x80")}) {
    try {
      t.encode(bad, 8);
      ADD_FAILURE() << "accepted invalid UTF-8";
    } catch (const Error& e) {
      EXPECT_NE(e.reason().find("invalid UTF-8 at byte offset 2"), std::string::npos) << e.reason();
    }
  }
  size_t at = 0;
  EXPECT_FALSE(is_valid_utf8("abc\x80", &at));
  EXPECT_EQ(at, 3u);
  EXPECT_TRUE(is_valid_utf8("\xf0\x9f\x99\x82"));
}

TEST(WordPiece, BadVocabulariesAreRefusedWithTheLine) {
  EXPECT_NE(error_of("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[UNK]\n")
                .find("line 5: token '[UNK]' already on line 2"),
            std::string::npos);
  EXPECT_NE(error_of("[PAD]\n\n[UNK]\n[CLS]\n[SEP]\n").find("line 2 (byte offset 6) is empty"),
            std::string::npos);
  EXPECT_NE(error_of("[PAD]\n[CLS]\n[SEP]\n").find("has no [UNK] token"), std::string::npos);
  EXPECT_NE(error_of("[PAD]\n[UNK]\n[CLS]\n[SEP]\na\xff\n").find("line 5"), std::string::npos);
  EXPECT_EQ(error_of("[PAD]\n[UNK]\n[CLS]\n[SEP]"), "");  // no final newline is fine
  EXPECT_THROW(WordPieceTokenizer::load("/nonexistent/vocab.txt"), Error);
}

}  // namespace
}  // namespace mmfl::modalities
