// Checkpoints: the round reached and named fp32 tensors, in a small self-checking binary format
// (engine/checkpoint_format.h), written atomically (temp file, fsync, rename), so a crash or a
// full disk mid-write never leaves a checkpoint that looks valid.
#pragma once

#include <torch/types.h>

#include <map>
#include <string>
#include <vector>

namespace mmfl::engine {

struct Checkpoint {
  int64_t round = 0;        // rounds completed
  std::string config_hash;  // of the resolved config, so a resume cannot mix experiments
  std::string vocab_hash;   // of the run's vocab.txt (empty: not recorded)
  std::map<std::string, torch::Tensor> tensors;  // CPU fp32, 1-D
  // Shape each tensor had when saved (load_checkpoint fills it; save_checkpoint reads sizes()).
  std::map<std::string, std::vector<int64_t>> shapes;
};

void save_checkpoint(const std::string& path, const Checkpoint& ckpt);
// Throws mmfl::Error naming the file and what is wrong (offset, CRC) for a damaged file.
// `what` names the kind of file in messages (the state store's spill files share the format).
Checkpoint load_checkpoint(const std::string& path, const std::string& what = "checkpoint");

// Writes `text` to `path` through a temp file and rename (never a half-written file).
void write_file_atomic(const std::string& path, const std::string& text);

std::string fnv1a_hex(const std::string& text);

}  // namespace mmfl::engine
