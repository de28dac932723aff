#include "engine/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "mmfl/error.h"

namespace mmfl::engine {

namespace {

constexpr char kMagic[8] = {'M', 'M', 'F', 'L', 'C', 'K', 'P', 'T'};
constexpr uint32_t kVersion = 1;

void fsync_path(const std::string& path, int flags) {
  const int fd = ::open(path.c_str(), flags);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

void write_bytes_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    MMFL_CHECK(out.good(), "cannot write '", tmp, "'");
    out.write(bytes.data(), std::streamsize(bytes.size()));
    out.flush();
    MMFL_CHECK(out.good(), "failed writing '", tmp, "' (disk full?)");
  }
  fsync_path(tmp, O_RDONLY);
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  MMFL_CHECK(!ec, "cannot rename '", tmp, "' to '", path, "': ", ec.message());
  fsync_path(std::filesystem::path(path).parent_path().string(), O_RDONLY | O_DIRECTORY);
}

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

}  // namespace

std::string fnv1a_hex(const std::string& text) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : text)
    h = (h ^ c) * 1099511628211ull;
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

void write_file_atomic(const std::string& path, const std::string& text) {
  write_bytes_atomic(path, text);
}

void save_checkpoint(const std::string& path, const Checkpoint& ckpt) {
  nlohmann::json meta;
  meta["round"] = ckpt.round;
  meta["config_hash"] = ckpt.config_hash;
  meta["tensors"] = nlohmann::json::array();
  std::string data;
  for (const auto& [name, t] : ckpt.tensors) {
    const auto c = t.detach().to(torch::kCPU, torch::kFloat32).contiguous().reshape({-1});
    meta["tensors"].push_back({{"name", name}, {"numel", c.numel()}});
    data.append(reinterpret_cast<const char*>(c.data_ptr<float>()), size_t(c.numel()) * 4);
  }
  const std::string header = meta.dump();
  std::string bytes(kMagic, sizeof(kMagic));
  put<uint32_t>(bytes, kVersion);
  put<uint64_t>(bytes, header.size());
  bytes += header;
  bytes += data;
  const uint32_t crc = uint32_t(
      crc32(0L, reinterpret_cast<const Bytef*>(bytes.data()), static_cast<uInt>(bytes.size())));
  put<uint32_t>(bytes, crc);
  write_bytes_atomic(path, bytes);
}

Checkpoint load_checkpoint(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  MMFL_CHECK(in.good(), "cannot open checkpoint '", path, "'");
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string bytes = ss.str();
  const size_t fixed = sizeof(kMagic) + 4 + 8;
  MMFL_CHECK(bytes.size() >= fixed + 4, "checkpoint '", path, "' is corrupt: ", bytes.size(),
             " bytes, shorter than the ", fixed + 4, "-byte minimum (truncated write?)");
  MMFL_CHECK(std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) == 0, "checkpoint '", path,
             "' is corrupt: bad magic at byte offset 0 (not an mmfl checkpoint)");
  const auto version = get<uint32_t>(bytes, 8);
  MMFL_CHECK(version == kVersion, "checkpoint '", path, "': format version ", version,
             " at byte offset 8, this build reads version ", kVersion);
  const uint32_t stored = get<uint32_t>(bytes, bytes.size() - 4);
  const uint32_t actual = uint32_t(
      crc32(0L, reinterpret_cast<const Bytef*>(bytes.data()), static_cast<uInt>(bytes.size() - 4)));
  MMFL_CHECK(stored == actual, "checkpoint '", path, "' is corrupt: CRC-32 mismatch over its ",
             bytes.size() - 4, " bytes (stored ", stored, ", computed ", actual,
             "); resume from an earlier checkpoint or start the run again");
  const auto header_len = get<uint64_t>(bytes, 12);
  MMFL_CHECK(header_len <= bytes.size() - fixed - 4, "checkpoint '", path,
             "' is corrupt: header "
             "length ",
             header_len, " at byte offset 12 runs past the end of the file");
  nlohmann::json meta;
  try {
    meta = nlohmann::json::parse(bytes.substr(fixed, header_len));
  } catch (const nlohmann::json::exception& e) {
    MMFL_FAIL("checkpoint '", path, "' is corrupt: header at byte offset ", fixed,
              " is not JSON: ", e.what());
  }
  Checkpoint ck;
  size_t off = fixed + header_len;
  try {
    ck.round = meta.at("round").get<int64_t>();
    ck.config_hash = meta.at("config_hash").get<std::string>();
    for (const auto& t : meta.at("tensors")) {
      const auto name = t.at("name").get<std::string>();
      const auto numel = t.at("numel").get<int64_t>();
      MMFL_CHECK(numel >= 0 && off + size_t(numel) * 4 <= bytes.size() - 4, "checkpoint '", path,
                 "' is corrupt: tensor '", name, "' at byte offset ", off, " runs past the end");
      auto tensor = torch::empty({numel}, torch::kFloat32);
      std::memcpy(tensor.data_ptr<float>(), bytes.data() + off, size_t(numel) * 4);
      ck.tensors[name] = tensor;
      off += size_t(numel) * 4;
    }
  } catch (const nlohmann::json::exception& e) {
    MMFL_FAIL("checkpoint '", path, "' is corrupt: header misses a field: ", e.what());
  }
  MMFL_CHECK(off == bytes.size() - 4, "checkpoint '", path,
             "' is corrupt: ", bytes.size() - 4 - off, " unexplained bytes at byte offset ", off);
  return ck;
}

}  // namespace mmfl::engine
