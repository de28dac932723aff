// The uncased BERT tokenizer of pretrained text models (all-MiniLM-L6-v2): the basic tokenizer
// (clean control characters, space out CJK ideographs, strip accents, lowercase, split on
// whitespace and punctuation) and greedy longest-match WordPiece over the model's vocab.txt, with
// [CLS] ... [SEP] around each text. It follows the Hugging Face fast tokenizer (BertNormalizer,
// BertPreTokenizer, WordPiece), the one sentence-transformers loads, step for step. Known
// departures: the Unicode tables are Python's (Unicode 14; the reference's Rust crates may be
// older, which matters only for recently assigned characters), and NFD's canonical reordering
// of combining marks is not done (the nonspacing ones are dropped anyway; it could matter only
// for a spacing mark with a nonzero combining class next to another mark: rare, untested).
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace mmfl::modalities {

// True if `s` is valid UTF-8; otherwise false with the offset of the first bad byte.
bool is_valid_utf8(const std::string& s, size_t* bad_offset = nullptr);

class WordPieceTokenizer {
 public:
  // A vocabulary file: one token per line, ids by line number; it must hold [PAD], [UNK], [CLS]
  // and [SEP], and no line twice. Refused with the file and line: empty lines (except after the
  // final newline), invalid UTF-8, duplicates.
  static WordPieceTokenizer load(const std::string& vocab_path);
  // The same from the file's text; `origin` names it in errors.
  static WordPieceTokenizer from_vocab_text(const std::string& text, const std::string& origin);

  // The normalized words and punctuation marks of `text` (UTF-8; invalid UTF-8 is an error naming
  // the byte offset), before WordPiece. Special tokens written literally ("[SEP]") are kept whole.
  std::vector<std::string> basic_tokenize(const std::string& text) const;
  // The ids of `text`: [CLS], its word pieces (truncated so that the whole fits), [SEP];
  // at most `max_len` (>= 2) ids.
  std::vector<int64_t> encode(const std::string& text, int64_t max_len) const;

  int64_t size() const { return int64_t(tokens_.size()); }
  const std::string& token(int64_t id) const { return tokens_.at(size_t(id)); }
  int64_t pad_id() const { return pad_; }
  int64_t unk_id() const { return unk_; }
  int64_t cls_id() const { return cls_; }
  int64_t sep_id() const { return sep_; }

  // Words longer than this (in code points) become [UNK] (the reference's limit).
  static constexpr int64_t kMaxCharsPerWord = 100;

 private:
  WordPieceTokenizer() = default;
  void wordpiece(const std::string& word, std::vector<int64_t>* out) const;
  int64_t id_of(const std::string& token) const;

  std::vector<std::string> tokens_;
  std::unordered_map<std::string, int64_t> ids_;
  std::vector<std::pair<std::string, int64_t>> specials_;  // matched literally in the input
  int64_t pad_ = -1, unk_ = -1, cls_ = -1, sep_ = -1;
};

}  // namespace mmfl::modalities
