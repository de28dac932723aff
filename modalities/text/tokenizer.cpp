#include "modalities/text/tokenizer.h"

#include <algorithm>
#include <cctype>
#include <map>

#include "mmfl/error.h"
#include "modalities/file_io.h"

namespace mmfl::modalities {

Tokenizer::Tokenizer(std::vector<std::string> tokens) : tokens_(std::move(tokens)) {
  for (size_t i = 0; i < tokens_.size(); ++i)
    ids_.emplace(tokens_[i], int64_t(i));
}

std::vector<std::string> Tokenizer::split(const std::string& text) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (std::isalnum(u) || c == '-') {
      cur.push_back(static_cast<char>(std::tolower(u)));
    } else if (!cur.empty()) {
      out.push_back(std::move(cur));
      cur.clear();
    }
  }
  if (!cur.empty()) out.push_back(std::move(cur));
  return out;
}

Tokenizer Tokenizer::build(const std::vector<std::string>& texts, int64_t min_count) {
  std::map<std::string, int64_t> counts;
  for (const auto& t : texts)
    for (auto& w : split(t))
      ++counts[w];
  std::vector<std::pair<std::string, int64_t>> items(counts.begin(), counts.end());
  std::stable_sort(items.begin(), items.end(),
                   [](const auto& a, const auto& b) { return a.second > b.second; });
  std::vector<std::string> tokens = {"<pad>", "<unk>"};
  for (auto& [w, c] : items)
    if (c >= min_count) tokens.push_back(w);
  return Tokenizer(std::move(tokens));
}

Tokenizer Tokenizer::load(const std::string& path) {
  // A vocabulary of FashionMNIST-Captions is a few kB; 64 MiB bounds any real one.
  const std::string text = read_regular_file(path, uint64_t(64) << 20, "vocabulary");
  std::vector<std::string> tokens;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    tokens.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  MMFL_CHECK(tokens.size() >= 2 && tokens[0] == "<pad>" && tokens[1] == "<unk>", "vocabulary '",
             path, "' must start with the lines <pad> and <unk>");
  return Tokenizer(std::move(tokens));
}

std::string Tokenizer::text() const {
  std::string text;
  for (const auto& t : tokens_)
    text += t + '\n';
  return text;
}

void Tokenizer::save(const std::string& path) const {
  write_file_atomic(path, text());
}

std::vector<int64_t> Tokenizer::encode(const std::string& text, int64_t max_len) const {
  std::vector<int64_t> ids;
  ids.reserve(size_t(max_len));
  for (auto& w : split(text)) {
    if (int64_t(ids.size()) == max_len) break;
    auto it = ids_.find(w);
    ids.push_back(it == ids_.end() ? kUnk : it->second);
  }
  ids.resize(size_t(max_len), kPad);
  return ids;
}

}  // namespace mmfl::modalities
