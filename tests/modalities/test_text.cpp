#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>

#include "mmfl/error.h"
#include "modalities/text/tokenizer.h"

namespace mmfl::modalities {
namespace {

TEST(Tokenizer, SplitsLowercasesAndKeepsHyphens) {
  EXPECT_EQ(Tokenizer::split("A Bright, mid-toned T-shirt!"),
            (std::vector<std::string>{"a", "bright", "mid-toned", "t-shirt"}));
}

TEST(Tokenizer, VocabularyByFrequencyThenAlphabet) {
  const auto t = Tokenizer::build({"b a c", "a b", "a"});
  EXPECT_EQ(t.tokens(), (std::vector<std::string>{"<pad>", "<unk>", "a", "b", "c"}));
  EXPECT_EQ(t.encode("c a zzz", 5), (std::vector<int64_t>{4, 2, Tokenizer::kUnk, 0, 0}));
  EXPECT_EQ(t.encode("a a a a", 2), (std::vector<int64_t>{2, 2}));
}

TEST(Tokenizer, SaveLoadRoundTrip) {
  const auto t = Tokenizer::build({"dark boot", "bright bag"});
  const auto p = std::filesystem::temp_directory_path() / "mmfl_vocab_test.txt";
  t.save(p.string());
  const auto u = Tokenizer::load(p.string());
  EXPECT_EQ(t.tokens(), u.tokens());
  std::filesystem::remove(p);
  EXPECT_THROW(Tokenizer::load(p.string()), Error);
}

// Issue 10 item 3: a vocabulary write that fails (here: the file-size limit, as a full disk
// would) is an error, and the previous vocab.txt is left whole. The old writer checked its
// stream before the buffered bytes reached the disk and reported success on an empty file.
TEST(Tokenizer, FailedSaveIsAnErrorAndKeepsTheOldFile) {
  const auto dir =
      std::filesystem::temp_directory_path() / ("mmfl_vocab_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "vocab.txt").string();
  const auto small = Tokenizer::build({"a"});
  small.save(path);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::signal(SIGXFSZ, SIG_IGN);
    const rlimit rl{8, 8};
    setrlimit(RLIMIT_FSIZE, &rl);
    try {
      Tokenizer::build({"many different words than fit in eight bytes"}).save(path);
    } catch (const Error& e) {
      _exit(e.reason().find(path) != std::string::npos ? 0 : 3);
    }
    _exit(5);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "3: message lacks the path, 5: the failure went unnoticed";
  EXPECT_EQ(Tokenizer::load(path).tokens(), small.tokens());
  std::filesystem::remove_all(dir);
}

// Issue 10 item 4: a vocabulary path that is a device is refused, not read without bound.
TEST(Tokenizer, LoadRefusesDevices) {
  try {
    Tokenizer::load("/dev/zero");
    FAIL() << "accepted /dev/zero";
  } catch (const Error& e) {
    EXPECT_NE(e.reason().find("not a regular file"), std::string::npos) << e.reason();
  }
}

}  // namespace
}  // namespace mmfl::modalities
