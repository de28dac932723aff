#include "modalities/image/idx.h"

#include <zlib.h>

#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>

#include "mmfl/error.h"

namespace mmfl::modalities {

int64_t IdxArray::size() const {
  int64_t n = 1;
  for (int64_t d : dims)
    n *= d;
  return n;
}

namespace {

// Whole-file read, inflating gzip transparently (gzread passes raw files through).
std::vector<uint8_t> read_all(const std::string& path) {
  std::ifstream probe(path, std::ios::binary);
  MMFL_CHECK(probe.good(), "cannot open '", path, "'");
  probe.close();
  gzFile f = gzopen(path.c_str(), "rb");
  MMFL_CHECK(f != nullptr, "cannot open '", path, "'");
  std::unique_ptr<gzFile_s, std::function<void(gzFile)>> guard(f, [](gzFile g) { gzclose(g); });
  std::vector<uint8_t> out;
  std::vector<uint8_t> chunk(1 << 20);
  for (;;) {
    int got = gzread(f, chunk.data(), static_cast<unsigned>(chunk.size()));
    if (got < 0) {
      int err = 0;
      const char* msg = gzerror(f, &err);
      MMFL_FAIL("'", path, "': corrupt gzip stream after ", out.size(),
                " decompressed bytes: ", msg);
    }
    if (got == 0) break;
    out.insert(out.end(), chunk.begin(), chunk.begin() + got);
  }
  return out;
}

uint32_t be32(const std::vector<uint8_t>& b, size_t off) {
  return (uint32_t(b[off]) << 24) | (uint32_t(b[off + 1]) << 16) | (uint32_t(b[off + 2]) << 8) |
         uint32_t(b[off + 3]);
}

}  // namespace

IdxArray read_idx(const std::string& path, int expected_rank) {
  std::vector<uint8_t> bytes = read_all(path);
  MMFL_CHECK(bytes.size() >= 4, "'", path, "': ", bytes.size(),
             " bytes, too short for an IDX header (offset 0 needs 4 bytes)");
  // Magic: two zero bytes, the element type (0x08 = unsigned byte), the rank.
  MMFL_CHECK(bytes[0] == 0 && bytes[1] == 0, "'", path,
             "': bad IDX magic at byte offset 0 (expected 00 00, got ", int(bytes[0]), " ",
             int(bytes[1]), "); not an IDX file");
  MMFL_CHECK(bytes[2] == 0x08, "'", path, "': IDX element type at byte offset 2 is 0x", std::hex,
             int(bytes[2]), ", only 0x08 (unsigned byte) is supported");
  const int rank = bytes[3];
  MMFL_CHECK(rank == expected_rank, "'", path, "': IDX rank at byte offset 3 is ", rank,
             ", expected ", expected_rank);
  const size_t header = 4 + 4 * size_t(rank);
  MMFL_CHECK(bytes.size() >= header, "'", path, "': truncated header: ", bytes.size(),
             " bytes, the dimensions end at byte offset ", header);
  IdxArray arr;
  for (int i = 0; i < rank; ++i) {
    const uint32_t d = be32(bytes, 4 + 4 * size_t(i));
    MMFL_CHECK(d > 0 && d < (1u << 28), "'", path, "': dimension ", i, " at byte offset ",
               4 + 4 * i, " is ", d, ", outside 1..2^28");
    arr.dims.push_back(d);
  }
  const size_t expected = header + size_t(arr.size());
  MMFL_CHECK(bytes.size() == expected, "'", path, "': length ", bytes.size(),
             " bytes, but the header's dimensions need ", expected, " (data ",
             bytes.size() < expected ? "truncated at" : "has trailing bytes from", " byte offset ",
             bytes.size() < expected ? bytes.size() : expected, ")");
  arr.data.assign(bytes.begin() + header, bytes.end());
  return arr;
}

IdxImages read_idx_split(const std::string& dir, const std::string& split, int num_classes) {
  auto find = [&](const std::string& stem) {
    for (const char* ext : {".gz", ""}) {
      std::string p = dir + "/" + stem + ext;
      if (std::ifstream(p).good()) return p;
    }
    MMFL_FAIL("no '", stem, "' or '", stem, ".gz' in '", dir,
              "' (set data.root to a folder of MNIST-format IDX files; on Debian install the "
              "package dataset-fashion-mnist)");
  };
  const std::string img_path = find(split + "-images-idx3-ubyte");
  const std::string lbl_path = find(split + "-labels-idx1-ubyte");
  IdxImages out{read_idx(img_path, 3), read_idx(lbl_path, 1)};
  MMFL_CHECK(out.labels.dims[0] == out.images.dims[0], "'", lbl_path, "' holds ",
             out.labels.dims[0], " labels but '", img_path, "' holds ", out.images.dims[0],
             " images");
  for (size_t i = 0; i < out.labels.data.size(); ++i) {
    MMFL_CHECK(out.labels.data[i] < num_classes, "'", lbl_path, "': label ",
               int(out.labels.data[i]), " at byte offset ", 8 + i, " is not below ", num_classes);
  }
  return out;
}

}  // namespace mmfl::modalities
