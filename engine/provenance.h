// What a run directory records to be reproduced (provenance.json: one entry per session, a
// resumed run adds one), and the ETA of the console's round line.
#pragma once

#include <chrono>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

namespace mmfl::engine {

// The commit the binary was built from, whether that tree had uncommitted changes, and
// `git describe`, captured at build time (engine/git_info.cmake); "unknown" outside git.
struct BuildInfo {
  std::string commit, describe;
  bool dirty = false;
};
BuildInfo build_info();

// Appends a session to RUN_DIR/provenance.json on construction (start time, build, device,
// threads, torch version, host, command) and completes it in finish() (end time, rounds).
class ProvenanceLog {
 public:
  ProvenanceLog(const std::string& run_dir, const std::string& device, bool resume);
  void finish(int64_t rounds_done, bool finished);

 private:
  void write() const;
  std::string path_;
  nlohmann::json doc_;
};

// Time left, from the mean round time of this session: "ETA 3m12s".
class Eta {
 public:
  void start(int64_t first_round, int64_t total_rounds);
  std::string after(int64_t round) const;

 private:
  std::chrono::steady_clock::time_point t0_;
  int64_t first_ = 0, total_ = 0;
};

std::string utc_now_iso8601();

}  // namespace mmfl::engine
