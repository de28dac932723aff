#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
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

// Issue 10 item 4: a small gzip that inflates to about 1 GiB past what its header describes is
// refused after reading only the bytes the dimensions need. The reader runs in a child process
// under an address-space limit of 256 MiB above what the process already maps; a reader that
// inflates the whole stream first (the old one) runs out of memory there.
TEST_F(IdxTest, GzipBombIsRefusedWithoutInflatingIt) {
  const std::string p = (dir_ / "bomb.gz").string();
  {
    // One gzip member of the IDX bytes, then 16 members of 64 MiB of zeros each:
    // gzread reads concatenated members as one stream. Deflating zeros once keeps this fast.
    std::vector<uint8_t> head = idx_bytes({1, 2, 2});
    std::vector<uint8_t> zeros(size_t(64) << 20, 0);
    const std::string one = (dir_ / "one.gz").string();
    gzFile f = gzopen(one.c_str(), "wb1");
    gzwrite(f, zeros.data(), unsigned(zeros.size()));
    gzclose(f);
    std::ifstream in(one, std::ios::binary);
    const std::string member((std::istreambuf_iterator<char>(in)), {});
    const std::string first = (dir_ / "first.gz").string();
    f = gzopen(first.c_str(), "wb1");
    gzwrite(f, head.data(), unsigned(head.size()));
    gzclose(f);
    std::ifstream fin(first, std::ios::binary);
    std::string bomb((std::istreambuf_iterator<char>(fin)), {});
    for (int i = 0; i < 16; ++i)
      bomb += member;
    std::ofstream(p, std::ios::binary).write(bomb.data(), long(bomb.size()));
    ASSERT_LT(bomb.size(), size_t(8) << 20);  // under 8 MB on disk
  }
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    long pages = 0;
    std::ifstream statm("/proc/self/statm");
    statm >> pages;
    const rlim_t limit = rlim_t(pages) * rlim_t(sysconf(_SC_PAGESIZE)) + (rlim_t(256) << 20);
    const rlimit rl{limit, limit};
    setrlimit(RLIMIT_AS, &rl);
    try {
      read_idx(p, 3);
    } catch (const Error& e) {
      _exit(e.reason().find("trailing bytes from byte offset 20") != std::string::npos ? 0 : 3);
    } catch (...) {
      _exit(4);  // std::bad_alloc: the stream was inflated whole
    }
    _exit(5);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "3: wrong message, 4: out of memory, 5: accepted";
}

// Issue 10 item 4: devices and directories are refused before anything is read.
TEST_F(IdxTest, NonRegularFilesAreRefused) {
  const auto dev = error_of([&] { read_idx("/dev/zero", 3); });
  EXPECT_NE(dev.find("'/dev/zero' is not a regular file"), std::string::npos) << dev;
}

// Issue 10 item 10: a directory where an IDX file should be is called a directory (it was "a
// corrupt gzip stream"), and magic bytes are all written in hex (they mixed hex and decimal).
TEST_F(IdxTest, MessagesNameDirectoriesAndUseHex) {
  fs::create_directories(dir_ / "train-images-idx3-ubyte.gz");
  write("train-labels-idx1-ubyte", idx_bytes({2}));
  const auto msg = error_of([&] { read_idx_split(dir_.string(), "train", 10); });
  EXPECT_NE(msg.find("train-images-idx3-ubyte.gz' is a directory"), std::string::npos) << msg;
  auto b = idx_bytes({2, 2, 2});
  b[0] = 0x12;
  b[1] = 0x34;
  const auto magic = error_of([&] { read_idx(write("hexmagic", b), 3); });
  EXPECT_NE(magic.find("expected 0x00 0x00, got 0x12 0x34"), std::string::npos) << magic;
  auto c = idx_bytes({2, 2, 2}, 0x0D);
  const auto type = error_of([&] { read_idx(write("hextype", c), 3); });
  EXPECT_NE(type.find("byte offset 2 is 0x0d"), std::string::npos) << type;
}

// gzip files are inflated by mmfl itself: bytes after the last member are an error naming where
// they start (gzread ignored them), a member cut short is called truncated, damage inside the
// deflate data is reported near where it is, and members one after another are one stream.
TEST_F(IdxTest, GzipTrailingBytesTruncationAndDamageAreRefused) {
  const auto b = idx_bytes({40, 30, 30});
  const std::string good = write("good.gz", b, true);
  std::ifstream in(good, std::ios::binary);
  const std::string gz((std::istreambuf_iterator<char>(in)), {});
  auto put = [&](const std::string& name, const std::string& bytes) {
    const std::string p = (dir_ / name).string();
    std::ofstream(p, std::ios::binary).write(bytes.data(), long(bytes.size()));
    return p;
  };
  const auto trailing = error_of([&] { read_idx(put("trailing.gz", gz + "garbage!"), 3); });
  EXPECT_NE(trailing.find("8 trailing bytes after the gzip data, from byte offset " +
                          std::to_string(gz.size())),
            std::string::npos)
      << trailing;
  const auto cut = error_of([&] { read_idx(put("cut.gz", gz.substr(0, gz.size() - 20)), 3); });
  EXPECT_NE(cut.find("is truncated"), std::string::npos) << cut;
  std::string flipped = gz;
  flipped[flipped.size() - 6] ^= 0x5a;  // in the CRC-32 of the trailer
  const auto crc = error_of([&] { read_idx(put("crc.gz", flipped), 3); });
  EXPECT_NE(crc.find("corrupt gzip data near byte offset"), std::string::npos) << crc;
  // The IDX bytes split over two members read as the raw file does.
  const std::vector<uint8_t> first(b.begin(), b.begin() + 1000), second(b.begin() + 1000, b.end());
  std::ifstream a(write("m1.gz", first, true), std::ios::binary),
      c(write("m2.gz", second, true), std::ios::binary);
  const std::string two = std::string((std::istreambuf_iterator<char>(a)), {}) +
                          std::string((std::istreambuf_iterator<char>(c)), {});
  EXPECT_EQ(read_idx(put("two.gz", two), 3).data, read_idx(write("raw", b), 3).data);
}

}  // namespace
}  // namespace mmfl::modalities
