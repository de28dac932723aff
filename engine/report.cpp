#include "engine/report.h"

#include <sys/wait.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include "engine/checkpoint.h"
#include "engine/config.h"
#include "mmfl/error.h"

namespace mmfl::engine {

namespace fs = std::filesystem;

namespace {

// P(|T| <= t) for Student's t with integer df, by the finite series of Abramowitz & Stegun
// 26.7.3 / 26.7.4 in theta = atan(t / sqrt(df)): exact up to rounding for every df.
double t_central_prob(double t, int64_t df) {
  const double th = std::atan(t / std::sqrt(double(df)));
  const double c = std::cos(th), s = std::sin(th), c2 = c * c;
  if (df % 2 == 1) {
    if (df == 1) return 2 * th / M_PI;
    double term = c, sum = c;  // c + (2/3) c^3 + (2*4)/(3*5) c^5 + ... up to c^(df-2)
    for (int64_t k = 3; k <= df - 2; k += 2) {
      term *= c2 * double(k - 1) / double(k);
      sum += term;
    }
    return 2 / M_PI * (th + s * sum);
  }
  double term = 1, sum = 1;  // 1 + (1/2) c^2 + (1*3)/(2*4) c^4 + ... up to c^(df-2)
  for (int64_t k = 2; k <= df - 2; k += 2) {
    term *= c2 * double(k - 1) / double(k);
    sum += term;
  }
  return s * sum;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The resolved config spells doubles with every digit (0.050000000000000003); labels read
// better with the shortest spelling that parses back to the same double (0.05).
std::string shortest(const std::string& v) {
  if (v.find_first_of(".eE") == std::string::npos) return v;
  char* end = nullptr;
  const double d = std::strtod(v.c_str(), &end);
  if (end == v.c_str() || *end != '\0' || !std::isfinite(d)) return v;
  char buf[40];
  for (int prec = 1; prec <= 17; ++prec) {
    std::snprintf(buf, sizeof(buf), "%.*g", prec, d);
    if (std::strtod(buf, nullptr) == d) return buf;
  }
  return v;
}

void flatten(const YAML::Node& n, const std::string& prefix,
             std::map<std::string, std::string>& out) {
  if (n.IsMap()) {
    for (const auto& kv : n)
      flatten(kv.second, (prefix.empty() ? "" : prefix + ".") + kv.first.as<std::string>(), out);
  } else if (n.IsSequence()) {
    YAML::Emitter em;
    em << YAML::Flow << n;
    out[prefix] = em.c_str();
  } else if (n.IsScalar()) {
    out[prefix] = shortest(n.Scalar());
  }
}

bool is_run_dir(const fs::path& d) {
  return fs::exists(d / "config.yaml") && fs::exists(d / "metrics.jsonl");
}

void find_runs(const fs::path& d, int depth, std::vector<fs::path>& out) {
  if (is_run_dir(d)) {
    out.push_back(d);
    return;
  }
  if (depth == 0) return;
  std::vector<fs::path> subs;
  for (const auto& e : fs::directory_iterator(d))
    if (e.is_directory()) subs.push_back(e.path());
  std::sort(subs.begin(), subs.end());
  for (const auto& s : subs)
    find_runs(s, depth - 1, out);
}

bool percent_metric(const std::string& m) {
  return m.size() > 4 && (m.rfind("_acc") == m.size() - 4 || m.find("_r1") != std::string::npos ||
                          m.find("_r5") != std::string::npos);
}

std::string cell(const MeanCi& s, double scale, const char* f) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), f, s.mean * scale);
  std::string out = buf;
  if (s.n >= 2) {
    std::string fh = f;  // the half-width without a forced sign
    fh.erase(std::remove(fh.begin(), fh.end(), '+'), fh.end());
    std::snprintf(buf, sizeof(buf), fh.c_str(), s.half * scale);
    out += std::string(" ± ") + buf;
  }
  return out;
}

std::string csv_escape(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s)
    q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

std::string num(double v) {
  if (!std::isfinite(v)) return "";
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.10g", v);
  return buf;
}

nlohmann::json stat_json(const MeanCi& s, const std::vector<double>& values) {
  nlohmann::json j = {{"n", s.n}, {"mean", s.mean}, {"values", values}};
  j["ci95"] = s.n >= 2 ? nlohmann::json(s.half) : nlohmann::json(nullptr);
  return j;
}

}  // namespace

double student_t975(int64_t df) {
  MMFL_CHECK(df >= 1, "student_t975: degrees of freedom must be >= 1, got ", df);
  if (df > 100000) return 1.959963984540054;  // the normal quantile, to 1e-5 of t's
  double lo = 0, hi = 1000;
  for (int i = 0; i < 200 && hi - lo > 1e-13 * hi; ++i) {
    const double mid = 0.5 * (lo + hi);
    (t_central_prob(mid, df) < 0.95 ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

MeanCi mean_ci95(const std::vector<double>& x) {
  MeanCi s;
  s.n = int64_t(x.size());
  s.half = std::numeric_limits<double>::quiet_NaN();
  if (x.empty()) {
    s.mean = std::numeric_limits<double>::quiet_NaN();
    return s;
  }
  double sum = 0;
  for (double v : x)
    sum += v;
  s.mean = sum / double(s.n);
  if (s.n < 2) return s;
  double ss = 0;
  for (double v : x)
    ss += (v - s.mean) * (v - s.mean);
  const double sd = std::sqrt(ss / double(s.n - 1));
  s.half = student_t975(s.n - 1) * sd / std::sqrt(double(s.n));
  return s;
}

bool lower_is_better(const std::string& m) {
  return m.find("loss") != std::string::npos;
}

RunSet collect_runs(const std::vector<std::string>& dirs) {
  MMFL_CHECK(!dirs.empty(), "name at least one run or sweep directory");
  std::vector<fs::path> found;
  for (const auto& d : dirs) {
    MMFL_CHECK(fs::is_directory(d), "'", d, "' is not a directory");
    const size_t before = found.size();
    find_runs(d, 3, found);
    MMFL_CHECK(found.size() > before, "no runs in '", d,
               "' (a run directory holds config.yaml and metrics.jsonl; "
               "make one with mmfl run or mmfl sweep)");
  }
  RunSet set;
  std::set<std::string> seen;
  for (const auto& d : found) {
    if (!seen.insert(fs::weakly_canonical(d).string()).second) continue;
    RunRecord r;
    r.dir = d.string();
    try {
      const auto docs = load_yaml_all(read_text(d / "config.yaml"), (d / "config.yaml").string());
      MMFL_CHECK(docs.size() == 1, "'", (d / "config.yaml").string(),
                 "': expected one YAML document, found ", docs.size());
      flatten(docs[0], "", r.config);
    } catch (const YAML::Exception& e) {
      MMFL_FAIL("'", (d / "config.yaml").string(), "': YAML syntax error at line ", e.mark.line + 1,
                ": ", e.msg);
    }
    MMFL_CHECK(r.config.count("rounds"), "'", (d / "config.yaml").string(), "' has no 'rounds'");
    r.planned_rounds = std::stoll(r.config["rounds"]);
    std::ifstream in(d / "metrics.jsonl");
    int64_t lineno = 0;
    int64_t cut = 0;  // the first line that is not JSON (cut by a crash, or damaged)
    for (std::string line; std::getline(in, line);) {
      ++lineno;
      if (line.empty()) continue;
      try {
        r.rounds.push_back(nlohmann::json::parse(line));
      } catch (const nlohmann::json::exception&) {
        cut = lineno;
        break;
      }
    }
    const int64_t last = r.rounds.empty() ? 0 : r.rounds.back().value("round", int64_t(0));
    if (cut > 0) {
      set.left_out.push_back({r.dir, "metrics.jsonl line " + std::to_string(cut) +
                                         " is not JSON (cut by a crash, or damaged)"});
      continue;
    }
    if (last != r.planned_rounds) {
      set.left_out.push_back({r.dir, "unfinished: " + std::to_string(last) + " of " +
                                         std::to_string(r.planned_rounds) + " rounds"});
      continue;
    }
    set.runs.push_back(std::move(r));
  }
  MMFL_CHECK(!set.runs.empty(), "no finished runs in the ", found.size(),
             " run directories found (", set.left_out.front().first, ": ",
             set.left_out.front().second, ")");
  return set;
}

std::vector<Setting> group_runs(const RunSet& set) {
  auto key_of = [](const RunRecord& r) {
    std::string k;
    for (const auto& [key, value] : r.config)
      if (key != "seed") k += key + "=" + value + "\n";
    return k;
  };
  std::vector<std::string> keys;
  std::vector<Setting> out;
  for (const auto& r : set.runs) {
    const auto k = key_of(r);
    auto it = std::find(keys.begin(), keys.end(), k);
    if (it == keys.end()) {
      keys.push_back(k);
      out.emplace_back();
      it = keys.end() - 1;
    }
    out[size_t(it - keys.begin())].runs.push_back(&r);
  }
  // A setting's runs are its seeds: a second run of one seed (a copied run directory, or the
  // same sweep given twice) would be counted as another sample of the mean and its interval.
  for (const auto& s : out) {
    std::map<std::string, const RunRecord*> by_seed;
    for (const RunRecord* r : s.runs) {
      const std::string seed = r->config.count("seed") ? r->config.at("seed") : "?";
      const auto [it, fresh] = by_seed.emplace(seed, r);
      MMFL_CHECK(fresh, "runs '", it->second->dir, "' and '", r->dir,
                 "' are the same setting with the same seed (", seed,
                 "): a copied or repeated run would count twice in the mean and its confidence "
                 "interval; report only one of them");
    }
  }
  // Label: the config's name and the keys whose values differ between settings of that name.
  for (auto& s : out) {
    const auto& cfg = s.runs.front()->config;
    const std::string name = cfg.count("name") ? cfg.at("name") : "run";
    std::set<std::string> varying;
    for (const auto& o : out) {
      const auto& oc = o.runs.front()->config;
      if ((oc.count("name") ? oc.at("name") : "run") != name) continue;
      std::set<std::string> all;
      for (const auto& kv : cfg)
        all.insert(kv.first);
      for (const auto& kv : oc)
        all.insert(kv.first);
      for (const auto& k : all) {
        if (k == "seed") continue;
        const auto a = cfg.find(k), b = oc.find(k);
        if (a == cfg.end() || b == oc.end() || a->second != b->second) varying.insert(k);
      }
    }
    s.label = name;
    for (const auto& k : varying) {
      const auto it = cfg.find(k);
      s.overrides[k] = it == cfg.end() ? "" : it->second;
      s.label += " " + k + "=" + s.overrides[k];
    }
  }
  return out;
}

Report make_report(const RunSet& set, const std::vector<std::string>& metrics,
                   const std::string& baseline) {
  MMFL_CHECK(!metrics.empty(), "name at least one metric");
  const auto settings = group_runs(set);
  Report rep;
  rep.json["metrics"] = metrics;
  rep.json["settings"] = nlohmann::json::array();
  rep.json["left_out"] = nlohmann::json::array();
  for (const auto& [dir, why] : set.left_out)
    rep.json["left_out"].push_back({{"dir", dir}, {"why", why}});

  std::ostringstream md, csv;
  md << "| setting | seeds |";
  for (const auto& m : metrics)
    md << " " << m << (percent_metric(m) ? " (%)" : "") << " final | best |";
  md << " MB up | MB down | wall s |\n|---|---|";
  for (size_t i = 0; i < metrics.size(); ++i)
    md << "---|---|";
  md << "---|---|---|\n";
  csv << "setting,seeds";
  for (const auto& m : metrics)
    csv << "," << m << "_final_mean," << m << "_final_ci95," << m << "_best_mean," << m
        << "_best_ci95";
  csv << ",bytes_up_mean,bytes_up_ci95,bytes_down_mean,bytes_down_ci95,wall_s_mean,wall_s_ci95\n";

  for (const auto& s : settings) {
    nlohmann::json sj;
    sj["label"] = s.label;
    sj["overrides"] = s.overrides;
    sj["runs"] = nlohmann::json::array();
    for (const auto* r : s.runs)
      sj["runs"].push_back(r->dir);
    md << "| " << s.label << " | " << s.runs.size() << " |";
    csv << csv_escape(s.label) << "," << s.runs.size();
    for (const auto& m : metrics) {
      std::vector<double> finals, bests;
      for (const auto* r : s.runs) {
        bool any = false;
        double last = 0, best = 0;
        for (const auto& line : r->rounds) {
          if (!line.contains(m) || !line[m].is_number()) continue;
          const double v = line[m].get<double>();
          best = !any ? v : lower_is_better(m) ? std::min(best, v) : std::max(best, v);
          last = v;
          any = true;
        }
        if (!any) {
          std::string numeric;
          for (const auto& [key, value] : r->rounds.back().items())
            if (value.is_number()) numeric += (numeric.empty() ? "" : ", ") + key;
          MMFL_FAIL("metric '", m, "' has no numeric value in '", r->dir,
                    "/metrics.jsonl'; its numeric metrics: ", numeric);
        }
        finals.push_back(last);
        bests.push_back(best);
      }
      const auto f = mean_ci95(finals), b = mean_ci95(bests);
      sj["final"][m] = stat_json(f, finals);
      sj["best"][m] = stat_json(b, bests);
      const double scale = percent_metric(m) ? 100 : 1;
      md << " " << cell(f, scale, "%.2f") << " | " << cell(b, scale, "%.2f") << " |";
      csv << "," << num(f.mean) << "," << num(f.half) << "," << num(b.mean) << "," << num(b.half);
    }
    std::vector<double> up, down, wall;
    for (const auto* r : s.runs) {
      double u = 0, d = 0, w = 0;
      for (const auto& line : r->rounds) {
        u += line.value("bytes_up", 0.0);
        d += line.value("bytes_down", 0.0);
        w += line.value("wall_s", 0.0);
      }
      up.push_back(u);
      down.push_back(d);
      wall.push_back(w);
    }
    const auto su = mean_ci95(up), sd = mean_ci95(down), sw = mean_ci95(wall);
    sj["bytes_up"] = stat_json(su, up);
    sj["bytes_down"] = stat_json(sd, down);
    sj["wall_s"] = stat_json(sw, wall);
    md << " " << cell(su, 1e-6, "%.1f") << " | " << cell(sd, 1e-6, "%.1f") << " | "
       << cell(sw, 1, "%.0f") << " |\n";
    csv << "," << num(su.mean) << "," << num(su.half) << "," << num(sd.mean) << "," << num(sd.half)
        << "," << num(sw.mean) << "," << num(sw.half) << "\n";
    rep.json["settings"].push_back(sj);
  }
  if (!baseline.empty()) {
    const Setting* base = nullptr;
    std::string labels;
    for (const auto& s : settings) {
      if (s.label == baseline) base = &s;
      labels += (labels.empty() ? "'" : ", '") + s.label + "'";
    }
    MMFL_CHECK(base, "--baseline '", baseline, "' is not a setting; the settings are ", labels);
    auto final_of = [](const RunRecord& r, const std::string& m) {
      double last = std::numeric_limits<double>::quiet_NaN();
      for (const auto& line : r.rounds)
        if (line.contains(m) && line[m].is_number()) last = line[m].get<double>();
      return last;
    };
    auto seed_of = [](const RunRecord& r) {
      return r.config.count("seed") ? r.config.at("seed") : std::string("?");
    };
    md << "\nDifference to `" << baseline
       << "`, paired by seed (final values):\n\n| setting | pairs |";
    for (const auto& m : metrics)
      md << " " << m << (percent_metric(m) ? " (points)" : "") << " |";
    md << "\n|---|---|";
    for (size_t i = 0; i < metrics.size(); ++i)
      md << "---|";
    md << "\n";
    rep.json["baseline"] = baseline;
    for (size_t k = 0; k < settings.size(); ++k) {
      const auto& s = settings[k];
      if (&s == base) continue;
      std::vector<std::pair<const RunRecord*, const RunRecord*>> pairs;
      for (const auto* r : s.runs)
        for (const auto* b : base->runs)
          if (seed_of(*r) == seed_of(*b)) pairs.push_back({r, b});
      md << "| " << s.label << " | " << pairs.size() << " |";
      for (const auto& m : metrics) {
        std::vector<double> d;
        for (const auto& [r, b] : pairs)
          d.push_back(final_of(*r, m) - final_of(*b, m));
        const auto st = mean_ci95(d);
        rep.json["settings"][k]["vs_baseline"][m] = stat_json(st, d);
        md << " " << (d.empty() ? std::string("-") : cell(st, percent_metric(m) ? 100 : 1, "%+.2f"))
           << " |";
      }
      md << "\n";
    }
  }
  rep.markdown = md.str();
  rep.csv = csv.str();
  return rep;
}

XAxis x_axis_from(const std::string& s) {
  if (s == "round") return XAxis::kRound;
  if (s == "bytes") return XAxis::kBytes;
  if (s == "time") return XAxis::kTime;
  MMFL_FAIL("--x '", s, "': allowed values are round, bytes, time");
}

nlohmann::json make_curves(const RunSet& set, const std::string& metric, XAxis x) {
  const auto settings = group_runs(set);
  nlohmann::json out;
  out["metric"] = metric;
  out["percent"] = percent_metric(metric);
  switch (x) {
    case XAxis::kRound:
      out["x"] = "round";
      out["xlabel"] = "round";
      break;
    case XAxis::kBytes:
      out["x"] = "bytes";
      out["xlabel"] = "communication, up + down, cumulative (MB)";
      break;
    case XAxis::kTime:
      out["x"] = "time";
      out["xlabel"] = "wall time of the rounds, cumulative (s)";
      break;
    default:
      MMFL_FAIL("unknown XAxis ", static_cast<int>(x));
  }
  out["ylabel"] = metric + (percent_metric(metric) ? " (%)" : "");
  out["series"] = nlohmann::json::array();
  bool any_point = false;
  for (const auto& s : settings) {
    // round -> (x per run, y per run)
    std::map<int64_t, std::pair<std::vector<double>, std::vector<double>>> at;
    for (const auto* r : s.runs) {
      double cum_bytes = 0, cum_time = 0;
      for (const auto& line : r->rounds) {
        cum_bytes += line.value("bytes_up", 0.0) + line.value("bytes_down", 0.0);
        cum_time += line.value("wall_s", 0.0);
        if (!line.contains(metric) || !line[metric].is_number()) continue;
        const int64_t round = line.value("round", int64_t(0));
        const double xv = x == XAxis::kRound   ? double(round)
                          : x == XAxis::kBytes ? cum_bytes * 1e-6
                                               : cum_time;
        at[round].first.push_back(xv);
        at[round].second.push_back(line[metric].get<double>());
      }
    }
    nlohmann::json js = {{"label", s.label}, {"n", s.runs.size()}};
    std::vector<double> xs, mean, lo, hi;
    const double scale = percent_metric(metric) ? 100 : 1;
    for (const auto& [round, v] : at) {
      if (v.second.size() != s.runs.size()) continue;  // every seed, or no point
      const auto mx = mean_ci95(v.first), my = mean_ci95(v.second);
      const double half = s.runs.size() >= 2 ? my.half : 0;
      xs.push_back(mx.mean);
      mean.push_back(my.mean * scale);
      lo.push_back((my.mean - half) * scale);
      hi.push_back((my.mean + half) * scale);
    }
    any_point = any_point || !xs.empty();
    js["x"] = xs;
    js["mean"] = mean;
    js["lo"] = lo;
    js["hi"] = hi;
    out["series"].push_back(js);
  }
  MMFL_CHECK(any_point, "metric '", metric, "' is in none of the runs' metrics.jsonl; e.g. '",
             set.runs.front().dir, "' has: ", set.runs.front().rounds.back().dump());
  return out;
}

void plot_runs(const std::vector<std::string>& dirs, const std::string& metric, XAxis x,
               const std::string& out, const std::string& python, const std::string& script) {
  const auto ext = fs::path(out).extension().string();
  MMFL_CHECK(ext == ".png" || ext == ".svg", "--out '", out,
             "': the figure's file name must end in .png or .svg");
  const fs::path parent = fs::path(out).parent_path();
  MMFL_CHECK(parent.empty() || fs::is_directory(parent), "--out '", out, "': the folder '",
             parent.string(), "' does not exist; create it or write the figure elsewhere");
  MMFL_CHECK(!fs::is_directory(out), "--out '", out,
             "' is a folder; give the figure's file name (ending in .png or .svg)");
  const RunSet set = collect_runs(dirs);
  const auto curves = make_curves(set, metric, x);
  MMFL_CHECK(fs::exists(script), "the plot script '", script,
             "' is missing; set MMFL_PLOT_SCRIPT to scripts/plot_runs.py of the mmfl sources");
  const fs::path data =
      fs::temp_directory_path() / ("mmfl_plot_" + std::to_string(::getpid()) + ".json");
  write_file_atomic(data.string(), curves.dump());
  std::vector<std::string> args = {python, script, "--data", data.string(), "--out", out};
  const pid_t pid = fork();
  MMFL_CHECK(pid >= 0, "plot: fork failed");
  if (pid == 0) {
    std::vector<char*> argv;
    for (auto& a : args)
      argv.push_back(a.data());
    argv.push_back(nullptr);
    execvp(argv[0], argv.data());
    std::fprintf(stderr, "mmfl: error: cannot run the Python '%s' (set MMFL_PYTHON)\n", argv[0]);
    _exit(127);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  fs::remove(data);
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  MMFL_CHECK(code != 3, "'", python,
             "' has no matplotlib: run 'make venv' (installs it) or set MMFL_PYTHON to a Python "
             "that has it");
  MMFL_CHECK(code == 0, "the plot script '", script, "' failed (exit code ", code,
             "; its message, if it printed one, is above)");
  MMFL_CHECK(fs::exists(out) && fs::file_size(out) > 0, "the plot script wrote no '", out, "'");
}

}  // namespace mmfl::engine
