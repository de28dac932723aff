// Safetensors reader on raw bytes: every input is read or refused with mmfl::Error, never a
// crash, an overflow, a read outside the file or an allocation the file's size does not bound.
#include <vector>

#include "fuzz/fuzz_util.h"
#include "mmfl/error.h"
#include "modalities/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = mmfl::fuzz::as_file(data, size);
  try {
    const mmfl::modalities::SafetensorsFile f(path);
    uint64_t total = 0;
    for (const auto& t : f.header().tensors) {
      // The header's guarantees: each range inside the file, of numel * dtype size bytes.
      if (t.end < t.begin || t.end > size) __builtin_trap();
      if (uint64_t(t.numel()) * uint64_t(mmfl::modalities::dtype_bytes(t.dtype)) != t.end - t.begin)
        __builtin_trap();
      total += t.end - t.begin;
      std::vector<char> buf(t.end - t.begin);
      f.read(t, buf.data());
    }
    if (total > size) __builtin_trap();
  } catch (const mmfl::Error&) {
  }
  return 0;
}
