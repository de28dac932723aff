#include "modalities/image/idx.h"

#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "mmfl/error.h"
#include "modalities/file_io.h"

namespace mmfl::modalities {

int64_t IdxArray::size() const {
  int64_t n = 1;
  for (int64_t d : dims)
    n *= d;
  return n;
}

namespace {

// Bounds: FashionMNIST's train images are 47 MB; 2^31 bytes of pixels (and of compressed input)
// is far beyond any MNIST-format set and still fits memory on the machines mmfl targets.
constexpr uint64_t kMaxIdxBytes = uint64_t(1) << 31;

std::string hex_byte(uint8_t b) {
  char buf[8];
  std::snprintf(buf, sizeof(buf), "0x%02x", unsigned(b));
  return buf;
}

// Sequential reader over a raw or gzip file (gzread passes raw files through), which never
// inflates more than it is asked for: a small gzip that expands to gigabytes costs nothing
// beyond the bytes the header's dimensions need.
class IdxStream {
 public:
  explicit IdxStream(const std::string& path) : path_(path) {
    check_regular_file(path, kMaxIdxBytes, "IDX file");
    f_ = gzopen(path.c_str(), "rb");
    MMFL_CHECK(f_ != nullptr, "cannot open IDX file '", path, "'");
  }
  ~IdxStream() {
    if (f_) gzclose(f_);
  }
  IdxStream(const IdxStream&) = delete;
  IdxStream& operator=(const IdxStream&) = delete;

  // Reads up to `n` bytes into `out`; returns how many (fewer only at the end of the data).
  size_t read(uint8_t* out, size_t n) {
    size_t got = 0;
    while (got < n) {
      const unsigned ask = unsigned(std::min<size_t>(n - got, size_t(1) << 30));
      const int r = gzread(f_, out + got, ask);
      if (r < 0) {
        int err = 0;
        const char* msg = gzerror(f_, &err);
        MMFL_FAIL("IDX file '", path_, "': corrupt gzip stream at decompressed byte offset ",
                  offset_ + got, ": ", msg);
      }
      if (r == 0) break;
      got += size_t(r);
    }
    offset_ += got;
    return got;
  }
  uint64_t offset() const { return offset_; }

 private:
  std::string path_;
  gzFile f_ = nullptr;
  uint64_t offset_ = 0;
};

uint32_t be32(const uint8_t* b) {
  return (uint32_t(b[0]) << 24) | (uint32_t(b[1]) << 16) | (uint32_t(b[2]) << 8) | uint32_t(b[3]);
}

}  // namespace

IdxArray read_idx(const std::string& path, int expected_rank) {
  IdxStream in(path);
  uint8_t magic[4];
  const size_t got_magic = in.read(magic, 4);
  MMFL_CHECK(got_magic == 4, "IDX file '", path, "': ", got_magic,
             " bytes, too short for an IDX header (offset 0 needs 4 bytes)");
  // Magic: two zero bytes, the element type (0x08 = unsigned byte), the rank.
  MMFL_CHECK(magic[0] == 0 && magic[1] == 0, "IDX file '", path,
             "': bad IDX magic at byte offset 0 (expected 0x00 0x00, got ", hex_byte(magic[0]), " ",
             hex_byte(magic[1]), "); not an IDX file");
  MMFL_CHECK(magic[2] == 0x08, "IDX file '", path, "': IDX element type at byte offset 2 is ",
             hex_byte(magic[2]), ", only 0x08 (unsigned byte) is supported");
  const int rank = magic[3];
  MMFL_CHECK(rank == expected_rank, "IDX file '", path, "': IDX rank at byte offset 3 is ", rank,
             ", expected ", expected_rank);
  const size_t header = 4 + 4 * size_t(rank);
  std::vector<uint8_t> dims(4 * size_t(rank));
  const size_t got_dims = in.read(dims.data(), dims.size());
  MMFL_CHECK(got_dims == dims.size(), "IDX file '", path, "': truncated header: ", 4 + got_dims,
             " bytes, the dimensions end at byte offset ", header);
  IdxArray arr;
  uint64_t total = 1;
  for (int i = 0; i < rank; ++i) {
    const uint32_t d = be32(dims.data() + 4 * size_t(i));
    MMFL_CHECK(d > 0 && d < (1u << 28), "IDX file '", path, "': dimension ", i, " at byte offset ",
               4 + 4 * i, " is ", d, ", outside 1..2^28");
    arr.dims.push_back(d);
    total *= d;  // each factor < 2^28 and the running product is checked below: no overflow
    MMFL_CHECK(total <= kMaxIdxBytes, "IDX file '", path, "': the dimensions up to byte offset ",
               8 + 4 * i, " describe more than ", kMaxIdxBytes, " bytes of data (the limit)");
  }
  // Grows with the data actually there (in 16 MiB steps), so a header that claims more than the
  // file holds costs no more memory than the file's contents.
  size_t got = 0;
  while (got < total) {
    const size_t step = std::min<size_t>(size_t(total) - got, size_t(16) << 20);
    arr.data.resize(got + step);
    const size_t n = in.read(arr.data.data() + got, step);
    got += n;
    MMFL_CHECK(n == step, "IDX file '", path, "': data truncated at byte offset ", header + got,
               "; the header's dimensions need ", header + total, " bytes");
  }
  uint8_t extra;
  MMFL_CHECK(in.read(&extra, 1) == 0, "IDX file '", path, "': trailing bytes from byte offset ",
             header + total, "; the header's dimensions need exactly ", header + total, " bytes");
  return arr;
}

IdxImages read_idx_split(const std::string& dir, const std::string& split, int num_classes) {
  auto find = [&](const std::string& stem) {
    for (const char* ext : {".gz", ""}) {
      std::string p = dir + "/" + stem + ext;
      if (std::filesystem::exists(p)) return p;
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
