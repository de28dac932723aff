// IDX reader through zlib's gzip path: the input is a deflate stream (and whatever follows it)
// behind a fixed gzip header, so the fuzzer explores compressed data, not header bytes.
#include <vector>

#include "fuzz/fuzz_util.h"
#include "mmfl/error.h"
#include "modalities/image/idx.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // ID1 ID2 CM=deflate FLG=0 MTIME=0 XFL=0 OS=unix
  std::vector<uint8_t> gz = {0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 3};
  gz.insert(gz.end(), data, data + size);
  const std::string path = mmfl::fuzz::as_file(gz.data(), gz.size());
  for (int rank : {1, 3}) {
    try {
      const auto arr = mmfl::modalities::read_idx(path, rank);
      if (int64_t(arr.data.size()) != arr.size()) __builtin_trap();
    } catch (const mmfl::Error&) {
    }
  }
  return 0;
}
