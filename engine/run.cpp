#include "engine/run.h"

#include <torch/cuda.h>
#include <torch/utils.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <thread>

#include "engine/checkpoint.h"
#include "engine/checkpoint_format.h"
#include "engine/comm/distribute.h"
#include "engine/data.h"
#include "engine/dir_lock.h"
#include "engine/population.h"
#include "engine/provenance.h"
#include "engine/strategy.h"
#include "mmfl/error.h"
#include "modalities/file_io.h"

namespace mmfl::engine {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

// The signal (SIGINT or SIGTERM) that asked the run to stop after the current round, or 0.
volatile std::sig_atomic_t g_interrupted = 0;
void on_stop_signal(int sig) {
  g_interrupted = sig;
}

void create_dir(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  MMFL_CHECK(!ec, "cannot create the run directory '", dir.string(), "': ", ec.message(),
             "; choose another --out");
}

bool wants_gpu(DeviceChoice choice) {
  switch (choice) {
    case DeviceChoice::kCpu:
      return false;
    case DeviceChoice::kCuda:
      MMFL_CHECK(torch::cuda::is_available(),
                 "device 'cuda' was asked for but no usable GPU is visible; use --device cpu");
      return true;
    case DeviceChoice::kAuto:
      return torch::cuda::is_available();
    default:
      MMFL_FAIL("unknown DeviceChoice ", static_cast<int>(choice));
  }
}

// The GPU of this rank: its rank on the machine, modulo the GPUs visible.
torch::Device pick_device(DeviceChoice choice) {
  if (!wants_gpu(choice)) return torch::kCPU;
  const int n = int(torch::cuda::device_count());
  return torch::Device(torch::kCUDA, c10::DeviceIndex(comm::world().local_rank() % n));
}

// Testing aid for multi-rank failures: MMFL_FAULT=kill:RANK:ROUND or stall:RANK:ROUND makes that
// rank SIGKILL itself, or stop answering, as that round starts.
void inject_fault(int64_t round) {
  const char* f = std::getenv("MMFL_FAULT");
  if (!f || !*f) return;
  char what[16] = {0};
  int rank = -1;
  long long r = -1;
  const bool parsed = std::sscanf(f, "%15[a-z]:%d:%lld", what, &rank, &r) == 3 &&
                      (std::string(what) == "kill" || std::string(what) == "stall");
  MMFL_CHECK(parsed && rank >= 0 && rank < comm::world().size() && r >= 1, "MMFL_FAULT='", f,
             "': expected kill:RANK:ROUND or stall:RANK:ROUND with RANK in 0..",
             comm::world().size() - 1, " and ROUND >= 1 (unset it for a normal run)");
  if (rank != comm::world().rank() || r != round) return;
  std::cerr << "mmfl: MMFL_FAULT: rank " << rank << " " << what << " in round " << round
            << std::endl;
  if (std::string(what) == "kill") std::raise(SIGKILL);
  if (std::string(what) == "stall") std::this_thread::sleep_for(std::chrono::hours(24));
}

// One rank's string (a path) to every rank.
std::string broadcast_string(const std::string& s) {
  auto& w = comm::world();
  if (w.size() == 1) return s;
  auto n = torch::tensor({int64_t(s.size())}, torch::kInt64);
  w.broadcast(n, 0);
  auto t = torch::zeros({n.item<int64_t>()}, torch::kUInt8);
  if (w.rank() == 0 && !s.empty()) std::memcpy(t.data_ptr(), s.data(), s.size());
  w.broadcast(t, 0);
  return std::string(static_cast<const char*>(t.data_ptr()), size_t(t.numel()));
}

std::string ckpt_name(int64_t round) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "round_%06lld.ckpt", static_cast<long long>(round));
  return buf;
}

// The checkpoint files in `dir` (exactly round_NNNNNN.ckpt), ascending by round.
std::vector<std::pair<int64_t, std::string>> checkpoints_in(const fs::path& dir) {
  std::vector<std::pair<int64_t, std::string>> out;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const int64_t r = checkpoint_round_from_name(e.path().filename().string());
    if (r >= 0 && e.is_regular_file()) out.emplace_back(r, e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// A multi-rank checkpoint's client state, one file per rank beside round_NNNNNN.ckpt:
// round_NNNNNN.rank<R>.state (not a checkpoint name, so never mistaken for one).
std::string shard_name(int64_t round, int rank) {
  return ckpt_name(round).substr(0, ckpt_name(round).size() - 5) + ".rank" + std::to_string(rank) +
         ".state";
}

// Removes a checkpoint and its state shards.
void remove_checkpoint(const fs::path& dir, int64_t round, const std::string& path) {
  fs::remove(path);
  const std::string prefix = ckpt_name(round).substr(0, ckpt_name(round).size() - 5) + ".rank";
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.path().filename().string().rfind(prefix, 0) == 0) fs::remove(e.path());
}

void prune_checkpoints(const fs::path& dir, int64_t keep) {
  const auto all = checkpoints_in(dir);
  for (size_t i = 0; i + size_t(keep) < all.size(); ++i)
    remove_checkpoint(dir, all[i].first, all[i].second);
}

// The tensor of a multi-rank checkpoint that says how many state shards go with it.
constexpr const char* kShardsTensor = "meta/state_shards";
// The tensor of a state shard that says which rank of how many wrote it: [rank, ranks].
constexpr const char* kShardWriterTensor = "meta/shard_writer";

// Adds the client state of `ck`'s shards (if it has any) to `ck`: every shard is read, checked
// (CRC, round, config hash) and merged; each rank's store then keeps the clients it owns.
void read_state_shards(Checkpoint& ck, const std::string& ck_path) {
  const auto it = ck.tensors.find(kShardsTensor);
  if (it == ck.tensors.end()) return;
  const double count = it->second.numel() == 1 ? it->second.item<double>() : -1;
  MMFL_CHECK(count >= 1 && count <= 65536 && count == std::floor(count), "checkpoint '", ck_path,
             "': tensor '", kShardsTensor, "' does not hold a shard count");
  ck.tensors.erase(it);
  ck.shapes.erase(kShardsTensor);
  const fs::path dir = fs::path(ck_path).parent_path();
  for (int r = 0; r < int(count); ++r) {
    const auto path = (dir / shard_name(ck.round, r)).string();
    MMFL_CHECK(fs::exists(path), "checkpoint '", ck_path, "' was written by ", int(count),
               " ranks, but its client state file '", path, "' is missing");
    Checkpoint shard = load_checkpoint(path);
    MMFL_CHECK(shard.round == ck.round && shard.config_hash == ck.config_hash, "'", path,
               "' is not the client state of checkpoint '", ck_path, "' (round ", shard.round,
               ", config ", shard.config_hash, ")");
    // Which rank of how many wrote it (shards of older builds do not say): a shard of the same
    // round written under another rank count holds other clients.
    const auto who = shard.tensors.find(kShardWriterTensor);
    if (who != shard.tensors.end()) {
      const auto w = who->second.to(torch::kDouble);
      const bool ok = w.numel() == 2 && w[0].item<double>() == r && w[1].item<double>() == count;
      MMFL_CHECK(ok, "'", path, "' is not the client state of rank ", r, " of ", int(count),
                 " for checkpoint '", ck_path, "' (it says rank ",
                 w.numel() == 2 ? std::to_string(int64_t(w[0].item<double>())) + " of " +
                                      std::to_string(int64_t(w[1].item<double>()))
                                : std::string("?"),
                 "); restore it");
      shard.tensors.erase(who);
      shard.shapes.erase(kShardWriterTensor);
    }
    for (auto& [name, t] : shard.tensors) {
      MMFL_CHECK(name.rfind("state/", 0) == 0 && !ck.tensors.count(name), "'", path,
                 "' holds tensor '", name, "', which is not client state or is in two shards");
      ck.tensors[name] = t;
    }
  }
}

// Writes all of `line` to the append-only metrics file, checking each call (a full disk is an
// error, never a silently missing row).
void append_checked(int fd, const std::string& line, const fs::path& path) {
  size_t done = 0;
  while (done < line.size()) {
    const ssize_t n = ::write(fd, line.data() + done, line.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = n < 0 ? errno : ENOSPC;
      MMFL_FAIL("cannot write '", path.string(), "': ", std::strerror(err));
    }
    done += size_t(n);
  }
}

// Client ids once each, ascending (a paired client dropped for both towers is one client).
std::vector<int64_t> unique_ids(std::vector<int64_t> ids) {
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

std::string fmt(const char* f, double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), f, v);
  return buf;
}

// Rank 0 alone writes the run directory; every rank trains and takes part in every collective.
class Experiment {
 public:
  Experiment(Config cfg, fs::path dir, const RunOptions& opts)
      : cfg_(std::move(cfg)), dir_(std::move(dir)), opts_(opts) {
    if (!lead()) opts_.quiet = true;
  }

  RunSummary run(bool resume) {
    const auto t_start = Clock::now();
    const auto device = pick_device(opts_.device.value_or(cfg_.device));
    auto& world = comm::world();
    const std::string config_hash = fnv1a_hex(cfg_.resolved_yaml);
    // The run directory is written only once the data, the population and the model are built
    // (and, on a resume, the checkpoint is accepted): input refused there leaves it as it was.
    std::optional<ProvenanceLog> provenance;

    log("mmfl: run '" + cfg_.name + "' in " + dir_.string() + " on " + device.str() +
        (world.size() > 1
             ? " (rank 0 of " + std::to_string(world.size()) + ", comm " + world.backend() + ")"
             : ""));
    const auto vocab = dir_ / "vocab.txt";
    const bool have_vocab = resume && fs::exists(vocab);
    const auto data = load_fmnist_captions(cfg_, device, have_vocab ? vocab.string() : "");
    std::vector<int64_t> pool_labels(size_t(data.pool.size()));
    {
      const auto l = data.pool.labels.cpu();
      std::copy_n(l.data_ptr<int64_t>(), pool_labels.size(), pool_labels.begin());
    }
    const auto population =
        make_population(cfg_.population, pool_labels, data.num_classes, cfg_.seed);
    log("mmfl: " + std::to_string(data.pool.size()) + " client samples, " +
        std::to_string(data.public_set.size()) + " public, " + std::to_string(data.test.size()) +
        " test; " + std::to_string(population.size()) + " clients; " +
        (cfg_.model.text.kind == modalities::TextEncoderKind::kMiniLm
             ? std::string("text: pretrained all-MiniLM-L6-v2 (WordPiece)")
             : "vocabulary " + std::to_string(data.tokenizer->size()) + " words"));

    auto strategy = make_strategy(cfg_, data, dir_.string());

    int64_t start = 0;
    const auto metrics_path = dir_ / "metrics.jsonl";
    // The vocabulary's hash goes into every checkpoint: a resume with another vocab.txt (the
    // model's token ids would mean other words) is refused.
    vocab_hash_ = fnv1a_hex(data.tokenizer->text());
    if (lead()) {
      create_dir(dir_ / "checkpoints");
      if (!resume) write_file_atomic((dir_ / "config.yaml").string(), cfg_.resolved_yaml);
      if (!have_vocab) data.tokenizer->save(vocab.string());
    }
    if (resume) {
      start = load_resume_checkpoint(*strategy, config_hash);
      if (lead()) reconcile_metrics(metrics_path, start);
    }
    if (lead()) provenance.emplace(dir_.string(), device.str(), resume);

    RunSummary sum;
    sum.run_dir = dir_.string();
    std::copy_n(data.oracle_recall, 3, sum.oracle_recall);
    g_interrupted = 0;
    auto old_int = std::signal(SIGINT, on_stop_signal);
    auto old_term = std::signal(SIGTERM, on_stop_signal);
    struct Restore {
      decltype(old_int) i, t;
      ~Restore() {
        std::signal(SIGINT, i);
        std::signal(SIGTERM, t);
      }
    } restore{old_int, old_term};
    const int metrics_fd =
        lead() ? ::open(metrics_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644)
               : ::open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (metrics_fd < 0) {
      const int err = errno;
      MMFL_FAIL("cannot write '", metrics_path.string(), "': ", std::strerror(err));
    }
    struct CloseFd {
      int fd;
      ~CloseFd() { ::close(fd); }
    } close_metrics{metrics_fd};
    int64_t round = start;
    bool evaluated = false;
    eta_.start(start, cfg_.rounds);
    while (round < cfg_.rounds) {
      ++round;
      inject_fault(round);
      const auto t0 = Clock::now();
      const int64_t sent0 = world.bytes_sent();
      const auto ids =
          sample_clients(int64_t(population.size()), cfg_.clients_per_round, cfg_.seed, round);
      std::vector<const ClientSpec*> cohort;
      for (int64_t id : ids)
        cohort.push_back(&population[size_t(id)]);
      const RoundStats st = strategy->run_round(cohort, round);
      const auto skipped = unique_ids(st.skipped);

      nlohmann::json m;
      m["round"] = round;
      m["train_loss"] = st.train_loss;
      m["clients"] = st.clients;
      for (const auto& [key, value] : st.extra.items())
        m[key] = value;
      m["skipped_clients"] = skipped;
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
      // Whether any rank was asked to stop (so that all stop after the same round), and the
      // bytes all ranks sent into collectives this round.
      auto agree = torch::tensor({int64_t(g_interrupted), world.bytes_sent() - sent0});
      world.all_reduce_sum(agree);
      const bool interrupted = agree[0].item<int64_t>() != 0;
      if (interrupted && !g_interrupted) g_interrupted = SIGTERM;
      if (world.size() > 1) {
        m["ranks"] = world.size();
        m["comm_bytes"] = agree[1].item<int64_t>();
      }
      const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
      m["wall_s"] = wall;
      m["clients_per_s"] = double(st.clients) / wall;
      append_checked(metrics_fd, m.dump() + "\n", metrics_path);
      progress(round, m, evaluated);
      // After the row, so the diverged round's numbers are there to look at (a resume drops the
      // row: no checkpoint vouches for it).
      check_round_diverged(round, st.clients, skipped);
      if (evaluated) check_model_healthy(round, sum.last_eval);
      for (int64_t id : skipped)
        log("mmfl: warning: round " + std::to_string(round) + ": client " + std::to_string(id) +
            " sent a non-finite update; it was left out of the average");

      const bool stop = (opts_.stop_after > 0 && round >= opts_.stop_after) || g_interrupted;
      if (round % cfg_.checkpoint_every == 0 || round == cfg_.rounds || stop) {
        // metrics.jsonl reaches the disk before the checkpoint that vouches for its rows.
        if (::fsync(metrics_fd) != 0 && errno != EINVAL && errno != EROFS) {
          const int err = errno;
          MMFL_FAIL("cannot write '", metrics_path.string(), "': ", std::strerror(err));
        }
        Checkpoint ck;
        ck.round = round;
        ck.config_hash = config_hash;
        ck.vocab_hash = vocab_hash_;
        strategy->save(ck);
        if (world.size() > 1) {
          // Each rank writes its clients' state (atomically); once all are on disk, rank 0 writes
          // the checkpoint that names them, so a checkpoint never exists without its shards.
          Checkpoint shard;
          shard.round = round;
          shard.config_hash = config_hash;
          for (auto it = ck.tensors.begin(); it != ck.tensors.end();) {
            if (it->first.rfind("state/", 0) == 0) {
              shard.tensors.insert(*it);
              it = ck.tensors.erase(it);
            } else {
              ++it;
            }
          }
          shard.tensors[kShardWriterTensor] =
              torch::tensor({float(world.rank()), float(world.size())});
          save_checkpoint((dir_ / "checkpoints" / shard_name(round, world.rank())).string(), shard);
          world.barrier();
          ck.tensors[kShardsTensor] = torch::tensor({float(world.size())});
        }
        if (lead()) {
          save_checkpoint((dir_ / "checkpoints" / ckpt_name(round)).string(), ck);
          prune_checkpoints(dir_ / "checkpoints", cfg_.checkpoint_keep);
        }
      }
      if (stop) {
        sum.signal = int(g_interrupted);
        log(std::string("mmfl: ") +
            (g_interrupted == SIGTERM  ? "terminated (SIGTERM)"
             : g_interrupted == SIGINT ? "interrupted"
                                       : "stopped") +
            " after round " + std::to_string(round) + "; continue with: mmfl run --resume " +
            dir_.string());
        break;
      }
    }
    if (!evaluated) {
      sum.last_eval = strategy->evaluate();
      check_model_healthy(round, sum.last_eval);
    }
    sum.rounds_done = round;
    sum.finished = round >= cfg_.rounds;
    sum.wall_s = std::chrono::duration<double>(Clock::now() - t_start).count();
    // The model's description and the clients with state over all ranks (every rank takes part
    // in the sum: each keeps the clients it owns).
    auto model = strategy->describe();
    if (const auto mine = strategy->clients_with_state()) {
      auto n = torch::tensor({*mine}, torch::kInt64);
      if (comm::world().size() > 1) comm::world().all_reduce_sum(n);
      model["clients_with_state"] = n.item<int64_t>();
    }
    if (lead()) {
      write_report(sum, device, *strategy, model);
      provenance->finish(sum.rounds_done, sum.finished);
    }
    return sum;
  }

 private:
  static bool lead() { return comm::world().rank() == 0; }

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

  // The keys that govern divergence, for the strategy in use.
  std::string divergence_keys() const {
    std::ostringstream os;
    os << "lower train.lr (now " << cfg_.train.lr << ") or set train.grad_clip (now "
       << cfg_.train.grad_clip << ")";
    if (cfg_.strategy == StrategyKind::kCreamFl || cfg_.strategy == StrategyKind::kPublicOnly)
      os << ", or lower creamfl.server_lr (now " << cfg_.creamfl.server_lr << ")";
    return os.str();
  }

  // A round in which every client's update was dropped as non-finite trains nothing: the run
  // has diverged, and going on would only print metrics of a frozen or broken model.
  void check_round_diverged(int64_t round, int64_t clients,
                            const std::vector<int64_t>& skipped) const {
    MMFL_CHECK(clients == 0 || int64_t(skipped.size()) < clients, "training diverged in round ",
               round, ": every client's update (", clients,
               " clients) was non-finite and dropped; ", divergence_keys(),
               ", then start the run again");
  }

  void check_model_healthy(int64_t round, const EvalResult& e) const {
    MMFL_CHECK(e.finite, "training diverged by round ", round, ": the ", strategy_model(),
               "'s features are not finite (NaN/Inf); ", divergence_keys(),
               ", then start the run again");
    MMFL_CHECK(!e.collapsed, "training collapsed by round ", round, ": the ", strategy_model(),
               " maps every test input to the same features; ", divergence_keys(),
               ", then start the run again (if the rate is already small, look at the data and "
               "the model's sizes: constant images or a tiny model.embed_dim collapse too)");
  }

  std::string strategy_model() const {
    return cfg_.strategy == StrategyKind::kCreamFl || cfg_.strategy == StrategyKind::kPublicOnly
               ? "server model"
               : "global model";
  }

  // Loads the checkpoint to resume from (opts_.from_checkpoint, else the latest) into
  // `strategy`; returns its round (0 when the run has none). Every field is checked against
  // the run: the round against the file name and the config, the tensors against the model.
  int64_t load_resume_checkpoint(Strategy& strategy, const std::string& config_hash) {
    const auto ck_dir = dir_ / "checkpoints";
    auto& world = comm::world();
    if (world.size() > 1) {
      // Rank 0 chooses (and may remove later checkpoints); the others load what it chose.
      auto chosen = torch::zeros({1}, torch::kInt64);
      if (lead()) chosen[0] = choose_resume_round(ck_dir);
      world.broadcast(chosen, 0);
      const int64_t r = chosen[0].item<int64_t>();
      if (!lead()) {
        if (r == 0) return 0;
        MMFL_CHECK(r > 0, "rank 0 found no checkpoint '", opts_.from_checkpoint,
                   "' to resume from");
        const auto path = (ck_dir / ckpt_name(r)).string();
        Checkpoint ck = load_checkpoint(path);
        read_state_shards(ck, path);
        check_tensors_match(strategy, ck, path);
        strategy.load(ck);
        return r;
      }
      RunOptions& o = opts_;
      if (r > 0) o.from_checkpoint = std::to_string(r);
    }
    return load_chosen_checkpoint(strategy, config_hash, ck_dir);
  }

  // The round rank 0 will resume from (0: none), without loading it.
  int64_t choose_resume_round(const fs::path& ck_dir) const {
    const auto all = checkpoints_in(ck_dir);
    if (!opts_.from_checkpoint.empty()) {
      const std::string& f = opts_.from_checkpoint;
      for (const auto& [r, p] : all) {
        std::error_code ec;
        if (std::to_string(r) == f || fs::equivalent(p, f, ec)) return r;
      }
      return -1;  // load_chosen_checkpoint says what is wrong
    }
    return all.empty() ? 0 : all.back().first;
  }

  int64_t load_chosen_checkpoint(Strategy& strategy, const std::string& config_hash,
                                 const fs::path& ck_dir) {
    const auto all = checkpoints_in(ck_dir);
    std::string ck_path;
    int64_t file_round = 0;
    if (!opts_.from_checkpoint.empty()) {
      const std::string& f = opts_.from_checkpoint;
      const bool is_round =
          !f.empty() && f.size() < 13 &&
          std::all_of(f.begin(), f.end(), [](char c) { return c >= '0' && c <= '9'; });
      for (const auto& [r, p] : all) {
        std::error_code ec;
        if ((is_round && r == std::stoll(f)) || (!is_round && fs::equivalent(p, f, ec))) {
          file_round = r;
          ck_path = p;
        }
      }
      std::string have;
      for (const auto& [r, p] : all)
        have += (have.empty() ? "" : ", ") + std::to_string(r);
      MMFL_CHECK(!ck_path.empty(), "--from-checkpoint ", f, ": no such checkpoint in '",
                 ck_dir.string(), "' (rounds there: ", have.empty() ? "none" : have, ")");
    } else if (!all.empty()) {
      std::tie(file_round, ck_path) = all.back();
    } else {
      log("mmfl: no checkpoint in " + ck_dir.string() + "; starting at round 1");
      return 0;
    }
    Checkpoint ck;
    try {
      ck = load_checkpoint(ck_path);
    } catch (const Error& e) {
      fail_with_earlier(e, all, file_round);
    }
    // The config and the vocabulary are the run's, not one checkpoint's: an earlier checkpoint
    // is no way around a mismatch, so none is offered.
    MMFL_CHECK(ck.config_hash == config_hash, "checkpoint '", ck_path,
               "' belongs to another config (hash ", ck.config_hash, ", config.yaml hashes to ",
               config_hash, "); was '", (dir_ / "config.yaml").string(),
               "' edited? restore it (every checkpoint of the run has the same hash)");
    MMFL_CHECK(ck.vocab_hash.empty() || ck.vocab_hash == vocab_hash_, "'",
               (dir_ / "vocab.txt").string(), "' is not the vocabulary checkpoint '", ck_path,
               "' was trained with (hash ", ck.vocab_hash, ", the file hashes to ", vocab_hash_,
               "); was it edited? restore it (the model's token ids depend on it)");
    try {
      read_state_shards(ck, ck_path);
      MMFL_CHECK(ck.round == file_round, "checkpoint '", ck_path, "' says round ", ck.round,
                 " but is named for round ", file_round);
      MMFL_CHECK(ck.round >= 1 && ck.round <= cfg_.rounds, "checkpoint '", ck_path, "': round ",
                 ck.round, " is outside the run's 1..", cfg_.rounds);
      check_tensors_match(strategy, ck, ck_path);
      try {
        strategy.load(ck);
      } catch (const Error& e) {
        MMFL_FAIL("checkpoint '", ck_path, "': ", e.reason());
      }
    } catch (const Error& e) {
      fail_with_earlier(e, all, file_round);
    }
    // Checkpoints after the chosen one describe rounds that will be trained again.
    for (const auto& [r, p] : all)
      if (r > ck.round) {
        remove_checkpoint(ck_dir, r, p);
        log("mmfl: removed " + p + " (after the checkpoint resumed from)");
      }
    log("mmfl: resuming after round " + std::to_string(ck.round) + " from " + ck_path);
    return ck.round;
  }

  // Rethrows what was wrong with the checkpoint of `file_round`, pointing at the newest earlier
  // checkpoint, if any, as the way on.
  [[noreturn]] void fail_with_earlier(const Error& e,
                                      const std::vector<std::pair<int64_t, std::string>>& all,
                                      int64_t file_round) const {
    std::string earlier;
    for (const auto& [r, p] : all)
      if (r < file_round) earlier = std::to_string(r);
    if (earlier.empty()) throw e;
    MMFL_FAIL(e.reason(), "; resume from an earlier one with --resume ", dir_.string(),
              " --from-checkpoint ", earlier);
  }

  // Every tensor the model saves must be in the checkpoint under its name, with its shape.
  static void check_tensors_match(const Strategy& strategy, const Checkpoint& ck,
                                  const std::string& path) {
    Checkpoint fresh;
    strategy.save(fresh);
    for (const auto& [name, t] : fresh.tensors) {
      const auto it = ck.tensors.find(name);
      MMFL_CHECK(it != ck.tensors.end(), "checkpoint '", path, "' lacks tensor '", name, "'");
      const auto want = t.sizes().vec();
      const auto sh = ck.shapes.find(name);
      const auto got = sh != ck.shapes.end() ? sh->second : it->second.sizes().vec();
      MMFL_CHECK(got == want, "checkpoint '", path, "': tensor '", name, "' has shape ",
                 c10::IntArrayRef(got), ", the model's is ", c10::IntArrayRef(want));
      // The model's weights are finite in a run that goes on: NaN or Inf there is damage the CRC
      // did not catch (a file rewritten with a valid CRC), and would show up as divergence a
      // round later. (Client state may hold what a dropped client sent: not checked.)
      MMFL_CHECK(name.rfind("state/", 0) == 0 || it->second.isfinite().all().item<bool>(),
                 "checkpoint '", path, "': tensor '", name,
                 "' holds values that are not finite (NaN/Inf)");
    }
  }

  // Makes metrics.jsonl hold exactly one row for each of rounds 1..`round` (the checkpoint
  // resumed from): later rows are dropped (they are trained again), a row cut by a crash at the
  // end is dropped, and a missing, repeated or unreadable row is an error.
  static void reconcile_metrics(const fs::path& path, int64_t round) {
    if (!fs::exists(path)) {
      MMFL_CHECK(round == 0, "'", path.string(), "' is missing, but the checkpoint is at round ",
                 round, "; restore it or start the run again");
      return;
    }
    const std::string text =
        modalities::read_regular_file(path.string(), uint64_t(1) << 30, "metrics file");
    std::string kept;
    int64_t next = 1, lineno = 0;
    size_t pos = 0;
    while (pos < text.size()) {
      size_t end = text.find('\n', pos);
      const bool complete = end != std::string::npos;
      if (!complete) end = text.size();
      const std::string line = text.substr(pos, end - pos);
      pos = end + 1;
      ++lineno;
      if (line.empty()) continue;
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception&) {
        // Only the last line can be cut by a crash; it is rewritten anyway.
        MMFL_CHECK(!complete || pos >= text.size(), "'", path.string(), "' line ", lineno,
                   " is not JSON; the file was edited or damaged");
        continue;
      }
      MMFL_CHECK(j.is_object() && j.contains("round") && j["round"].is_number_integer(), "'",
                 path.string(), "' line ", lineno, " has no integer 'round'");
      const int64_t r = j["round"].get<int64_t>();
      if (r > round) continue;
      MMFL_CHECK(r == next, "'", path.string(), "' line ", lineno, " is round ", r, " but round ",
                 next, " was expected (", r < next ? "a repeated" : "a missing",
                 " row); the file was edited or damaged");
      kept += line + "\n";
      ++next;
    }
    MMFL_CHECK(next == round + 1, "'", path.string(), "' ends at round ", next - 1,
               " but the checkpoint is at round ", round,
               "; rows are missing (restore the file or resume from an earlier checkpoint with "
               "--from-checkpoint)");
    write_file_atomic(path.string(), kept);
  }

  void write_report(const RunSummary& s, const torch::Device& device, const Strategy& strategy,
                    const nlohmann::json& model) const {
    nlohmann::json r;
    r["name"] = cfg_.name;
    r["run_dir"] = s.run_dir;
    r["device"] = device.str();
    r["ranks"] = comm::world().size();
    r["comm_backend"] = comm::world().backend();
    r["rounds_done"] = s.rounds_done;
    r["rounds"] = cfg_.rounds;
    r["finished"] = s.finished;
    r["wall_s_this_session"] = s.wall_s;
    r["strategy"] = strategy.name();
    r["model"] = model;
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
  std::string vocab_hash_;  // of the vocabulary (vocab.txt's text)
};

std::string timestamp() {
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y%m%d-%H%M%S", std::localtime(&t));
  return buf;
}

}  // namespace

RunSummary run_experiment(const Config& cfg, const RunOptions& opts) {
  auto& world = comm::init_world(cfg.comm, wants_gpu(opts.device.value_or(cfg.device)));
  // Every rank uses rank 0's directory name (timestamps may differ between processes).
  const fs::path dir = broadcast_string(
      opts.out_dir.empty() ? (fs::path("runs") / (cfg.name + "-" + timestamp())).string()
                           : opts.out_dir);
  std::optional<DirLock> lock;
  const bool new_dir = world.rank() == 0 && !fs::exists(dir);
  if (world.rank() == 0) {
    create_dir(dir);
    lock.emplace(dir, "run directory");
    MMFL_CHECK(!fs::exists(dir / "metrics.jsonl") && !fs::exists(dir / "config.yaml"),
               "run directory '", dir.string(),
               "' already holds a run; continue it with "
               "'mmfl run --resume ",
               dir.string(), "' or choose another --out");
  }
  try {
    return Experiment(cfg, dir, opts).run(false);
  } catch (...) {
    // Refused before the run was written (bad data, a model that cannot be built): the
    // directory this call created goes again, so that the same command can simply be repeated.
    if (new_dir && !fs::exists(dir / "config.yaml")) {
      std::error_code ec;
      fs::remove(dir / ".lock", ec);
      lock.reset();
      fs::remove(dir, ec);  // only if empty
    }
    throw;
  }
}

RunSummary resume_experiment(const std::string& run_dir, const RunOptions& opts) {
  const fs::path dir(run_dir);
  MMFL_CHECK(fs::is_directory(dir) && fs::exists(dir / "config.yaml"), "'", run_dir,
             "' is not a run directory (no "
             "config.yaml); start a run with 'mmfl run CONFIG --out DIR'");
  Config cfg = load_config((dir / "config.yaml").string());
  auto& world = comm::init_world(cfg.comm, wants_gpu(opts.device.value_or(cfg.device)));
  std::optional<DirLock> lock;
  if (world.rank() == 0) lock.emplace(dir, "run directory");
  return Experiment(std::move(cfg), dir, opts).run(true);
}

}  // namespace mmfl::engine
