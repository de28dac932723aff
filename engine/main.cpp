// The `mmfl` command line: run an experiment, resume one, or validate a config.
// Bad input (config, paths, data files, a run directory in use) exits with code 2 and one line
// saying what to fix; never a stack trace. A run stopped by SIGINT/SIGTERM exits 130/143.
#include <CLI/CLI.hpp>

#include <csignal>
#include <exception>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "engine/config.h"
#include "engine/run.h"
#include "mmfl/error.h"

namespace {

std::string first_line(const std::string& s) {
  return s.substr(0, s.find('\n'));
}

int run_cli(int argc, char** argv) {
  using namespace mmfl::engine;
  CLI::App app{"mmfl: multimodal federated learning engine"};
  app.require_subcommand(1);

  std::string config_path, resume_dir, out_dir, device, from_checkpoint;
  std::vector<std::string> overrides;
  int64_t stop_after = 0;
  bool quiet = false;
  auto* run = app.add_subcommand("run", "run an experiment (or continue one with --resume)");
  run->add_option("config", config_path, "experiment config (YAML)");
  run->add_option("--set", overrides, "override a config key, e.g. --set train.lr=0.01")
      ->type_name("KEY=VALUE");
  run->add_option("--out", out_dir, "run directory (default runs/<name>-<timestamp>)");
  run->add_option("--device", device, "auto | cpu | cuda (overrides the config's `device`)")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  run->add_option("--resume", resume_dir, "continue the run in this directory from its checkpoint");
  run->add_option("--from-checkpoint", from_checkpoint,
                  "with --resume: continue from this checkpoint (a path or a round number) "
                  "instead of the latest")
      ->type_name("PATH|ROUND");
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

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    std::cerr << "mmfl: error: " << first_line(e.what()) << " (see mmfl --help)" << std::endl;
    return 2;
  }

  if (*validate) {
    const Config cfg = load_config(validate_path, validate_overrides);
    std::cout << cfg.resolved_yaml;
    std::cerr << "mmfl: " << validate_path << " is valid" << std::endl;
    return 0;
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
    s = run_experiment(load_config(config_path, overrides), opts);
  }
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

int main(int argc, char** argv) {
  try {
    return run_cli(argc, argv);
  } catch (const mmfl::Error& e) {
    std::cerr << "mmfl: error: " << first_line(e.reason()) << std::endl;
    return 2;
  } catch (const std::filesystem::filesystem_error& e) {
    // Filesystem trouble (permissions, read-only mounts, names too long) is the user's to fix.
    std::cerr << "mmfl: error: " << e.code().message() << ": '" << e.path1().string() << "'"
              << (e.path2().empty() ? "" : " -> '" + e.path2().string() + "'") << std::endl;
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "mmfl: internal error: " << first_line(e.what()) << std::endl;
    return 1;
  }
}
