// Reader of safetensors files (the weights format of Hugging Face models): an 8-byte
// little-endian header length, a JSON header naming each tensor's dtype, shape and byte range,
// then the raw data. Everything in the header is validated before any tensor is read, and every
// error names the file and, where there is one, the tensor. No LibTorch here (fuzzed on its own).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace mmfl::modalities {

class RegularFileReader;

enum class SafetensorsDtype {
  kBool,
  kU8,
  kI8,
  kI16,
  kU16,
  kF16,
  kBF16,
  kI32,
  kU32,
  kF32,
  kI64,
  kU64,
  kF64
};

// The header's name of a dtype ("F32"), and its size in bytes.
const char* to_string(SafetensorsDtype d);
int64_t dtype_bytes(SafetensorsDtype d);

struct SafetensorsTensor {
  std::string name;
  SafetensorsDtype dtype = SafetensorsDtype::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte range in the data section (after the header)
  uint64_t end = 0;
  int64_t numel() const;
};

// The validated header. Guarantees: names unique and non-empty; every byte range inside the data
// section, of exactly numel * dtype size bytes; ranges sorted by offset cover the data section
// without gaps or overlaps (as the format requires).
struct SafetensorsHeader {
  std::vector<SafetensorsTensor> tensors;  // in the header's order
  std::map<std::string, std::string> metadata;
  const SafetensorsTensor* find(const std::string& name) const;
};

// Largest header the format allows (the reference implementation's limit).
constexpr uint64_t kSafetensorsMaxHeaderBytes = 100u << 20;

// Validates `json`, the header text, for a data section of `data_bytes` bytes; `origin` (the
// file name) prefixes every error.
SafetensorsHeader parse_safetensors_header(const std::string& json, uint64_t data_bytes,
                                           const std::string& origin);

// An open safetensors file: the header is read and validated on construction, tensors are read
// one at a time on demand.
class SafetensorsFile {
 public:
  // Files above `max_bytes` are refused before anything is read.
  explicit SafetensorsFile(const std::string& path, uint64_t max_bytes = uint64_t(16) << 30);
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  const SafetensorsHeader& header() const { return header_; }
  // The tensor's bytes, into `dst` (tensor.end - tensor.begin bytes; little-endian, row-major).
  void read(const SafetensorsTensor& tensor, void* dst) const;

 private:
  std::string path_;
  std::unique_ptr<RegularFileReader> file_;
  uint64_t data_start_ = 0;
  SafetensorsHeader header_;
};

}  // namespace mmfl::modalities
