#include "modalities/text/tokenizer.h"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <map>

#include "mmfl/error.h"

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
  std::ifstream in(path);
  MMFL_CHECK(in.good(), "cannot open vocabulary '", path, "'");
  std::vector<std::string> tokens;
  for (std::string line; std::getline(in, line);)
    tokens.push_back(line);
  MMFL_CHECK(tokens.size() >= 2 && tokens[0] == "<pad>" && tokens[1] == "<unk>", "vocabulary '",
             path, "' must start with the lines <pad> and <unk>");
  return Tokenizer(std::move(tokens));
}

void Tokenizer::save(const std::string& path) const {
  std::ofstream out(path);
  MMFL_CHECK(out.good(), "cannot write vocabulary '", path, "'");
  for (const auto& t : tokens_)
    out << t << '\n';
  MMFL_CHECK(out.good(), "failed writing vocabulary '", path, "'");
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
