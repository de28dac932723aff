#include <gtest/gtest.h>
#include <torch/torch.h>

#include <zlib.h>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/checkpoint.h"
#include "engine/checkpoint_format.h"
#include "mmfl/error.h"

namespace mmfl::engine {
namespace {

namespace fs = std::filesystem;

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("mmfl_ckpt_" +
            std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    ck_.round = 4;
    ck_.config_hash = "abc";
    ck_.tensors["image"] = torch::randn({1000});
    ck_.tensors["text"] = torch::randn({77});
    path_ = (dir_ / "c.ckpt").string();
    save_checkpoint(path_, ck_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string error_loading() {
    try {
      load_checkpoint(path_);
    } catch (const Error& e) {
      return e.reason();
    }
    return "";
  }
  fs::path dir_;
  std::string path_;
  Checkpoint ck_;
};

TEST_F(CheckpointTest, RoundTrip) {
  const auto back = load_checkpoint(path_);
  EXPECT_EQ(back.round, 4);
  EXPECT_EQ(back.config_hash, "abc");
  EXPECT_TRUE(torch::equal(back.tensors.at("image"), ck_.tensors.at("image")));
  EXPECT_TRUE(torch::equal(back.tensors.at("text"), ck_.tensors.at("text")));
  EXPECT_FALSE(fs::exists(path_ + ".tmp"));
}

TEST_F(CheckpointTest, FlippedByteIsRefused) {
  {
    std::fstream f(path_, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(200);
    char c = 0;
    f.read(&c, 1);
    f.seekp(200);
    c = char(c ^ 0x10);
    f.write(&c, 1);
  }
  const auto msg = error_loading();
  EXPECT_NE(msg.find("is corrupt: CRC-32 mismatch"), std::string::npos) << msg;
  EXPECT_NE(msg.find(path_), std::string::npos) << msg;
}

TEST_F(CheckpointTest, TruncatedIsRefused) {
  fs::resize_file(path_, fs::file_size(path_) / 2);
  EXPECT_NE(error_loading().find("is corrupt"), std::string::npos);
  fs::resize_file(path_, 10);
  EXPECT_NE(error_loading().find("shorter than"), std::string::npos);
}

TEST_F(CheckpointTest, ForeignFileIsRefused) {
  std::ofstream(path_) << "round: 3\nthis is not a checkpoint at all\n";
  EXPECT_NE(error_loading().find("bad magic at byte offset 0"), std::string::npos);
}

TEST(AtomicWrite, ReplacesWholeFile) {
  const auto p = (fs::temp_directory_path() / "mmfl_atomic.txt").string();
  write_file_atomic(p, "first version, long\n");
  write_file_atomic(p, "second\n");
  std::ifstream in(p);
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(s, "second\n");
  fs::remove(p);
}

// Issue 10 item 7: a header that lists the tensors in another order than their data (with a
// valid CRC) is refused; the old reader assigned the data in header order, loading each tower
// with the other's weights. The file carries the fields of both format versions, so the old
// reader would have parsed it.
TEST_F(CheckpointTest, ReorderedHeaderIsRefused) {
  std::ifstream in(path_, std::ios::binary);
  const std::string good((std::istreambuf_iterator<char>(in)), {});
  uint64_t header_len = 0;
  std::memcpy(&header_len, good.data() + 12, 8);
  const std::string data = good.substr(20 + header_len, good.size() - 4 - 20 - header_len);
  // The data holds image (1000 floats) then text (77); the header lists text first.
  nlohmann::json meta = {
      {"round", 4},
      {"config_hash", "abc"},
      {"tensors",
       {{{"name", "text"}, {"numel", 77}, {"shape", {77}}, {"offset", 0}},
        {{"name", "image"}, {"numel", 1000}, {"shape", {1000}}, {"offset", 308}}}}};
  const std::string header = meta.dump();
  std::string bytes = good.substr(0, 12);
  const uint64_t len = header.size();
  bytes.append(reinterpret_cast<const char*>(&len), 8);
  bytes += header + data;
  const uint32_t crc =
      uint32_t(crc32(0L, reinterpret_cast<const Bytef*>(bytes.data()), uInt(bytes.size())));
  bytes.append(reinterpret_cast<const char*>(&crc), 4);
  std::ofstream(path_, std::ios::binary | std::ios::trunc).write(bytes.data(), long(bytes.size()));
  const auto msg = error_loading();
  EXPECT_NE(msg.find("tensor 'image' is out of order"), std::string::npos) << msg;
}

// Issue 10 item 7: only exact round_NNNNNN.ckpt names are checkpoints; the old scan took any
// "round_*.ckpt", so a stray "round_backup.ckpt" sorted after the real ones and blocked resume.
TEST(CheckpointNames, ExactPatternOnly) {
  EXPECT_EQ(checkpoint_round_from_name("round_000004.ckpt"), 4);
  EXPECT_EQ(checkpoint_round_from_name("round_1000000.ckpt"), 1000000);
  EXPECT_EQ(checkpoint_round_from_name("round_backup.ckpt"), -1);
  EXPECT_EQ(checkpoint_round_from_name("round_4.ckpt"), -1);
  EXPECT_EQ(checkpoint_round_from_name("round_000004.ckpt.tmp"), -1);
  EXPECT_EQ(checkpoint_round_from_name("round_00000x.ckpt"), -1);
  EXPECT_EQ(checkpoint_round_from_name("xround_000004.ckpt"), -1);
}

TEST_F(CheckpointTest, ShapesRoundTrip) {
  ck_.tensors["grid"] = torch::randn({3, 5});
  save_checkpoint(path_, ck_);
  const auto back = load_checkpoint(path_);
  EXPECT_EQ(back.shapes.at("grid"), (std::vector<int64_t>{3, 5}));
  EXPECT_EQ(back.tensors.at("grid").numel(), 15);
}

}  // namespace
}  // namespace mmfl::engine
