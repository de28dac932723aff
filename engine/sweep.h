// `mmfl sweep`: the cross product of a grid of config overrides and a list of seeds, each run in
// its own directory under one sweep directory, indexed by sweep.json. Every run is a child
// process (`mmfl run` / `mmfl run --resume`), so one crashing run does not end the sweep; a
// sweep started again keeps finished runs and resumes stopped ones from their checkpoints.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mmfl::engine {

struct GridAxis {
  std::string key;                  // dotted config key, e.g. creamfl.kd_weight
  std::vector<std::string> values;  // YAML scalars, in the order given
};

// "KEY=V1,V2,..." -> axis; throws naming the argument when malformed.
GridAxis parse_grid_axis(const std::string& arg);
// "1-5", "1,3,7", "1-3,10" -> seeds in order, without repeats; throws when malformed.
std::vector<uint64_t> parse_seed_list(const std::string& arg);
// `s` without leading and trailing spaces and tabs.
std::string trim_blanks(const std::string& s);

struct SweepRun {
  std::string name;                    // directory name under the sweep directory
  std::vector<std::string> overrides;  // every --set of this run: sets, grid values, seed
  std::vector<std::string> setting;    // the grid's KEY=VALUE of this run (no seed)
  uint64_t seed = 0;
  bool has_seed = false;  // false: the config's own seed (no --seeds given)
};

// The cross product in a fixed order: the first axis varies slowest, seeds fastest.
std::vector<SweepRun> expand_sweep(const std::vector<GridAxis>& grid,
                                   const std::vector<uint64_t>& seeds,
                                   const std::vector<std::string>& sets);

struct SweepOptions {
  std::string config_path;
  std::vector<GridAxis> grid;
  std::vector<uint64_t> seeds;  // empty: the config's own seed
  std::vector<std::string> sets;
  std::string out_dir;      // empty: sweeps/<name>-<timestamp>
  int64_t jobs = 1;         // runs at once; each gets cores / jobs intra-op threads
  int64_t limit = 0;        // start at most this many runs in this invocation (0: all)
  std::string mmfl_binary;  // the binary that runs each child (default: this process's)
  bool quiet = false;
};

struct SweepSummary {
  std::string dir;
  int64_t finished = 0, stopped = 0, failed = 0, pending = 0;
};

// Checks every expanded config (a bad key or value is refused, naming it, before any run
// starts), then runs what is not finished yet.
SweepSummary run_sweep(const SweepOptions& opts);

}  // namespace mmfl::engine
