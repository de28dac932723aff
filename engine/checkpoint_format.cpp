#include "engine/checkpoint_format.h"

#include <zlib.h>

#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>

#include "mmfl/error.h"

namespace mmfl::engine {

namespace {

constexpr char kMagic[8] = {'M', 'M', 'F', 'L', 'C', 'K', 'P', 'T'};
constexpr uint32_t kVersion = 2;
constexpr size_t kFixed = sizeof(kMagic) + 4 + 8;

template <typename T>
void put(std::string& s, T v) {
  s.append(reinterpret_cast<const char*>(&v), sizeof(T));
}

template <typename T>
T get(const std::string& s, size_t off) {
  T v;
  std::memcpy(&v, s.data() + off, sizeof(T));
  return v;
}

uint32_t crc_of(const char* p, size_t n) {
  uLong crc = crc32(0L, Z_NULL, 0);
  while (n > 0) {
    const uInt chunk = uInt(std::min<size_t>(n, size_t(1) << 30));
    crc = crc32(crc, reinterpret_cast<const Bytef*>(p), chunk);
    p += chunk;
    n -= chunk;
  }
  return uint32_t(crc);
}

}  // namespace

int64_t checkpoint_round_from_name(const std::string& f) {
  const std::string pre = "round_", suf = ".ckpt";
  if (f.size() < pre.size() + 6 + suf.size() || f.compare(0, pre.size(), pre) != 0 ||
      f.compare(f.size() - suf.size(), suf.size(), suf) != 0)
    return -1;
  const std::string digits = f.substr(pre.size(), f.size() - pre.size() - suf.size());
  if (digits.size() > 12) return -1;
  int64_t r = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return -1;
    r = r * 10 + (c - '0');
  }
  return r;
}

std::string serialize_checkpoint(CheckpointLayout layout, const std::vector<const float*>& data) {
  MMFL_CHECK(data.size() == layout.tensors.size(), "serialize_checkpoint: ", data.size(),
             " data pointers for ", layout.tensors.size(), " tensors");
  nlohmann::json meta;
  meta["round"] = layout.round;
  meta["config_hash"] = layout.config_hash;
  if (!layout.vocab_hash.empty()) meta["vocab_hash"] = layout.vocab_hash;
  meta["tensors"] = nlohmann::json::array();
  // Offsets depend on the header's length, which depends on the offsets' digits: relative
  // offsets in the header, made absolute by adding the data's start (stored as data_offset).
  uint64_t rel = 0;
  for (size_t i = 0; i < layout.tensors.size(); ++i) {
    const auto& t = layout.tensors[i];
    MMFL_CHECK(i == 0 || layout.tensors[i - 1].name < t.name,
               "serialize_checkpoint: tensor names must be unique and ascending ('", t.name, "')");
    meta["tensors"].push_back({{"name", t.name}, {"shape", t.shape}, {"offset", rel}});
    rel += t.numel * 4;
  }
  const std::string header = meta.dump();
  std::string bytes(kMagic, sizeof(kMagic));
  put<uint32_t>(bytes, kVersion);
  put<uint64_t>(bytes, header.size());
  bytes += header;
  bytes.reserve(bytes.size() + rel + 4);
  for (size_t i = 0; i < layout.tensors.size(); ++i)
    bytes.append(reinterpret_cast<const char*>(data[i]), layout.tensors[i].numel * 4);
  put<uint32_t>(bytes, crc_of(bytes.data(), bytes.size()));
  return bytes;
}

CheckpointLayout parse_checkpoint(const std::string& bytes, const std::string& path,
                                  const std::string& what) {
  MMFL_CHECK(bytes.size() >= kFixed + 4, what, " '", path, "' is corrupt: ", bytes.size(),
             " bytes, shorter than the ", kFixed + 4, "-byte minimum (truncated write?)");
  MMFL_CHECK(std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) == 0, what, " '", path,
             "' is corrupt: bad magic at byte offset 0 (not an mmfl checkpoint)");
  const auto version = get<uint32_t>(bytes, 8);
  MMFL_CHECK(version == kVersion, what, " '", path, "': format version ", version,
             " at byte offset 8, this build reads version ", kVersion);
  const uint32_t stored = get<uint32_t>(bytes, bytes.size() - 4);
  const uint32_t actual = crc_of(bytes.data(), bytes.size() - 4);
  MMFL_CHECK(stored == actual, what, " '", path, "' is corrupt: CRC-32 mismatch over its ",
             bytes.size() - 4, " bytes (stored ", stored, ", computed ", actual, ")");
  const auto header_len = get<uint64_t>(bytes, 12);
  MMFL_CHECK(header_len <= bytes.size() - kFixed - 4, what, " '", path,
             "' is corrupt: header length ", header_len,
             " at byte offset 12 runs past the end of the file");
  const uint64_t data_start = kFixed + header_len;
  const uint64_t data_len = bytes.size() - 4 - data_start;
  nlohmann::json meta;
  try {
    meta = nlohmann::json::parse(bytes.begin() + kFixed, bytes.begin() + long(data_start));
  } catch (const nlohmann::json::exception& e) {
    MMFL_FAIL(what, " '", path, "' is corrupt: header at byte offset ", kFixed,
              " is not JSON: ", e.what());
  }
  CheckpointLayout ck;
  try {
    MMFL_CHECK(meta.is_object() && meta.at("tensors").is_array(), what, " '", path,
               "' is corrupt: header at byte offset ", kFixed, " is not an object with 'tensors'");
    ck.round = meta.at("round").get<int64_t>();
    ck.config_hash = meta.at("config_hash").get<std::string>();
    if (meta.contains("vocab_hash")) ck.vocab_hash = meta.at("vocab_hash").get<std::string>();
    MMFL_CHECK(ck.round >= 0, what, " '", path, "' is corrupt: round ", ck.round);
    uint64_t expect = 0;  // relative offset the next tensor must start at
    for (const auto& t : meta.at("tensors")) {
      CheckpointEntry e;
      e.name = t.at("name").get<std::string>();
      MMFL_CHECK(ck.tensors.empty() || ck.tensors.back().name < e.name, what, " '", path,
                 "' is corrupt: tensor '", e.name, "' is out of order or repeated in the header");
      e.shape = t.at("shape").get<std::vector<int64_t>>();
      uint64_t numel = 1;
      for (int64_t d : e.shape) {
        MMFL_CHECK(d >= 0 && uint64_t(d) <= data_len / 4, what, " '", path,
                   "' is corrupt: tensor '", e.name, "' has dimension ", d);
        numel *= uint64_t(d);
        MMFL_CHECK(numel <= data_len / 4, what, " '", path, "' is corrupt: tensor '", e.name,
                   "' is larger than the file's ", data_len, " data bytes");
      }
      const uint64_t rel = t.at("offset").get<uint64_t>();
      MMFL_CHECK(rel == expect, what, " '", path, "' is corrupt: tensor '", e.name,
                 "' claims data offset ", rel, ", but the tensors before it end at ", expect);
      MMFL_CHECK(numel * 4 <= data_len - rel, what, " '", path, "' is corrupt: tensor '", e.name,
                 "' at byte offset ", data_start + rel, " runs past the end");
      e.numel = numel;
      e.offset = data_start + rel;
      expect = rel + numel * 4;
      ck.tensors.push_back(std::move(e));
    }
    MMFL_CHECK(expect == data_len, what, " '", path, "' is corrupt: ", data_len - expect,
               " unexplained bytes at byte offset ", data_start + expect);
  } catch (const nlohmann::json::exception& e) {
    MMFL_FAIL(what, " '", path, "' is corrupt: header misses a field: ", e.what());
  }
  return ck;
}

}  // namespace mmfl::engine
