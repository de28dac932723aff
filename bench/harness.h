// A small benchmark harness: medians of repeated runs, CPU wall time or CUDA events with an L2
// flush between repeats, a cost model per case (bytes or FLOPs) and the ratio to a baseline and
// to a ceiling measured in the same run. Prints a table and writes JSON records.
#pragma once

#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace mmfl::bench {

struct Timing {
  double median_ms = 0;
  double min_ms = 0;
  int reps = 0;
};

// CPU: `warmup` untimed calls, then `reps` timed calls (wall clock); stops early once
// `budget_s` of timed work is spent (at least one rep; the count is reported).
Timing time_cpu(const std::function<void()>& fn, int warmup, int reps, double budget_s = 10.0);

#ifdef MMFL_HAVE_CUDA
// GPU: CUDA events around each call on the current stream, L2 flushed (a 2x-L2 memset) before
// every timed call, median over `reps`.
Timing time_gpu(const std::function<void()>& fn, int warmup, int reps);
#endif

// One result row: what ran, its cost model, and comparisons.
struct Row {
  std::string op;       // "aggregate", "infonce_fwd_bwd", ...
  std::string backend;  // "cpu", "cuda"
  std::string shape;    // "K=50 n=1048576"
  Timing kernel;
  Timing baseline;     // LibTorch composition of the same math (same device, same run)
  double flops = 0;    // cost model: useful FLOPs, or
  double bytes = 0;    //             bytes that must move
  double ceiling = 0;  // measured ceiling in FLOP/s or B/s (0: none)
  std::string ceiling_name;
  double kernel_peak_mb = -1;  // peak extra device memory, when measured
  double baseline_peak_mb = -1;
  std::string note;
};

class Report {
 public:
  void add(const Row& r);
  void print_header() const;
  nlohmann::json json() const;

 private:
  std::vector<Row> rows_;
};

}  // namespace mmfl::bench
