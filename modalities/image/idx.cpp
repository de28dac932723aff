#include "modalities/image/idx.h"

#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
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

// Sequential reader over a raw or a gzip file (told apart by the gzip magic 1f 8b), which never
// inflates more than it is asked for: a small gzip that expands to gigabytes costs nothing
// beyond the bytes the header's dimensions need. gzip data is inflated here rather than through
// gzread, which ignores bytes after the last gzip member and reports a damaged stream at the end
// of its own read-ahead instead of where the damage is. Members one after another (`cat a.gz
// b.gz`) are one stream, as gzip -d reads them.
class IdxStream {
 public:
  explicit IdxStream(const std::string& path) : path_(path) {
    check_regular_file(path, kMaxIdxBytes, "IDX file");
    file_ = std::fopen(path.c_str(), "rb");
    MMFL_CHECK(file_ != nullptr, "cannot open IDX file '", path, "'");
    fill();
    gzip_ = z_.avail_in >= 2 && in_[0] == 0x1f && in_[1] == 0x8b;
    if (gzip_) MMFL_CHECK(inflateInit2(&z_, 16 + MAX_WBITS) == Z_OK, "zlib: inflateInit2 failed");
  }
  ~IdxStream() {
    if (gzip_) inflateEnd(&z_);
    if (file_) std::fclose(file_);
  }
  IdxStream(const IdxStream&) = delete;
  IdxStream& operator=(const IdxStream&) = delete;

  // Reads up to `n` bytes into `out`; returns how many (fewer only at the end of the data).
  size_t read(uint8_t* out, size_t n) {
    size_t got = 0;
    while (got < n && !(z_.avail_in == 0 && fill() == 0 && (!gzip_ || ended_))) {
      if (!gzip_) {
        const size_t k = std::min<size_t>(n - got, z_.avail_in);
        std::copy_n(z_.next_in, k, out + got);
        z_.next_in += k;
        z_.avail_in -= unsigned(k);
        got += k;
        continue;
      }
      if (ended_) {  // the end of a member: another follows, or nothing may
        if (z_.avail_in < 2) fill();
        MMFL_CHECK(z_.avail_in >= 2 && z_.next_in[0] == 0x1f && z_.next_in[1] == 0x8b, "IDX file '",
                   path_, "': ", z_.avail_in + remaining_bytes(),
                   " trailing bytes after the gzip data, from byte offset ", compressed_offset(),
                   " of the file (not a gzip member); the file is damaged");
        MMFL_CHECK(inflateReset(&z_) == Z_OK, "zlib: inflateReset failed");
        ended_ = false;
      }
      MMFL_CHECK(z_.avail_in > 0, "IDX file '", path_,
                 "': the gzip data ends before its end marker, at decompressed byte offset ",
                 offset_ + got, " (byte offset ", compressed_offset(),
                 " of the file); the file is truncated");
      const unsigned ask = unsigned(std::min<size_t>(n - got, size_t(1) << 30));
      z_.next_out = out + got;
      z_.avail_out = ask;
      const int r = inflate(&z_, Z_NO_FLUSH);
      got += ask - z_.avail_out;
      if (r == Z_STREAM_END) {
        ended_ = true;
      } else if (r != Z_OK && r != Z_BUF_ERROR) {
        MMFL_FAIL("IDX file '", path_, "': corrupt gzip data near byte offset ",
                  compressed_offset(), " of the file (decompressed byte offset ", offset_ + got,
                  "): ", z_.msg ? z_.msg : "zlib error " + std::to_string(r));
      }
    }
    offset_ += got;
    return got;
  }
  uint64_t offset() const { return offset_; }

 private:
  // Moves what is left of the input buffer to its front and reads more of the file after it;
  // returns the number of bytes read.
  size_t fill() {
    std::memmove(in_, z_.next_in ? z_.next_in : in_, z_.avail_in);
    const size_t r = std::fread(in_ + z_.avail_in, 1, sizeof(in_) - z_.avail_in, file_);
    MMFL_CHECK(!std::ferror(file_), "cannot read IDX file '", path_, "'");
    z_.next_in = in_;
    z_.avail_in += unsigned(r);
    read_ += r;
    return r;
  }
  uint64_t compressed_offset() const { return read_ - z_.avail_in; }
  uint64_t remaining_bytes() const {
    std::error_code ec;
    const auto size = std::filesystem::file_size(path_, ec);
    return ec || size < read_ ? 0 : size - read_;
  }

  std::string path_;
  std::FILE* file_ = nullptr;
  bool gzip_ = false;
  bool ended_ = false;  // inflate reached the end of a gzip member
  z_stream z_{};
  uint8_t in_[1 << 16];
  uint64_t read_ = 0;    // bytes read from the file
  uint64_t offset_ = 0;  // bytes returned by read()
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
