#include "engine/checkpoint.h"

#include <cstdio>
#include <cstring>

#include "engine/checkpoint_format.h"
#include "mmfl/error.h"
#include "modalities/file_io.h"

namespace mmfl::engine {

std::string fnv1a_hex(const std::string& text) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : text)
    h = (h ^ c) * 1099511628211ull;
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

void write_file_atomic(const std::string& path, const std::string& text) {
  modalities::write_file_atomic(path, text);
}

void save_checkpoint(const std::string& path, const Checkpoint& ckpt) {
  CheckpointLayout layout;
  layout.round = ckpt.round;
  layout.config_hash = ckpt.config_hash;
  layout.vocab_hash = ckpt.vocab_hash;
  std::vector<torch::Tensor> flat;
  std::vector<const float*> data;
  for (const auto& [name, t] : ckpt.tensors) {  // std::map: ascending names, as the format wants
    flat.push_back(t.detach().to(torch::kCPU, torch::kFloat32).contiguous().reshape({-1}));
    CheckpointEntry e;
    e.name = name;
    e.shape = t.sizes().vec();
    e.numel = uint64_t(flat.back().numel());
    layout.tensors.push_back(std::move(e));
    data.push_back(flat.back().data_ptr<float>());
  }
  modalities::write_file_atomic(path, serialize_checkpoint(std::move(layout), data));
}

Checkpoint load_checkpoint(const std::string& path, const std::string& what) {
  // 64 GiB: far above any model mmfl trains, and refused before a byte is allocated.
  const std::string bytes = modalities::read_regular_file(path, uint64_t(64) << 30, what.c_str());
  const CheckpointLayout layout = parse_checkpoint(bytes, path, what);
  Checkpoint ck;
  ck.round = layout.round;
  ck.config_hash = layout.config_hash;
  ck.vocab_hash = layout.vocab_hash;
  for (const auto& e : layout.tensors) {
    auto tensor = torch::empty({int64_t(e.numel)}, torch::kFloat32);
    std::memcpy(tensor.data_ptr<float>(), bytes.data() + e.offset, e.numel * 4);
    ck.tensors[e.name] = tensor;
    ck.shapes[e.name] = e.shape;
  }
  return ck;
}

}  // namespace mmfl::engine
