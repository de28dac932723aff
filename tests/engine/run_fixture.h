// Shared fixture of the end-to-end tests: FashionMNIST from MMFL_DATA_ROOT or Debian's package
// (the tests skip, saying so, without it), a scratch run directory per test, metrics readers.
#pragma once

#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/run.h"

namespace mmfl::engine {

inline std::string data_root() {
  const char* env = std::getenv("MMFL_DATA_ROOT");
  return env ? env : "/usr/share/datasets/fashion-mnist";
}

class RunFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(data_root() + "/train-images-idx3-ubyte.gz"))
      GTEST_SKIP() << "FashionMNIST not found in " << data_root()
                   << " (install dataset-fashion-mnist or set MMFL_DATA_ROOT)";
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    base_ = std::filesystem::temp_directory_path() /
            ("mmfl_" + std::string(info->test_suite_name()) + "_" + info->name() + "_" +
             std::to_string(::getpid()));
    std::filesystem::remove_all(base_);
  }
  void TearDown() override { std::filesystem::remove_all(base_); }

  RunOptions opts(const std::string& sub) const {
    RunOptions o;
    o.out_dir = (base_ / sub).string();
    o.quiet = true;
    return o;
  }

  // metrics.jsonl without the timing fields, which differ between runs; nothing else may.
  static std::vector<nlohmann::json> metrics(const std::string& dir) {
    std::vector<nlohmann::json> out;
    std::ifstream in(dir + "/metrics.jsonl");
    for (std::string line; std::getline(in, line);) {
      auto j = nlohmann::json::parse(line);
      j.erase("wall_s");
      j.erase("clients_per_s");
      j.erase("train_s");
      j.erase("aggregate_s");
      out.push_back(j);
    }
    return out;
  }

  std::filesystem::path base_;
};

}  // namespace mmfl::engine
