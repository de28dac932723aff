// `mmfl report` and `mmfl plot`: runs found under directories (single runs, sweeps, folders of
// either) grouped into settings (runs whose resolved configs differ only in the seed), and per
// setting the mean and 95% Student-t confidence interval over seeds of the final and best
// metrics, bytes and wall time; and the per-round curves that `mmfl plot` draws.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace mmfl::engine {

// Two-sided 95% quantile of Student's t with `df` degrees of freedom (t_{0.975, df}).
double student_t975(int64_t df);

struct MeanCi {
  int64_t n = 0;
  double mean = 0;
  double half = 0;  // half-width of the 95% interval; NaN when n < 2
};
MeanCi mean_ci95(const std::vector<double>& x);

struct RunRecord {
  std::string dir;
  std::map<std::string, std::string> config;  // resolved config.yaml, flattened: a.b.c -> value
  std::vector<nlohmann::json> rounds;         // metrics.jsonl, in order
  int64_t planned_rounds = 0;
};

struct Setting {
  std::string label;                             // config name + the keys that vary
  std::map<std::string, std::string> overrides;  // those keys and this setting's values
  std::vector<const RunRecord*> runs;            // one per seed
};

struct RunSet {
  std::vector<RunRecord> runs;                                // finished runs
  std::vector<std::pair<std::string, std::string>> left_out;  // (dir, why)
};

// Every run directory (config.yaml + metrics.jsonl) at or under `dirs` (three levels deep).
// Unfinished runs are left out, saying why; throws when no finished run is found.
RunSet collect_runs(const std::vector<std::string>& dirs);
// Runs grouped by their config without the seed, in the order first seen.
std::vector<Setting> group_runs(const RunSet& set);

// Metrics that are better low (their "best" is the minimum).
bool lower_is_better(const std::string& metric);

struct Report {
  nlohmann::json json;   // settings with every statistic and the values behind it
  std::string markdown;  // the table
  std::string csv;       // one row per setting
};
// With `baseline` (a setting's label), also the difference of every other setting's final
// metrics to it, paired by seed (runs of both settings with the same seed): mean and 95% CI of
// the per-seed differences, which removes the variation the seed causes in both (partition,
// public set, initialization). Seeds missing from either side are left out of the pairs.
Report make_report(const RunSet& set, const std::vector<std::string>& metrics,
                   const std::string& baseline = "");

enum class XAxis { kRound, kBytes, kTime };
XAxis x_axis_from(const std::string& s);  // round | bytes | time
// Per setting: x, and the mean and 95% band of `metric` over seeds at every round where all
// of the setting's runs have it (bytes: cumulative MB up + down; time: cumulative round time).
nlohmann::json make_curves(const RunSet& set, const std::string& metric, XAxis x);

// Draws make_curves(dirs, metric, x) into `out` (.png or .svg) with `script` run by `python`
// (matplotlib); throws with what to fix when there are no runs, the extension is wrong or
// matplotlib is missing.
void plot_runs(const std::vector<std::string>& dirs, const std::string& metric, XAxis x,
               const std::string& out, const std::string& python, const std::string& script);

}  // namespace mmfl::engine
