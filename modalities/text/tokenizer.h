// Word-level tokenizer: lower-cases, splits on anything that is not a letter, digit or '-'.
// The vocabulary is built from training text only and saved in the run directory.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace mmfl::modalities {

class Tokenizer {
 public:
  static constexpr int64_t kPad = 0;  // "<pad>"
  static constexpr int64_t kUnk = 1;  // "<unk>"

  // Vocabulary from `texts`: tokens seen at least `min_count` times, most frequent first (ties
  // alphabetical, so the order is deterministic), after <pad> and <unk>.
  static Tokenizer build(const std::vector<std::string>& texts, int64_t min_count = 1);
  // One token per line, ids in line order; the first two lines must be <pad> and <unk>.
  static Tokenizer load(const std::string& path);
  void save(const std::string& path) const;
  // What save() writes: one token per line.
  std::string text() const;

  static std::vector<std::string> split(const std::string& text);
  // Ids of `text`, truncated or padded with kPad to `max_len`.
  std::vector<int64_t> encode(const std::string& text, int64_t max_len) const;
  int64_t size() const { return static_cast<int64_t>(tokens_.size()); }
  const std::vector<std::string>& tokens() const { return tokens_; }

 private:
  explicit Tokenizer(std::vector<std::string> tokens);
  std::vector<std::string> tokens_;
  std::unordered_map<std::string, int64_t> ids_;
};

}  // namespace mmfl::modalities
