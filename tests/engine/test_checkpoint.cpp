#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>

#include "engine/checkpoint.h"
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

}  // namespace
}  // namespace mmfl::engine
