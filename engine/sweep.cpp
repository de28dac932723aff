#include "engine/sweep.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "engine/checkpoint.h"
#include "engine/config.h"
#include "engine/dir_lock.h"
#include "mmfl/error.h"

namespace mmfl::engine {

namespace fs = std::filesystem;

namespace {

std::string last_part(const std::string& key) {
  const auto dot = key.rfind('.');
  return dot == std::string::npos ? key : key.substr(dot + 1);
}

// A directory-name-safe spelling of one KEY=VALUE.
std::string name_part(const std::string& key, const std::string& value) {
  std::string s = key + "=" + value;
  for (char& c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-' ||
          c == '='))
      c = '-';
  return s;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string timestamp() {
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y%m%d-%H%M%S", std::localtime(&t));
  return buf;
}

// finished / stopped / pending, from what the run directory holds.
std::string status_of(const fs::path& dir) {
  if (!fs::exists(dir / "config.yaml")) return "pending";
  if (fs::exists(dir / "report.json")) {
    try {
      const auto r = nlohmann::json::parse(read_text(dir / "report.json"));
      if (r.value("finished", false)) return "finished";
    } catch (const nlohmann::json::exception&) {
    }
  }
  return "stopped";
}

std::string last_line(const fs::path& p) {
  std::ifstream in(p);
  std::string line, last;
  while (std::getline(in, line))
    if (!trim_blanks(line).empty()) last = line;
  return last;
}

volatile std::sig_atomic_t g_sweep_interrupted = 0;
void on_sweep_sigint(int) {
  g_sweep_interrupted = 1;
}

}  // namespace

std::vector<SweepRun> expand_sweep(const std::vector<GridAxis>& grid,
                                   const std::vector<uint64_t>& seeds,
                                   const std::vector<std::string>& sets) {
  std::set<std::string> keys, last_parts, set_keys;
  for (const auto& s : sets)
    set_keys.insert(s.substr(0, s.find('=')));
  for (const auto& a : grid) {
    MMFL_CHECK(keys.insert(a.key).second, "--grid key '", a.key, "' is given twice");
    MMFL_CHECK(!set_keys.count(a.key), "key '", a.key,
               "' is given by both --grid and --set; keep one of them");
    last_parts.insert(last_part(a.key));
    MMFL_CHECK(!a.values.empty(), "--grid key '", a.key, "' has no values");
    MMFL_CHECK(a.key != "seed", "vary the seed with --seeds, not --grid seed=...");
  }
  std::vector<SweepRun> runs;
  std::vector<size_t> idx(grid.size(), 0);
  while (true) {
    SweepRun base;
    base.overrides = sets;
    std::string name;
    for (size_t i = 0; i < grid.size(); ++i) {
      const auto kv = grid[i].key + "=" + grid[i].values[idx[i]];
      base.overrides.push_back(kv);
      base.setting.push_back(kv);
      // Run names use the keys' last parts unless two keys share one (then the full paths).
      const bool short_names = last_parts.size() == grid.size();
      name += (name.empty() ? "" : "_") +
              name_part(short_names ? last_part(grid[i].key) : grid[i].key, grid[i].values[idx[i]]);
    }
    if (seeds.empty()) {
      base.name = name.empty() ? "run" : name;
      runs.push_back(base);
    }
    for (uint64_t s : seeds) {
      SweepRun r = base;
      r.seed = s;
      r.has_seed = true;
      r.overrides.push_back("seed=" + std::to_string(s));
      r.name = (name.empty() ? "" : name + "_") + "seed=" + std::to_string(s);
      runs.push_back(r);
    }
    // Odometer over the axes, last axis fastest.
    size_t i = grid.size();
    while (i > 0 && ++idx[i - 1] == grid[i - 1].values.size())
      idx[--i] = 0;
    if (i == 0) break;
  }
  // Names are directories: two runs whose values differ only in characters that names spell as
  // '-' would share one (and the second would resume the first).
  std::map<std::string, const SweepRun*> by_name;
  for (const auto& r : runs) {
    const auto [it, fresh] = by_name.emplace(r.name, &r);
    if (fresh) continue;
    auto spell = [](const SweepRun& x) {
      std::string s;
      for (const auto& kv : x.setting)
        s += (s.empty() ? "" : " ") + kv;
      return s;
    };
    MMFL_FAIL("--grid settings '", spell(*it->second), "' and '", spell(r),
              "' would share the run directory '", r.name,
              "' (in run names every character but letters, digits and '.', '_', '-', '=' is "
              "written '-'); give values that differ in those characters, or sweep them apart");
  }
  return runs;
}

SweepSummary run_sweep(const SweepOptions& opts) {
  const auto t_start = std::chrono::steady_clock::now();
  // 1. Every config this sweep will run must parse, before anything runs.
  try {
    load_config(opts.config_path, opts.sets);
  } catch (const Error& e) {
    MMFL_FAIL("--set: ", e.reason());
  }
  for (const auto& a : opts.grid) {
    for (const auto& v : a.values) {
      auto o = opts.sets;
      o.push_back(a.key + "=" + v);
      try {
        load_config(opts.config_path, o);
      } catch (const Error& e) {
        MMFL_FAIL("--grid '", a.key, "=", v, "': ", e.reason());
      }
    }
  }
  const auto runs = expand_sweep(opts.grid, opts.seeds, opts.sets);
  std::vector<std::string> resolved;
  std::map<std::string, std::string> first_with_config;  // resolved config -> run name
  std::string name;
  for (const auto& r : runs) {
    Config c;
    try {
      c = load_config(opts.config_path, r.overrides);
    } catch (const Error& e) {
      MMFL_FAIL("sweep run '", r.name, "': ", e.reason());
    }
    const auto [same, fresh] = first_with_config.emplace(c.resolved_yaml, r.name);
    MMFL_CHECK(fresh, "sweep runs '", same->second, "' and '", r.name,
               "' resolve to the same config (values spelled differently, such as 0.1 and "
               "0.10); drop one of them");
    resolved.push_back(c.resolved_yaml);
    name = c.name;
  }

  // 2. The sweep directory; a restarted sweep must be the same sweep.
  const fs::path dir = opts.out_dir.empty() ? fs::path("sweeps") / (name + "-" + timestamp())
                                            : fs::path(opts.out_dir);
  MMFL_CHECK(!fs::exists(dir) || fs::is_directory(dir), "sweep directory '", dir.string(),
             "' exists and is not a directory; choose another --out");
  MMFL_CHECK(!fs::exists(dir / "config.yaml"), "'", dir.string(),
             "' is a run directory (it holds config.yaml), not a sweep directory; choose another "
             "--out");
  fs::create_directories(dir);
  // One sweep at a time in a directory: two would start the same runs and overwrite each other's
  // index.
  const DirLock lock(dir, "sweep directory");
  for (size_t i = 0; i < runs.size(); ++i) {
    const auto cfg = dir / runs[i].name / "config.yaml";
    MMFL_CHECK(!fs::exists(cfg) || read_text(cfg) == resolved[i], "sweep directory '", dir.string(),
               "': run '", runs[i].name,
               "' was started with another config (its config.yaml differs from what ",
               opts.config_path,
               " and the overrides resolve to now); restore the config or choose another --out");
  }
  std::string mmfl = opts.mmfl_binary;
  if (mmfl.empty()) mmfl = fs::read_symlink("/proc/self/exe").string();
  const int64_t cores = std::max<int64_t>(1, std::thread::hardware_concurrency());
  const int64_t jobs = std::max<int64_t>(1, opts.jobs);
  const int64_t threads = std::max<int64_t>(1, cores / jobs);

  // Runs of earlier invocations with another grid or seeds stay in the index (their
  // directories are kept and `mmfl report` reads them), with their status refreshed.
  nlohmann::json earlier = nlohmann::json::array();
  if (fs::exists(dir / "sweep.json")) {
    try {
      const auto old = nlohmann::json::parse(read_text(dir / "sweep.json"));
      std::set<std::string> now;
      for (const auto& r : runs)
        now.insert(r.name);
      for (const auto* list : {&old["runs"], &old["earlier_runs"]}) {
        if (!list->is_array()) continue;
        for (auto r : *list)
          if (r.is_object() && r.contains("dir") && r["dir"].is_string() &&
              !now.count(r["dir"].get<std::string>()) &&
              fs::exists(dir / r["dir"].get<std::string>())) {
            r["status"] = status_of(dir / r["dir"].get<std::string>());
            earlier.push_back(r);
          }
      }
    } catch (const nlohmann::json::exception&) {
      // A damaged index is rebuilt from the run directories of this invocation.
    }
  }
  std::vector<std::string> status(runs.size());
  std::vector<nlohmann::json> extra(runs.size(), nlohmann::json::object());
  for (size_t i = 0; i < runs.size(); ++i)
    status[i] = status_of(dir / runs[i].name);
  auto write_index = [&] {
    nlohmann::json j;
    j["config"] = opts.config_path;
    j["name"] = name;
    j["sets"] = opts.sets;
    j["grid"] = nlohmann::json::array();
    for (const auto& a : opts.grid)
      j["grid"].push_back({{"key", a.key}, {"values", a.values}});
    j["seeds"] = opts.seeds;
    j["jobs"] = jobs;
    j["threads_per_job"] = threads;
    j["runs"] = nlohmann::json::array();
    for (size_t i = 0; i < runs.size(); ++i) {
      nlohmann::json r = extra[i];
      r["dir"] = runs[i].name;
      r["overrides"] = runs[i].overrides;
      r["setting"] = runs[i].setting;
      if (runs[i].has_seed) r["seed"] = runs[i].seed;
      r["status"] = status[i];
      j["runs"].push_back(r);
    }
    if (!earlier.empty()) j["earlier_runs"] = earlier;
    write_file_atomic((dir / "sweep.json").string(), j.dump(2) + "\n");
  };
  write_index();

  auto say = [&](const std::string& s) {
    if (!opts.quiet) std::cout << s << std::endl;
  };
  std::vector<size_t> todo;
  for (size_t i = 0; i < runs.size(); ++i)
    if (status[i] != "finished") todo.push_back(i);
  say("mmfl: sweep of " + std::to_string(runs.size()) + " runs in " + dir.string() + ": " +
      std::to_string(runs.size() - todo.size()) + " finished, " + std::to_string(todo.size()) +
      " to run, " + std::to_string(jobs) + " at a time with " + std::to_string(threads) +
      " threads each");
  if (opts.limit > 0 && int64_t(todo.size()) > opts.limit) todo.resize(size_t(opts.limit));

  g_sweep_interrupted = 0;
  // Without SA_RESTART, so that a SIGINT sent to the sweep alone interrupts waitpid below.
  struct sigaction sa {
  }, old_sa{};
  sa.sa_handler = on_sweep_sigint;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &old_sa);
  std::map<pid_t, size_t> live;
  std::map<pid_t, std::chrono::steady_clock::time_point> started;
  bool forwarded = false;
  size_t next = 0, done_now = 0;
  while (next < todo.size() || !live.empty()) {
    while (!g_sweep_interrupted && next < todo.size() && int64_t(live.size()) < jobs) {
      const size_t i = todo[next++];
      const fs::path rdir = dir / runs[i].name;
      fs::create_directories(rdir);
      const bool resume = fs::exists(rdir / "config.yaml");
      std::vector<std::string> args = {mmfl, "run"};
      if (resume) {
        args.insert(args.end(), {"--resume", rdir.string()});
      } else {
        args.push_back(opts.config_path);
        for (const auto& o : runs[i].overrides)
          args.insert(args.end(), {"--set", o});
        args.insert(args.end(), {"--out", rdir.string()});
      }
      const std::string log = (rdir / "console.log").string();
      std::cout.flush();
      const pid_t pid = fork();
      MMFL_CHECK(pid >= 0, "sweep: fork failed: ", std::strerror(errno));
      if (pid == 0) {
        // Its own process group: a Ctrl-C at the terminal reaches the sweep alone, which passes
        // exactly one SIGINT on (a second one would end a run while it writes its checkpoint).
        setpgid(0, 0);
        const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
          dup2(fd, 1);
          dup2(fd, 2);
          close(fd);
        }
        const std::string t = std::to_string(threads);
        setenv("OMP_NUM_THREADS", t.c_str(), 1);
        setenv("MKL_NUM_THREADS", t.c_str(), 1);
        std::signal(SIGINT, SIG_DFL);
        std::vector<char*> argv;
        for (auto& a : args)
          argv.push_back(a.data());
        argv.push_back(nullptr);
        execv(argv[0], argv.data());
        std::fprintf(stderr, "mmfl: sweep: cannot execute '%s': %s\n", argv[0],
                     std::strerror(errno));
        _exit(127);
      }
      live[pid] = i;
      started[pid] = std::chrono::steady_clock::now();
      status[i] = "running";
      extra[i].erase("error");
      write_index();
      say("[sweep] " + std::string(resume ? "resuming " : "starting ") + runs[i].name + " (" +
          std::to_string(next) + "/" + std::to_string(todo.size()) + ")");
    }
    if (g_sweep_interrupted && !forwarded) {
      // Each child stops after its current round with a checkpoint (mmfl run's Ctrl-C).
      for (const auto& [pid, i] : live)
        kill(pid, SIGINT);
      forwarded = true;
      say("[sweep] interrupted: waiting for the running runs to checkpoint");
    }
    if (live.empty()) break;
    int wstatus = 0;
    const pid_t pid = waitpid(-1, &wstatus, 0);
    if (pid < 0) {
      if (errno == EINTR) continue;
      MMFL_FAIL("sweep: waitpid failed: ", std::strerror(errno));
    }
    const auto it = live.find(pid);
    if (it == live.end()) continue;
    const size_t i = it->second;
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started[pid]).count();
    live.erase(it);
    const fs::path rdir = dir / runs[i].name;
    const int code = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus);
    status[i] = status_of(rdir);
    // `mmfl run` stopped by SIGINT/SIGTERM checkpoints and exits 130/143: stopped, not failed.
    const bool clean_stop = code == 0 || code == 130 || code == 143;
    if (status[i] == "pending" || (status[i] == "stopped" && !clean_stop)) status[i] = "failed";
    extra[i]["exit_code"] = code;
    extra[i]["wall_s_last_session"] = secs;
    if (status[i] == "failed") extra[i]["error"] = last_line(rdir / "console.log");
    write_index();
    ++done_now;
    char buf[64];
    std::snprintf(buf, sizeof(buf), " in %.0f s", secs);
    const std::string line =
        "[sweep] " + runs[i].name + " " + status[i] + buf +
        (status[i] == "failed" ? ": " + extra[i]["error"].get<std::string>() +
                                     " (log: " + (rdir / "console.log").string() + ")"
                               : "");
    if (status[i] == "failed") {
      std::cerr << line << std::endl;  // --quiet or not: a failure is never silent
    } else {
      say(line);
    }
  }
  sigaction(SIGINT, &old_sa, nullptr);

  SweepSummary s;
  s.dir = dir.string();
  for (size_t i = 0; i < runs.size(); ++i) {
    if (status[i] == "finished")
      ++s.finished;
    else if (status[i] == "stopped")
      ++s.stopped;
    else if (status[i] == "failed")
      ++s.failed;
    else
      ++s.pending;
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  char buf[64];
  std::snprintf(buf, sizeof(buf), " (%.0f s)", secs);
  say("mmfl: sweep " + dir.string() + ": " + std::to_string(s.finished) + " finished, " +
      std::to_string(s.stopped) + " stopped, " + std::to_string(s.failed) + " failed, " +
      std::to_string(s.pending) + " not started" + buf +
      (s.finished < int64_t(runs.size()) ? "; run the same command again to continue" : ""));
  return s;
}

}  // namespace mmfl::engine
