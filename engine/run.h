// The round loop of one experiment and its run directory:
//   config.yaml     the resolved config (every default filled in)
//   vocab.txt       the tokenizer's vocabulary
//   metrics.jsonl   one JSON line per round
//   checkpoints/    round_NNNNNN.ckpt every checkpoint.every rounds, at a stop and at the end
//   report.json     the final summary (written atomically when the run stops or finishes)
#pragma once

#include <optional>
#include <string>

#include "engine/config.h"
#include "engine/evaluate.h"

namespace mmfl::engine {

struct RunOptions {
  std::string out_dir;     // empty: runs/<name>-<YYYYmmdd-HHMMSS>
  int64_t stop_after = 0;  // stop after this round with a checkpoint; 0 = run to the end
  bool quiet = false;      // no per-round progress lines
  std::optional<DeviceChoice> device;  // overrides the config's `device`
};

struct RunSummary {
  std::string run_dir;
  int64_t rounds_done = 0;
  bool finished = false;  // false when stopped early (--stop-after or Ctrl-C)
  EvalResult last_eval;
  double oracle_recall[3] = {0, 0, 0};
  double wall_s = 0;
};

// Starts a new run; refuses a directory that already holds a run.
RunSummary run_experiment(const Config& cfg, const RunOptions& opts);
// Continues the run in `run_dir` from its latest checkpoint (or from the start if it has none).
RunSummary resume_experiment(const std::string& run_dir, const RunOptions& opts);

}  // namespace mmfl::engine
