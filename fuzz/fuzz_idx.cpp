// IDX reader on raw bytes: every input is read or refused with mmfl::Error, never a crash,
// an overflow or an allocation beyond the header's (bounded) dimensions.
#include "fuzz/fuzz_util.h"
#include "mmfl/error.h"
#include "modalities/image/idx.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = mmfl::fuzz::as_file(data, size);
  for (int rank : {1, 3}) {
    try {
      const auto arr = mmfl::modalities::read_idx(path, rank);
      if (int64_t(arr.data.size()) != arr.size()) __builtin_trap();
    } catch (const mmfl::Error&) {
    }
  }
  return 0;
}
