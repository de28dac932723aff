#include <gtest/gtest.h>
#include <zlib.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "mmfl/error.h"
#include "modalities/image/idx.h"

namespace mmfl::modalities {
namespace {

namespace fs = std::filesystem;

std::vector<uint8_t> idx_bytes(std::vector<uint32_t> dims, uint8_t type = 0x08) {
  std::vector<uint8_t> b = {0, 0, type, uint8_t(dims.size())};
  size_t n = 1;
  for (uint32_t d : dims) {
    for (int s = 24; s >= 0; s -= 8)
      b.push_back(uint8_t(d >> s));
    n *= d;
  }
  for (size_t i = 0; i < n; ++i)
    b.push_back(uint8_t(i * 7 % 251));
  return b;
}

class IdxTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("mmfl_idx_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string write(const std::string& name, const std::vector<uint8_t>& b, bool gzip = false) {
    const std::string p = (dir_ / name).string();
    if (gzip) {
      gzFile f = gzopen(p.c_str(), "wb");
      gzwrite(f, b.data(), unsigned(b.size()));
      gzclose(f);
    } else {
      std::ofstream(p, std::ios::binary)
          .write(reinterpret_cast<const char*>(b.data()), long(b.size()));
    }
    return p;
  }
  // The message of the mmfl::Error thrown by `f`, or "" if none.
  template <typename F>
  static std::string error_of(F f) {
    try {
      f();
    } catch (const Error& e) {
      return e.reason();
    }
    return "";
  }
  fs::path dir_;
};

TEST_F(IdxTest, ReadsRawAndGzipIdentically) {
  const auto b = idx_bytes({3, 4, 5});
  const auto raw = read_idx(write("a", b), 3);
  const auto gz = read_idx(write("a.gz", b, true), 3);
  EXPECT_EQ(raw.dims, (std::vector<int64_t>{3, 4, 5}));
  EXPECT_EQ(raw.size(), 60);
  EXPECT_EQ(raw.data, gz.data);
  EXPECT_EQ(raw.data[59], uint8_t(59 * 7 % 251));
}

TEST_F(IdxTest, TruncatedFileNamesFileAndOffset) {
  auto b = idx_bytes({2, 3, 3});
  b.resize(b.size() - 5);
  const std::string p = write("trunc", b);
  const auto msg = error_of([&] { read_idx(p, 3); });
  EXPECT_NE(msg.find(p), std::string::npos) << msg;
  EXPECT_NE(msg.find("truncated at byte offset " + std::to_string(b.size())), std::string::npos)
      << msg;
}

TEST_F(IdxTest, TruncatedHeader) {
  auto b = idx_bytes({2, 3, 3});
  b.resize(9);
  const auto msg = error_of([&] { read_idx(write("hdr", b), 3); });
  EXPECT_NE(msg.find("truncated header"), std::string::npos) << msg;
}

TEST_F(IdxTest, WrongMagic) {
  auto b = idx_bytes({2, 2, 2});
  b[1] = 0x42;
  const auto msg = error_of([&] { read_idx(write("magic", b), 3); });
  EXPECT_NE(msg.find("bad IDX magic at byte offset 0"), std::string::npos) << msg;
  auto c = idx_bytes({2, 2, 2}, 0x0D);  // float elements: not supported
  const auto msg2 = error_of([&] { read_idx(write("type", c), 3); });
  EXPECT_NE(msg2.find("byte offset 2"), std::string::npos) << msg2;
}

TEST_F(IdxTest, WrongDimensions) {
  const auto msg = error_of([&] { read_idx(write("rank", idx_bytes({4, 4})), 3); });
  EXPECT_NE(msg.find("rank at byte offset 3 is 2, expected 3"), std::string::npos) << msg;
  auto b = idx_bytes({2, 2, 2});
  b[8] = b[9] = b[10] = b[11] = 0;  // dimension 1 = 0
  const auto msg2 = error_of([&] { read_idx(write("zero", b), 3); });
  EXPECT_NE(msg2.find("dimension 1 at byte offset 8"), std::string::npos) << msg2;
}

TEST_F(IdxTest, TrailingBytes) {
  auto b = idx_bytes({1, 2, 2});
  b.push_back(1);
  const auto msg = error_of([&] { read_idx(write("long", b), 3); });
  EXPECT_NE(msg.find("trailing bytes from byte offset 20"), std::string::npos) << msg;
}

TEST_F(IdxTest, SplitChecksLabelCountAndRange) {
  write("train-images-idx3-ubyte", idx_bytes({3, 2, 2}));
  std::vector<uint8_t> labels = {0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 9};
  write("train-labels-idx1-ubyte.gz", labels, true);
  const auto s = read_idx_split(dir_.string(), "train", 10);
  EXPECT_EQ(s.count(), 3);
  labels[10] = 10;
  write("train-labels-idx1-ubyte.gz", labels, true);
  const auto msg = error_of([&] { read_idx_split(dir_.string(), "train", 10); });
  EXPECT_NE(msg.find("label 10 at byte offset 10"), std::string::npos) << msg;
  const auto missing = error_of([&] { read_idx_split(dir_.string(), "t10k", 10); });
  EXPECT_NE(missing.find("t10k-images-idx3-ubyte"), std::string::npos) << missing;
}

TEST_F(IdxTest, MissingFile) {
  const auto msg = error_of([&] { read_idx((dir_ / "nope").string(), 1); });
  EXPECT_NE(msg.find("cannot open"), std::string::npos) << msg;
}

}  // namespace
}  // namespace mmfl::modalities
