#include "modalities/text/wordpiece.h"

#include <algorithm>
#include <utility>

#include "mmfl/error.h"
#include "modalities/file_io.h"

namespace mmfl::modalities {

namespace {

struct CodeRange {
  uint32_t first, last;
};

#include "modalities/text/unicode_tables.inc"

template <size_t N>
bool in_ranges(const CodeRange (&r)[N], uint32_t cp) {
  const auto* it = std::upper_bound(std::begin(r), std::end(r), cp,
                                    [](uint32_t c, const CodeRange& x) { return c < x.first; });
  return it != std::begin(r) && cp <= (it - 1)->last;
}

// A flattened (code point, n, n code points) table, indexed for binary search on first use.
class CodeMap {
 public:
  template <size_t N>
  explicit CodeMap(const uint32_t (&flat)[N]) : flat_(flat) {
    for (size_t i = 0; i < N; i += 2 + flat[i + 1])
      index_.emplace_back(flat[i], uint32_t(i));
  }
  // Appends the mapping of `cp` to `out` and returns true, or returns false if it has none.
  bool append(uint32_t cp, std::u32string* out) const {
    const auto it = std::lower_bound(index_.begin(), index_.end(), std::make_pair(cp, 0u));
    if (it == index_.end() || it->first != cp) return false;
    const uint32_t* e = flat_ + it->second;
    out->append(e + 2, e + 2 + e[1]);
    return true;
  }

 private:
  const uint32_t* flat_;
  std::vector<std::pair<uint32_t, uint32_t>> index_;
};

const CodeMap& decompositions() {
  static const CodeMap m(kDecompositions);
  return m;
}
const CodeMap& lowercase() {
  static const CodeMap m(kLowercase);
  return m;
}

// Rust's char::is_whitespace (the White_Space property), as the reference uses.
bool is_whitespace(uint32_t c) {
  return (c >= 0x9 && c <= 0xD) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}
bool is_control(uint32_t c) {
  if (c == '\t' || c == '\n' || c == '\r') return false;
  return in_ranges(kControlRanges, c);
}
bool is_punctuation(uint32_t c) {
  // ASCII symbols such as $ + < = > ^ ` | ~ count as punctuation too (BERT's rule).
  if ((c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) ||
      (c >= 123 && c <= 126))
    return true;
  return in_ranges(kPunctuationRanges, c);
}
// The CJK Unified Ideographs blocks BERT spaces out (not Hangul, Hiragana or Katakana).
bool is_cjk(uint32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
         (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
         (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

// NFD of one code point: Hangul syllables algorithmically (Unicode 3.12), the rest by table.
void decompose(uint32_t c, std::u32string* out) {
  constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
  constexpr uint32_t kVCount = 21, kTCount = 28, kSCount = 19 * kVCount * kTCount;
  if (c >= kSBase && c < kSBase + kSCount) {
    const uint32_t s = c - kSBase;
    out->push_back(kLBase + s / (kVCount * kTCount));
    out->push_back(kVBase + (s % (kVCount * kTCount)) / kTCount);
    if (s % kTCount) out->push_back(kTBase + s % kTCount);
    return;
  }
  if (!decompositions().append(c, out)) out->push_back(c);
}

// Strict UTF-8 decoding: overlong forms, surrogates and code points above U+10FFFF are errors.
// Returns false with the offset of the bad sequence and why it is bad.
bool decode_utf8(const std::string& s, std::u32string* out, size_t* bad, const char** why) {
  out->reserve(s.size());
  size_t i = 0;
  auto fail = [&](size_t at, const char* w) {
    *bad = at;
    *why = w;
    return false;
  };
  while (i < s.size()) {
    const auto b0 = static_cast<unsigned char>(s[i]);
    int n = 0;
    uint32_t c = 0, min = 0;
    if (b0 < 0x80) {
      out->push_back(b0);
      ++i;
      continue;
    } else if ((b0 & 0xE0) == 0xC0) {
      n = 1, c = b0 & 0x1F, min = 0x80;
    } else if ((b0 & 0xF0) == 0xE0) {
      n = 2, c = b0 & 0x0F, min = 0x800;
    } else if ((b0 & 0xF8) == 0xF0) {
      n = 3, c = b0 & 0x07, min = 0x10000;
    } else {
      return fail(i, "not the first byte of a UTF-8 sequence");
    }
    if (i + size_t(n) >= s.size()) return fail(i, "sequence cut by the end of the text");
    for (int k = 1; k <= n; ++k) {
      const auto b = static_cast<unsigned char>(s[i + size_t(k)]);
      if ((b & 0xC0) != 0x80) return fail(i + size_t(k), "expected a continuation byte");
      c = (c << 6) | (b & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
      return fail(i, "overlong form, surrogate or beyond U+10FFFF");
    out->push_back(c);
    i += size_t(n) + 1;
  }
  return true;
}

std::u32string decode_utf8(const std::string& s) {
  std::u32string out;
  size_t bad = 0;
  const char* why = "";
  MMFL_CHECK(decode_utf8(s, &out, &bad, &why), "invalid UTF-8 at byte offset ", bad, " (", why,
             ")");
  return out;
}

void append_utf8(uint32_t c, std::string* out) {
  if (c < 0x80) {
    out->push_back(char(c));
  } else if (c < 0x800) {
    out->push_back(char(0xC0 | (c >> 6)));
    out->push_back(char(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out->push_back(char(0xE0 | (c >> 12)));
    out->push_back(char(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(char(0x80 | (c & 0x3F)));
  } else {
    out->push_back(char(0xF0 | (c >> 18)));
    out->push_back(char(0x80 | ((c >> 12) & 0x3F)));
    out->push_back(char(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(char(0x80 | (c & 0x3F)));
  }
}

std::string to_utf8(std::u32string::const_iterator b, std::u32string::const_iterator e) {
  std::string s;
  for (; b != e; ++b)
    append_utf8(*b, &s);
  return s;
}

// BertNormalizer: clean text, space out CJK, strip accents (NFD, drop Mn), lowercase; in the
// reference's order (accents are stripped before lowercasing).
std::u32string normalize(std::u32string::const_iterator b, std::u32string::const_iterator e) {
  std::u32string out, tmp;
  for (; b != e; ++b) {
    const uint32_t c = *b;
    if (c == 0 || c == 0xFFFD || is_control(c)) continue;
    if (is_whitespace(c)) {
      out.push_back(' ');
      continue;
    }
    tmp.clear();
    decompose(c, &tmp);
    for (uint32_t d : tmp) {
      if (in_ranges(kNonspacingMarkRanges, d)) continue;
      const bool cjk = is_cjk(d);
      if (cjk) out.push_back(' ');
      if (!lowercase().append(d, &out)) out.push_back(d);
      if (cjk) out.push_back(' ');
    }
  }
  return out;
}

// BertPreTokenizer: split on whitespace, and every punctuation mark is a word of its own.
void pre_tokenize(const std::u32string& s, std::vector<std::u32string>* words) {
  std::u32string cur;
  for (uint32_t c : s) {
    if (is_whitespace(c) || is_punctuation(c)) {
      if (!cur.empty()) words->push_back(std::move(cur));
      cur.clear();
      if (!is_whitespace(c)) words->push_back(std::u32string(1, c));
    } else {
      cur.push_back(c);
    }
  }
  if (!cur.empty()) words->push_back(std::move(cur));
}

}  // namespace

bool is_valid_utf8(const std::string& s, size_t* bad_offset) {
  std::u32string out;
  size_t bad = 0;
  const char* why = "";
  if (decode_utf8(s, &out, &bad, &why)) return true;
  if (bad_offset) *bad_offset = bad;
  return false;
}

WordPieceTokenizer WordPieceTokenizer::load(const std::string& vocab_path) {
  // all-MiniLM's vocab.txt is 232 kB; 64 MiB bounds any real vocabulary.
  return from_vocab_text(read_regular_file(vocab_path, uint64_t(64) << 20, "vocabulary"),
                         vocab_path);
}

WordPieceTokenizer WordPieceTokenizer::from_vocab_text(const std::string& text,
                                                       const std::string& origin) {
  WordPieceTokenizer t;
  size_t start = 0;
  int64_t line = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    ++line;
    std::string tok = text.substr(start, end - start);
    MMFL_CHECK(!tok.empty(), "vocabulary '", origin, "' line ", line, " (byte offset ", start,
               ") is empty; every line must hold one token");
    MMFL_CHECK(tok.size() <= 1024, "vocabulary '", origin, "' line ", line, " (byte offset ", start,
               ") is longer than 1024 bytes");
    MMFL_CHECK(is_valid_utf8(tok), "vocabulary '", origin, "' line ", line, " (byte offset ", start,
               ") is not valid UTF-8");
    const auto [it, fresh] = t.ids_.emplace(tok, int64_t(t.tokens_.size()));
    MMFL_CHECK(fresh, "vocabulary '", origin, "' line ", line, ": token '", tok,
               "' already on line ", it->second + 1);
    t.tokens_.push_back(std::move(tok));
    start = end + 1;
  }
  auto need = [&](const char* name) {
    const auto it = t.ids_.find(name);
    MMFL_CHECK(it != t.ids_.end(), "vocabulary '", origin, "' has no ", name,
               " token; a BERT vocabulary needs [PAD], [UNK], [CLS] and [SEP]");
    return it->second;
  };
  t.pad_ = need("[PAD]");
  t.unk_ = need("[UNK]");
  t.cls_ = need("[CLS]");
  t.sep_ = need("[SEP]");
  // The reference matches its special tokens in the raw text, before normalization.
  for (const char* s : {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}) {
    const auto it = t.ids_.find(s);
    if (it != t.ids_.end()) t.specials_.emplace_back(s, it->second);
  }
  return t;
}

int64_t WordPieceTokenizer::id_of(const std::string& token) const {
  const auto it = ids_.find(token);
  return it == ids_.end() ? -1 : it->second;
}

void WordPieceTokenizer::wordpiece(const std::string& word, std::vector<int64_t>* out) const {
  if (!specials_.empty()) {
    for (const auto& [s, id] : specials_)
      if (word == s) {
        out->push_back(id);
        return;
      }
  }
  const std::u32string cps = decode_utf8(word);
  if (int64_t(cps.size()) > kMaxCharsPerWord) {
    out->push_back(unk_);
    return;
  }
  // Greedy longest match from the left; a word with any part not in the vocabulary is [UNK].
  const size_t before = out->size();
  size_t start = 0;
  while (start < cps.size()) {
    int64_t found = -1;
    size_t end = cps.size();
    for (; end > start; --end) {
      std::string piece = (start > 0 ? "##" : "") + to_utf8(cps.begin() + start, cps.begin() + end);
      found = id_of(piece);
      if (found >= 0) break;
    }
    if (found < 0) {
      out->resize(before);
      out->push_back(unk_);
      return;
    }
    out->push_back(found);
    start = end;
  }
}

std::vector<std::string> WordPieceTokenizer::basic_tokenize(const std::string& text) const {
  const std::u32string cps = decode_utf8(text);
  std::vector<std::string> out;
  std::vector<std::u32string> words;
  auto flush = [&](std::u32string::const_iterator b, std::u32string::const_iterator e) {
    words.clear();
    pre_tokenize(normalize(b, e), &words);
    for (const auto& w : words)
      out.push_back(to_utf8(w.begin(), w.end()));
  };
  // Split around special tokens written literally; the text between them is normalized.
  auto seg = cps.begin();
  for (auto it = cps.begin(); it != cps.end();) {
    const std::pair<std::string, int64_t>* hit = nullptr;
    if (*it == '[') {
      for (const auto& sp : specials_) {
        const auto& s = sp.first;
        if (size_t(cps.end() - it) >= s.size() &&
            std::equal(s.begin(), s.end(), it,
                       [](char a, uint32_t b) { return uint32_t(a) == b; })) {
          hit = &sp;
          break;
        }
      }
    }
    if (!hit) {
      ++it;
      continue;
    }
    flush(seg, it);
    out.push_back(hit->first);
    it += std::ptrdiff_t(hit->first.size());
    seg = it;
  }
  flush(seg, cps.end());
  return out;
}

std::vector<int64_t> WordPieceTokenizer::encode(const std::string& text, int64_t max_len) const {
  MMFL_CHECK(max_len >= 2, "tokenizer: max_len ", max_len, " leaves no room for [CLS] and [SEP]");
  std::vector<int64_t> ids = {cls_};
  for (const auto& w : basic_tokenize(text)) {
    wordpiece(w, &ids);
    if (int64_t(ids.size()) >= max_len - 1) break;
  }
  ids.resize(std::min<size_t>(ids.size(), size_t(max_len - 1)));
  ids.push_back(sep_);
  return ids;
}

}  // namespace mmfl::modalities
