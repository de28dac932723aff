// WordPiece tokenizer on raw bytes, two ways: the input as a vocabulary file (loaded or refused
// with mmfl::Error), and the input as text to tokenize with a small fixed vocabulary (ids in
// range, [CLS] first and [SEP] last, never longer than asked; invalid UTF-8 refused with
// mmfl::Error). Never a crash or a hang.
#include <string>

#include "fuzz/fuzz_util.h"
#include "mmfl/error.h"
#include "modalities/text/wordpiece.h"

namespace {

const mmfl::modalities::WordPieceTokenizer& fixed_vocab() {
  static const auto t = mmfl::modalities::WordPieceTokenizer::from_vocab_text(
      "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\nb\nab\n##b\n##a\n##ab\nthe\nun\n##believ\n##able\n"
      "caf\n##e\n,\n.\n!\n\xe4\xb8\xad\n\xe1\x84\x92\n##\xe1\x85\xa1\n##\xe1\x86\xab\ni\n",
      "fixed");
  return t;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const auto t = mmfl::modalities::WordPieceTokenizer::load(mmfl::fuzz::as_file(data, size));
    if (t.size() < 4 || t.cls_id() < 0 || t.sep_id() < 0) __builtin_trap();
    const auto ids = t.encode(text, 16);
    for (int64_t id : ids)
      if (id < 0 || id >= t.size()) __builtin_trap();
  } catch (const mmfl::Error&) {
  }
  const auto& v = fixed_vocab();
  for (int64_t max_len : {2, 7, 512}) {
    try {
      const auto ids = v.encode(text, max_len);
      if (ids.size() < 2 || int64_t(ids.size()) > max_len || ids.front() != v.cls_id() ||
          ids.back() != v.sep_id())
        __builtin_trap();
      for (int64_t id : ids)
        if (id < 0 || id >= v.size()) __builtin_trap();
    } catch (const mmfl::Error&) {
    }
  }
  return 0;
}
