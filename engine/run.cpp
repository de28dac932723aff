#include "engine/run.h"

#include <torch/cuda.h>
#include <torch/utils.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/checkpoint.h"
#include "engine/data.h"
#include "engine/population.h"
#include "engine/provenance.h"
#include "engine/strategy.h"
#include "mmfl/error.h"

namespace mmfl::engine {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

volatile std::sig_atomic_t g_interrupted = 0;
void on_sigint(int) {
  g_interrupted = 1;
}

torch::Device pick_device(DeviceChoice choice) {
  switch (choice) {
    case DeviceChoice::kCpu:
      return torch::kCPU;
    case DeviceChoice::kCuda:
      MMFL_CHECK(torch::cuda::is_available(),
                 "device 'cuda' was asked for but no usable GPU is visible; use --device cpu");
      return torch::Device(torch::kCUDA, 0);
    case DeviceChoice::kAuto:
      return torch::cuda::is_available() ? torch::Device(torch::kCUDA, 0)
                                         : torch::Device(torch::kCPU);
    default:
      MMFL_FAIL("unknown DeviceChoice ", static_cast<int>(choice));
  }
}

std::string ckpt_name(int64_t round) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "round_%06lld.ckpt", static_cast<long long>(round));
  return buf;
}

// Latest checkpoint file in `dir` by round number, or empty.
std::string latest_checkpoint(const fs::path& dir) {
  std::string best;
  if (!fs::is_directory(dir)) return best;
  for (const auto& e : fs::directory_iterator(dir)) {
    const auto name = e.path().filename().string();
    if (name.rfind("round_", 0) == 0 && e.path().extension() == ".ckpt" && name > best) best = name;
  }
  return best.empty() ? best : (dir / best).string();
}

void prune_checkpoints(const fs::path& dir, int64_t keep) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".ckpt") names.push_back(e.path().string());
  std::sort(names.begin(), names.end());
  for (size_t i = 0; i + size_t(keep) < names.size(); ++i)
    fs::remove(names[i]);
}

std::string fmt(const char* f, double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), f, v);
  return buf;
}

class Experiment {
 public:
  Experiment(Config cfg, fs::path dir, const RunOptions& opts)
      : cfg_(std::move(cfg)), dir_(std::move(dir)), opts_(opts) {}

  RunSummary run(bool resume) {
    const auto t_start = Clock::now();
    const auto device = pick_device(opts_.device.value_or(cfg_.device));
    fs::create_directories(dir_ / "checkpoints");
    const std::string config_hash = fnv1a_hex(cfg_.resolved_yaml);
    if (!resume) write_file_atomic((dir_ / "config.yaml").string(), cfg_.resolved_yaml);
    ProvenanceLog provenance(dir_.string(), device.str(), resume);

    log("mmfl: run '" + cfg_.name + "' in " + dir_.string() + " on " + device.str());
    const auto vocab = dir_ / "vocab.txt";
    const bool have_vocab = resume && fs::exists(vocab);
    const auto data = load_fmnist_captions(cfg_, device, have_vocab ? vocab.string() : "");
    if (!have_vocab) data.tokenizer->save(vocab.string());
    std::vector<int64_t> pool_labels(size_t(data.pool.size()));
    {
      const auto l = data.pool.labels.cpu();
      std::copy_n(l.data_ptr<int64_t>(), pool_labels.size(), pool_labels.begin());
    }
    const auto population =
        make_population(cfg_.population, pool_labels, data.num_classes, cfg_.seed);
    log("mmfl: " + std::to_string(data.pool.size()) + " client samples, " +
        std::to_string(data.public_set.size()) + " public, " + std::to_string(data.test.size()) +
        " test; " + std::to_string(population.size()) + " clients; vocabulary " +
        std::to_string(data.tokenizer->size()) + " words");

    auto strategy = make_strategy(cfg_, data, dir_.string());

    int64_t start = 0;
    const auto metrics_path = dir_ / "metrics.jsonl";
    if (resume) {
      const std::string ck_path = latest_checkpoint(dir_ / "checkpoints");
      if (!ck_path.empty()) {
        const auto ck = load_checkpoint(ck_path);
        MMFL_CHECK(ck.config_hash == config_hash, "checkpoint '", ck_path,
                   "' belongs to another "
                   "config (hash ",
                   ck.config_hash, ", config.yaml hashes to ", config_hash,
                   "); was config.yaml edited?");
        try {
          strategy->load(ck);
        } catch (const Error& e) {
          MMFL_FAIL("checkpoint '", ck_path, "': ", e.reason());
        }
        start = ck.round;
        log("mmfl: resuming after round " + std::to_string(start) + " from " + ck_path);
      } else {
        log("mmfl: no checkpoint in " + (dir_ / "checkpoints").string() + "; starting at round 1");
      }
      truncate_metrics(metrics_path, start);
    }

    RunSummary sum;
    sum.run_dir = dir_.string();
    std::copy_n(data.oracle_recall, 3, sum.oracle_recall);
    g_interrupted = 0;
    auto old_handler = std::signal(SIGINT, on_sigint);
    std::ofstream metrics(metrics_path, std::ios::app);
    MMFL_CHECK(metrics.good(), "cannot write '", metrics_path.string(), "'");
    int64_t round = start;
    bool evaluated = false;
    eta_.start(start, cfg_.rounds);
    while (round < cfg_.rounds) {
      ++round;
      const auto t0 = Clock::now();
      const auto ids =
          sample_clients(int64_t(population.size()), cfg_.clients_per_round, cfg_.seed, round);
      std::vector<const ClientSpec*> cohort;
      for (int64_t id : ids)
        cohort.push_back(&population[size_t(id)]);
      const RoundStats st = strategy->run_round(cohort, round);

      nlohmann::json m;
      m["round"] = round;
      m["train_loss"] = st.train_loss;
      m["clients"] = st.clients;
      for (const auto& [key, value] : st.extra.items())
        m[key] = value;
      m["skipped_clients"] = st.skipped;
      m["bytes_up"] = st.bytes_up;
      m["bytes_down"] = st.bytes_down;
      evaluated = round % cfg_.eval_every == 0 || round == cfg_.rounds;
      if (evaluated) {
        sum.last_eval = strategy->evaluate();
        const auto& e = sum.last_eval;
        m["image_acc"] = e.image_acc;
        m["text_acc"] = e.text_acc;
        m["i2t_r1"] = e.i2t[0];
        m["i2t_r5"] = e.i2t[1];
        m["i2t_r10"] = e.i2t[2];
        m["t2i_r1"] = e.t2i[0];
        m["t2i_r5"] = e.t2i[1];
        m["t2i_r10"] = e.t2i[2];
      }
      const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
      m["wall_s"] = wall;
      m["clients_per_s"] = double(st.clients) / wall;
      metrics << m.dump() << '\n';
      metrics.flush();
      MMFL_CHECK(metrics.good(), "failed writing '", metrics_path.string(), "' (disk full?)");
      progress(round, m, evaluated);
      for (int64_t id : st.skipped)
        log("mmfl: warning: round " + std::to_string(round) + ": client " + std::to_string(id) +
            " sent a non-finite update; it was left out of the average");

      const bool stop = (opts_.stop_after > 0 && round >= opts_.stop_after) || g_interrupted;
      if (round % cfg_.checkpoint_every == 0 || round == cfg_.rounds || stop) {
        Checkpoint ck;
        ck.round = round;
        ck.config_hash = config_hash;
        strategy->save(ck);
        save_checkpoint((dir_ / "checkpoints" / ckpt_name(round)).string(), ck);
        prune_checkpoints(dir_ / "checkpoints", cfg_.checkpoint_keep);
      }
      if (stop) {
        log(std::string("mmfl: ") + (g_interrupted ? "interrupted" : "stopped") + " after round " +
            std::to_string(round) + "; continue with: mmfl run --resume " + dir_.string());
        break;
      }
    }
    std::signal(SIGINT, old_handler);
    if (!evaluated) sum.last_eval = strategy->evaluate();
    sum.rounds_done = round;
    sum.finished = round >= cfg_.rounds;
    sum.wall_s = std::chrono::duration<double>(Clock::now() - t_start).count();
    write_report(sum, device, *strategy);
    provenance.finish(sum.rounds_done, sum.finished);
    return sum;
  }

 private:
  void log(const std::string& s) const {
    if (!opts_.quiet) std::cout << s << std::endl;
  }

  void progress(int64_t round, const nlohmann::json& m, bool evaluated) const {
    if (opts_.quiet) return;
    std::ostringstream os;
    os << "[round " << round << "/" << cfg_.rounds << "] loss " << fmt("%.4f", m["train_loss"]);
    if (evaluated) {
      os << " | acc img " << fmt("%.1f%%", 100 * m["image_acc"].get<double>()) << " txt "
         << fmt("%.1f%%", 100 * m["text_acc"].get<double>()) << " | i2t R@1/5/10 "
         << fmt("%.1f", 100 * m["i2t_r1"].get<double>()) << "/"
         << fmt("%.1f", 100 * m["i2t_r5"].get<double>()) << "/"
         << fmt("%.1f", 100 * m["i2t_r10"].get<double>()) << " t2i R@1 "
         << fmt("%.1f", 100 * m["t2i_r1"].get<double>());
    }
    os << " | " << fmt("%.1f", m["clients_per_s"]) << " clients/s " << fmt("%.2f s", m["wall_s"])
       << " | " << eta_.after(round);
    std::cout << os.str() << std::endl;
  }

  // Keeps the lines of rounds <= `round` (a resumed run rewrites the rounds after its checkpoint).
  static void truncate_metrics(const fs::path& path, int64_t round) {
    if (!fs::exists(path)) return;
    std::ifstream in(path);
    std::string kept, line;
    int64_t lineno = 0;
    while (std::getline(in, line)) {
      ++lineno;
      if (line.empty()) continue;
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception&) {
        // A line cut by a crash can only be the last; anything later is rewritten anyway.
        continue;
      }
      MMFL_CHECK(j.contains("round"), "'", path.string(), "' line ", lineno, " has no 'round'");
      if (j["round"].get<int64_t>() <= round) kept += line + "\n";
    }
    write_file_atomic(path.string(), kept);
  }

  void write_report(const RunSummary& s, const torch::Device& device,
                    const Strategy& strategy) const {
    nlohmann::json r;
    r["name"] = cfg_.name;
    r["run_dir"] = s.run_dir;
    r["device"] = device.str();
    r["rounds_done"] = s.rounds_done;
    r["rounds"] = cfg_.rounds;
    r["finished"] = s.finished;
    r["wall_s_this_session"] = s.wall_s;
    r["strategy"] = strategy.name();
    r["model"] = strategy.describe();
    const auto& e = s.last_eval;
    r["final"] = {{"image_acc", e.image_acc}, {"text_acc", e.text_acc}, {"i2t_r1", e.i2t[0]},
                  {"i2t_r5", e.i2t[1]},       {"i2t_r10", e.i2t[2]},    {"t2i_r1", e.t2i[0]},
                  {"t2i_r5", e.t2i[1]},       {"t2i_r10", e.t2i[2]}};
    r["retrieval_ceiling"] = {
        {"r1", s.oracle_recall[0]}, {"r5", s.oracle_recall[1]}, {"r10", s.oracle_recall[2]}};
    write_file_atomic((dir_ / "report.json").string(), r.dump(2) + "\n");
  }

  Config cfg_;
  fs::path dir_;
  RunOptions opts_;
  Eta eta_;
};

std::string timestamp() {
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y%m%d-%H%M%S", std::localtime(&t));
  return buf;
}

}  // namespace

RunSummary run_experiment(const Config& cfg, const RunOptions& opts) {
  const fs::path dir = opts.out_dir.empty() ? fs::path("runs") / (cfg.name + "-" + timestamp())
                                            : fs::path(opts.out_dir);
  MMFL_CHECK(!fs::exists(dir / "metrics.jsonl") && !fs::exists(dir / "config.yaml"),
             "run directory '", dir.string(),
             "' already holds a run; continue it with "
             "'mmfl run --resume ",
             dir.string(), "' or choose another --out");
  return Experiment(cfg, dir, opts).run(false);
}

RunSummary resume_experiment(const std::string& run_dir, const RunOptions& opts) {
  const fs::path dir(run_dir);
  MMFL_CHECK(fs::exists(dir / "config.yaml"), "'", run_dir,
             "' is not a run directory (no "
             "config.yaml); start a run with 'mmfl run CONFIG --out DIR'");
  Config cfg = load_config((dir / "config.yaml").string());
  return Experiment(std::move(cfg), dir, opts).run(true);
}

}  // namespace mmfl::engine
