// The round loop of one experiment and its run directory:
//   config.yaml     the resolved config (every default filled in)
//   vocab.txt       the tokenizer's vocabulary
//   metrics.jsonl   one JSON line per round
//   checkpoints/    round_NNNNNN.ckpt every checkpoint.every rounds, at a stop and at the end
//   .lock           flock'ed by the process working on the run; holds its pid
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
  // Resume only: the checkpoint to continue from, a path or a round number; empty = the latest.
  std::string from_checkpoint;
};

struct RunSummary {
  std::string run_dir;
  int64_t rounds_done = 0;
  bool finished = false;  // false when stopped early (--stop-after, Ctrl-C or SIGTERM)
  int signal = 0;         // SIGINT or SIGTERM when a signal stopped the run, else 0
  EvalResult last_eval;
  double oracle_recall[3] = {0, 0, 0};
  double wall_s = 0;
};

// Both hold an exclusive lock on the run directory (<dir>/.lock) while they work: a second
// process gets an mmfl::Error naming the holder's pid. SIGINT and SIGTERM stop the run after the
// current round with a checkpoint (RunSummary::signal says which).
// Starts a new run; refuses a directory that already holds a run.
RunSummary run_experiment(const Config& cfg, const RunOptions& opts);
// Continues the run in `run_dir` from its latest checkpoint (or opts.from_checkpoint; from the
// start if it has none).
RunSummary resume_experiment(const std::string& run_dir, const RunOptions& opts);

}  // namespace mmfl::engine
