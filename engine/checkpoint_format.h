// The checkpoint file format without LibTorch, so that its parser can be fuzzed on its own:
//   magic "MMFLCKPT" | u32 version | u64 header length | JSON header | fp32 data | u32 CRC-32
// The header lists each tensor's name, shape and byte offset into the data, in strictly
// ascending name order; every field is checked against the file, not trusted after the CRC.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mmfl::engine {

struct CheckpointEntry {
  std::string name;
  std::vector<int64_t> shape;
  uint64_t offset = 0;  // byte offset of the first element in the file
  uint64_t numel = 0;
};

struct CheckpointLayout {
  int64_t round = 0;
  std::string config_hash;
  std::string vocab_hash;                // optional in the header (absent: empty)
  std::vector<CheckpointEntry> tensors;  // ascending by name, contiguous, covering the data
};

// Parses and checks `bytes` (the whole file; `path` and `what`, the kind of file, only name it in
// messages). Throws mmfl::Error naming the path, the byte offset and what is wrong.
CheckpointLayout parse_checkpoint(const std::string& bytes, const std::string& path,
                                  const std::string& what = "checkpoint");

// The file for `layout` whose tensors' fp32 data is `data[i]` (numel floats each); fills in the
// offsets.
std::string serialize_checkpoint(CheckpointLayout layout, const std::vector<const float*>& data);

// Checkpoint files are exactly round_NNNNNN.ckpt (six or more digits); anything else in
// checkpoints/ is not one. Returns the round, or -1 for any other name.
int64_t checkpoint_round_from_name(const std::string& filename);

}  // namespace mmfl::engine
