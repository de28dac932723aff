// Sweeps of a tiny federation through the mmfl binary: a sweep stopped after its first run and
// started again finishes the rest, resumes a stopped run from its checkpoint and leaves the
// finished one untouched; `mmfl plot` draws PNG and SVG files and refuses a folder without runs.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "engine/config.h"
#include "engine/report.h"
#include "engine/run.h"
#include "engine/sweep.h"
#include "mmfl/error.h"
#include "tests/engine/run_fixture.h"

namespace mmfl::engine {
namespace {

namespace fs = std::filesystem;

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class Studies : public RunFixture {
 protected:
  // A 2-round federation of 6 clients: a few seconds a run on one core.
  std::string tiny_config() {
    fs::create_directories(base_);
    const auto path = (base_ / "tiny.yaml").string();
    std::ofstream(path) << R"(name: tiny
seed: 1
rounds: 2
device: cpu
data: {public_size: 300, train_limit: 1200, test_limit: 500, retrieval_pairs: 100}
population: {clients: 6, partition: dirichlet, alpha: 1.0, min_samples: 20}
sampling: {clients_per_round: 3}
model:
  embed_dim: 16
  image_encoder: {kind: mlp, width: 32, depth: 1}
  text_encoder: {kind: bow, width: 16, depth: 1}
train: {lr: 0.05, batch_size: 32, epochs: 1}
checkpoint: {every: 1, keep: 2}
)";
    return path;
  }
  SweepOptions sweep_options(const std::string& config) const {
    SweepOptions o;
    o.config_path = config;
    o.grid = {parse_grid_axis("train.lr=0.05,0.1")};
    o.seeds = {1};
    o.sets = {"data.root=" + data_root()};
    o.out_dir = (base_ / "sweep").string();
    o.mmfl_binary = MMFL_BINARY;
    o.quiet = true;
    return o;
  }
};

TEST_F(Studies, InterruptedSweepFinishesAndKeepsFinishedRuns) {
  const auto config = tiny_config();
  auto o = sweep_options(config);
  o.seeds = {1, 2};
  o.jobs = 2;
  o.limit = 1;  // stop after the first run
  auto s = run_sweep(o);
  EXPECT_EQ(s.finished, 1);
  EXPECT_EQ(s.pending, 3);
  const auto runs = expand_sweep(o.grid, o.seeds, o.sets);
  ASSERT_EQ(runs.size(), 4u);
  const fs::path first = base_ / "sweep" / runs[0].name;
  const std::string first_metrics = slurp(first / "metrics.jsonl");
  const std::string report = slurp(first / "report.json");
  const auto mtime = fs::last_write_time(first / "metrics.jsonl");
  ASSERT_EQ(std::count(first_metrics.begin(), first_metrics.end(), '\n'), 2);

  // The second run was stopped after its first round (as by Ctrl-C or a job time limit).
  RunOptions stop;
  stop.out_dir = (base_ / "sweep" / runs[1].name).string();
  stop.stop_after = 1;
  stop.quiet = true;
  run_experiment(load_config(config, runs[1].overrides), stop);
  auto idx = nlohmann::json::parse(slurp(base_ / "sweep" / "sweep.json"));
  EXPECT_EQ(idx["runs"][0]["status"], "finished");
  EXPECT_EQ(idx["runs"][1]["status"], "pending");

  o.limit = 0;
  s = run_sweep(o);
  EXPECT_EQ(s.finished, 4);
  EXPECT_EQ(s.failed, 0);
  // The finished run was not run again.
  EXPECT_EQ(slurp(first / "metrics.jsonl"), first_metrics);
  EXPECT_EQ(slurp(first / "report.json"), report);
  EXPECT_EQ(fs::last_write_time(first / "metrics.jsonl"), mtime);
  // The stopped one continued from its checkpoint (resume_experiment; its exactness is tested
  // in end_to_end), and has every round once.
  const fs::path second = base_ / "sweep" / runs[1].name;
  EXPECT_NE(slurp(second / "console.log").find("resuming after round 1"), std::string::npos)
      << slurp(second / "console.log");
  const auto m2 = metrics(second.string());
  ASSERT_EQ(m2.size(), 2u);
  EXPECT_EQ(m2[0]["round"], 1);
  EXPECT_EQ(m2[1]["round"], 2);
  // Its provenance: two sessions, the second resumed by the sweep with cores / jobs threads.
  const auto prov = nlohmann::json::parse(slurp(second / "provenance.json"));
  ASSERT_EQ(prov["sessions"].size(), 2u);
  const auto& s0 = prov["sessions"][0];
  const auto& s1 = prov["sessions"][1];
  EXPECT_FALSE(s0["resumed"].get<bool>());
  EXPECT_FALSE(s0["finished"].get<bool>());
  EXPECT_EQ(s0["rounds_done"], 1);
  EXPECT_TRUE(s1["resumed"].get<bool>());
  EXPECT_TRUE(s1["finished"].get<bool>());
  EXPECT_EQ(s1["threads"], 1);  // 2 jobs
  EXPECT_EQ(s1["git_commit"].get<std::string>().size(), 40u);
  EXPECT_TRUE(s1["git_dirty"].is_boolean());
  EXPECT_EQ(s1["torch_version"].get<std::string>().rfind("2.", 0), 0u);
  EXPECT_EQ(s1["device"], "cpu");
  EXPECT_LE(s1["start"].get<std::string>(), s1["end"].get<std::string>());
  EXPECT_NE(slurp(second / "console.log").find("| ETA "), std::string::npos);
  idx = nlohmann::json::parse(slurp(base_ / "sweep" / "sweep.json"));
  ASSERT_EQ(idx["runs"].size(), 4u);
  for (const auto& r : idx["runs"])
    EXPECT_EQ(r["status"], "finished") << r.dump();
  EXPECT_EQ(idx["runs"][3]["overrides"].back(), "seed=2");

  // Started a third time, there is nothing left to do.
  s = run_sweep(o);
  EXPECT_EQ(s.finished, 4);
  EXPECT_EQ(slurp(first / "metrics.jsonl"), first_metrics);

  // Seeds 1-2 again with only the first setting: the index keeps the other setting's runs.
  auto one = o;
  one.grid = {parse_grid_axis("train.lr=0.05")};
  ASSERT_EQ(run_sweep(one).finished, 2);
  idx = nlohmann::json::parse(slurp(base_ / "sweep" / "sweep.json"));
  EXPECT_EQ(idx["runs"].size(), 2u);
  ASSERT_EQ(idx["earlier_runs"].size(), 2u);
  EXPECT_EQ(idx["earlier_runs"][0]["status"], "finished");

  // A sweep directory whose runs came from another config is refused, not mixed.
  o.sets.push_back("train.epochs=2");
  EXPECT_THROW(run_sweep(o), Error);
}

TEST_F(Studies, SigintStopsTheRunningRunsWithACheckpoint) {
  const std::string config = tiny_config(), out = (base_ / "sweep").string(),
                    root = "data.root=" + data_root(), bin = MMFL_BINARY;
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    execl(bin.c_str(), bin.c_str(), "sweep", config.c_str(), "--set", "rounds=1000000", "--set",
          root.c_str(), "--seeds", "1-3", "--jobs", "2", "--quiet", "--out", out.c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  // Both running runs have finished a round: then Ctrl-C (to the sweep alone).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  auto rounds_in = [&](const char* run) {
    std::ifstream in(fs::path(out) / run / "metrics.jsonl");
    return std::count(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>(), '\n');
  };
  while ((rounds_in("seed=1") < 1 || rounds_in("seed=2") < 1) &&
         std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  kill(pid, SIGINT);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  const auto idx = nlohmann::json::parse(slurp(fs::path(out) / "sweep.json"));
  EXPECT_EQ(idx["runs"][0]["status"], "stopped");
  EXPECT_EQ(idx["runs"][1]["status"], "stopped");
  EXPECT_EQ(idx["runs"][2]["status"], "pending");  // not started after the interrupt
  for (const char* run : {"seed=1", "seed=2"}) {
    const auto m = metrics((fs::path(out) / run).string());
    ASSERT_FALSE(m.empty());
    char ck[40];
    std::snprintf(ck, sizeof(ck), "round_%06d.ckpt", m.back()["round"].get<int>());
    EXPECT_TRUE(fs::exists(fs::path(out) / run / "checkpoints" / ck)) << run << " " << ck;
  }
}

TEST_F(Studies, PlotWritesPngAndSvgAndRefusesNoRuns) {
  const std::string py = std::getenv("MMFL_PYTHON") ? std::getenv("MMFL_PYTHON") : MMFL_PYTHON;
  if (std::system((py + " -c 'import matplotlib' 2>/dev/null").c_str()) != 0)
    GTEST_SKIP() << py << " has no matplotlib (make venv installs it)";
  auto o = sweep_options(tiny_config());
  o.seeds = {1, 2};
  ASSERT_EQ(run_sweep(o).finished, 4);
  const std::string bin = MMFL_BINARY;
  const auto err = (base_ / "err.txt").string();
  for (const char* ext : {".png", ".svg"}) {
    const auto out = (base_ / (std::string("fig") + ext)).string();
    const int rc = std::system(
        (bin + " plot " + o.out_dir + " --x bytes --out " + out + " 2> " + err).c_str());
    ASSERT_EQ(WEXITSTATUS(rc), 0) << slurp(err);
    ASSERT_TRUE(fs::exists(out)) << ext;
    EXPECT_GT(fs::file_size(out), 1000u) << ext;
    const auto head = slurp(out).substr(0, 8);
    if (std::string(ext) == ".png")
      EXPECT_EQ(head, "\x89PNG\r\n\x1a\n");
    else
      EXPECT_NE(slurp(out).find("<svg"), std::string::npos);
  }
  // The SVG's legend names the overrides, its axes the units.
  const auto svg = slurp(base_ / "fig.svg");
  EXPECT_NE(svg.find("train.lr=0.05"), std::string::npos);
  EXPECT_NE(svg.find("(MB)"), std::string::npos);

  fs::create_directories(base_ / "empty");
  const int rc = std::system((bin + " plot " + (base_ / "empty").string() + " --out " +
                              (base_ / "x.png").string() + " 2> " + err)
                                 .c_str());
  EXPECT_EQ(WEXITSTATUS(rc), 2);
  EXPECT_NE(slurp(err).find("no runs in '" + (base_ / "empty").string() + "'"), std::string::npos)
      << slurp(err);
  EXPECT_FALSE(fs::exists(base_ / "x.png"));

  // The report over the same sweep: two settings of two seeds each.
  const auto rep = make_report(collect_runs({o.out_dir}), {"image_acc"});
  ASSERT_EQ(rep.json["settings"].size(), 2u);
  EXPECT_EQ(rep.json["settings"][0]["label"], "tiny train.lr=0.05");
  EXPECT_EQ(rep.json["settings"][0]["final"]["image_acc"]["n"], 2);
}

}  // namespace
}  // namespace mmfl::engine
