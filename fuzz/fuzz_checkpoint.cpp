// Checkpoint parser. The harness appends the input's CRC-32, so inputs pass the checksum and
// the fuzzer reaches the header and layout checks behind it (what a forged file would reach).
#include <zlib.h>

#include <string>

#include "engine/checkpoint_format.h"
#include "mmfl/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string bytes(reinterpret_cast<const char*>(data), size);
  const uint32_t crc = uint32_t(crc32(0L, data, uInt(size)));
  bytes.append(reinterpret_cast<const char*>(&crc), 4);
  try {
    const auto layout = mmfl::engine::parse_checkpoint(bytes, "fuzz");
    for (const auto& t : layout.tensors)  // every tensor must lie inside the data
      if (t.offset + t.numel * 4 > bytes.size() - 4) __builtin_trap();
  } catch (const mmfl::Error&) {
  }
  (void)mmfl::engine::checkpoint_round_from_name(std::string(bytes, 0, size < 40 ? size : 40));
  return 0;
}
