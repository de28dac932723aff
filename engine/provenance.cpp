#include "engine/provenance.h"

#include <ATen/Parallel.h>
#include <torch/cuda.h>
#include <torch/version.h>
#include <unistd.h>

#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "engine/checkpoint.h"
#include "git_info.h"

namespace mmfl::engine {

namespace fs = std::filesystem;

namespace {

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos && colon + 2 <= line.size()) return line.substr(colon + 2);
    }
  return "unknown";
}

std::string command_line() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  std::string all, arg;
  while (std::getline(in, arg, '\0'))
    all += (all.empty() ? "" : " ") + arg;
  return all;
}

bool is_record(const nlohmann::json& doc) {
  return doc.is_object() && doc.contains("sessions") && doc["sessions"].is_array();
}

}  // namespace

BuildInfo build_info() {
  return BuildInfo{MMFL_GIT_COMMIT, MMFL_GIT_DESCRIBE, MMFL_GIT_DIRTY};
}

std::string utc_now_iso8601() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

ProvenanceLog::ProvenanceLog(const std::string& run_dir, const std::string& device, bool resume)
    : path_((fs::path(run_dir) / "provenance.json").string()) {
  if (resume && fs::exists(path_)) {
    std::ifstream in(path_);
    std::stringstream ss;
    ss << in.rdbuf();
    try {
      doc_ = nlohmann::json::parse(ss.str());
    } catch (const nlohmann::json::exception&) {
      doc_ = nlohmann::json::object();
    }
    // A damaged record is never fatal to the run, and never silently dropped: it is kept beside
    // the new one.
    if (!is_record(doc_)) {
      const std::string kept = path_ + ".damaged";
      std::error_code ec;
      fs::rename(path_, kept, ec);
      std::cerr << "mmfl: warning: '" << path_
                << "' is not a provenance record (edited or damaged); "
                << (ec ? "it is replaced" : "kept as '" + kept + "'")
                << ", and a new record starts with this session" << std::endl;
    }
  }
  if (!is_record(doc_)) doc_ = {{"sessions", nlohmann::json::array()}};
  const BuildInfo b = build_info();
  char host[256] = "unknown";
  gethostname(host, sizeof(host) - 1);
  nlohmann::json s;
  s["start"] = utc_now_iso8601();
  s["end"] = nullptr;
  s["resumed"] = resume;
  s["git_commit"] = b.commit;
  s["git_dirty"] = b.dirty;
  s["mmfl_version"] = b.describe;
  s["torch_version"] = TORCH_VERSION;
  s["device"] = device;
  s["cpu"] = cpu_model();
  s["cuda_devices"] = torch::cuda::device_count();
  s["threads"] = at::get_num_threads();
  s["host"] = host;
  s["command"] = command_line();
  doc_["sessions"].push_back(s);
  write();
}

void ProvenanceLog::finish(int64_t rounds_done, bool finished) {
  auto& s = doc_["sessions"].back();
  s["end"] = utc_now_iso8601();
  s["rounds_done"] = rounds_done;
  s["finished"] = finished;
  write();
}

void ProvenanceLog::write() const {
  write_file_atomic(path_, doc_.dump(2) + "\n");
}

void Eta::start(int64_t first_round, int64_t total_rounds) {
  t0_ = std::chrono::steady_clock::now();
  first_ = first_round;
  total_ = total_rounds;
}

std::string Eta::after(int64_t round) const {
  const int64_t done = round - first_;
  if (done <= 0) return "ETA ?";
  const double per =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count() / double(done);
  const auto left = static_cast<int64_t>(per * double(total_ - round) + 0.5);
  char buf[48];
  if (left >= 3600)
    std::snprintf(buf, sizeof(buf), "ETA %lldh%02lldm", static_cast<long long>(left / 3600),
                  static_cast<long long>(left % 3600 / 60));
  else if (left >= 60)
    std::snprintf(buf, sizeof(buf), "ETA %lldm%02llds", static_cast<long long>(left / 60),
                  static_cast<long long>(left % 60));
  else
    std::snprintf(buf, sizeof(buf), "ETA %llds", static_cast<long long>(left));
  return buf;
}

}  // namespace mmfl::engine
