// The safetensors reader: a valid file round-trips; truncated files, bad headers and wrong
// shapes are refused with an error naming the file and the tensor.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "mmfl/error.h"
#include "modalities/safetensors.h"

namespace mmfl::modalities {
namespace {

class Safetensors : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("mmfl_st_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // A file of the 8-byte length `len` (default: the header's), the header and the data.
  std::string write(const std::string& header, const std::string& data, int64_t len = -1) {
    const std::string path = (dir_ / "t.safetensors").string();
    std::ofstream f(path, std::ios::binary);
    const uint64_t n = len < 0 ? header.size() : uint64_t(len);
    for (int i = 0; i < 8; ++i)
      f.put(char((n >> (8 * i)) & 0xff));
    f << header << data;
    return path;
  }
  static std::string floats(std::initializer_list<float> v) {
    std::string s(v.size() * 4, '\0');
    std::memcpy(s.data(), v.begin(), s.size());
    return s;
  }
  // The reason of the Error that opening `path` throws ("" if none).
  static std::string error_of(const std::string& path) {
    try {
      SafetensorsFile f(path);
    } catch (const Error& e) {
      return e.reason();
    }
    return "";
  }

  std::filesystem::path dir_;
};

#define EXPECT_HAS(haystack, needle) \
  EXPECT_NE(std::string(haystack).find(needle), std::string::npos) << (haystack)

TEST_F(Safetensors, ReadsTensorsAndMetadata) {
  const std::string h =
      R"({"__metadata__":{"format":"pt"},"b":{"dtype":"I64","shape":[2],"data_offsets":[24,40]},)"
      R"("a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}}   )";
  std::string data = floats({1, 2, 3, 4, 5, 6});
  const int64_t ints[2] = {-7, 1LL << 40};
  data.append(reinterpret_cast<const char*>(ints), 16);
  const SafetensorsFile f(write(h, data));
  ASSERT_EQ(f.header().tensors.size(), 2u);
  EXPECT_EQ(f.header().metadata.at("format"), "pt");
  const auto* a = f.header().find("a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->dtype, SafetensorsDtype::kF32);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 3}));
  float got[6];
  f.read(*a, got);
  EXPECT_EQ(got[5], 6.0f);
  int64_t gi[2];
  f.read(*f.header().find("b"), gi);
  EXPECT_EQ(gi[0], -7);
  EXPECT_EQ(gi[1], 1LL << 40);
  EXPECT_EQ(f.header().find("c"), nullptr);
}

TEST_F(Safetensors, EmptyAndZeroSizedTensorsAreFine) {
  EXPECT_EQ(error_of(write("{}", "")), "");
  EXPECT_EQ(error_of(write(R"({"z":{"dtype":"F32","shape":[0,5],"data_offsets":[0,0]}})", "")), "");
}

TEST_F(Safetensors, TruncatedFilesAreRefused) {
  const std::string h = R"({"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}})";
  const std::string data = floats({1, 2, 3, 4, 5, 6});
  // Cut inside the data: the offsets go past the end of what is there.
  std::string e = error_of(write(h, data.substr(0, 20)));
  EXPECT_HAS(e, "t.safetensors");
  EXPECT_HAS(e, "tensor 'a'");
  EXPECT_HAS(e, "truncated");
  // Cut inside the header.
  e = error_of(write(h.substr(0, 10), "", int64_t(h.size())));
  EXPECT_HAS(e, "header length at byte offset 0");
  EXPECT_HAS(e, "truncated");
  // Cut inside the 8-byte length.
  const std::string p = (dir_ / "short").string();
  std::ofstream(p) << "abc";
  EXPECT_HAS(error_of(p), "too short for the 8-byte header length");
}

TEST_F(Safetensors, BadHeadersAreRefused) {
  const std::string data = floats({1, 2});
  auto err = [&](const std::string& h) { return error_of(write(h, data)); };
  // Not a header at all: a huge length, as any other file's first 8 bytes would give.
  EXPECT_HAS(error_of(write("{}", "", int64_t(1) << 40)), "limit (not a safetensors file?)");
  EXPECT_HAS(err("[1, 2]"), "must start with '{'");
  EXPECT_HAS(err(R"({"a": {"dtype": "F32", )"), "not valid JSON");
  EXPECT_HAS(err(R"({"a":{"dtype":"F8","shape":[2],"data_offsets":[0,8]}})"),
             "tensor 'a': unsupported dtype 'F8'");
  EXPECT_HAS(err(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})"),
             "tensor 'a': shape [-2]");
  EXPECT_HAS(err(R"({"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})"), "tensor 'a'");
  EXPECT_HAS(err(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})"),
             "end before they begin");
  EXPECT_HAS(err(R"({"a":{"dtype":"F32","shape":[2]}})"), "needs the fields");
  EXPECT_HAS(err(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})"),
             "unknown field 'x'");
  EXPECT_HAS(err(R"({"a":[1,2]})"), "tensor 'a': expected an object");
  EXPECT_HAS(
      err(R"({"__metadata__":{"k":3},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})"),
      "'__metadata__' entry 'k'");
  EXPECT_HAS(err(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                 R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})"),
             "names tensor 'a' twice");
  // Shapes whose element count overflows 64 bits.
  EXPECT_HAS(
      err(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})"),
      "more elements than");
}

TEST_F(Safetensors, WrongShapeIsRefused) {
  // [2, 3] of F32 is 24 bytes, but the offsets hold 8.
  const std::string e = error_of(
      write(R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,8]}})", floats({1, 2})));
  EXPECT_HAS(e, "tensor 'w': shape [2,3] of F32 needs 24 bytes but data_offsets [0, 8] hold 8");
}

TEST_F(Safetensors, OverlapsAndGapsAreRefused) {
  const std::string data = floats({1, 2, 3, 4});
  EXPECT_HAS(error_of(write(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},)"
                            R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                            data)),
             "tensor 'b' (data_offsets [8, 16]) overlaps tensor 'a'");
  EXPECT_HAS(error_of(write(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                            R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                            data)),
             "bytes [4, 8) of the data section belong to no tensor");
  EXPECT_HAS(error_of(write(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", data)),
             "the last 12 bytes of the data section belong to no tensor");
}

TEST_F(Safetensors, DirectoriesAndMissingFilesAreRefused) {
  EXPECT_HAS(error_of(dir_.string()), "is a directory");
  EXPECT_HAS(error_of((dir_ / "nope.safetensors").string()), "cannot open safetensors file");
}

}  // namespace
}  // namespace mmfl::modalities
