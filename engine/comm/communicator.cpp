#include "engine/comm/communicator.h"

#include <cstdlib>
#include <string>

#include "engine/comm/backends.h"
#include "mmfl/error.h"

namespace mmfl::engine::comm {

namespace {

class LocalComm : public Communicator {
 public:
  std::string backend() const override { return "local"; }
  int rank() const override { return 0; }
  int size() const override { return 1; }
  int local_rank() const override { return 0; }
  void all_reduce_sum(torch::Tensor&) override {}
  std::vector<torch::Tensor> all_gather(const torch::Tensor& t) override { return {t}; }
  void broadcast(torch::Tensor&, int root) override {
    MMFL_CHECK(root == 0, "broadcast: root ", root, " of a one-rank communicator");
  }
  void barrier() override {}
};

// The first of `names` set in the environment, as an int; -1 when none is.
int env_int(std::initializer_list<const char*> names) {
  for (const char* n : names)
    if (const char* v = std::getenv(n); v && *v) {
      char* end = nullptr;
      const long x = std::strtol(v, &end, 10);
      if (end && *end == '\0' && x >= 0 && x < (1L << 30)) return int(x);
    }
  return -1;
}

struct World {
  std::unique_ptr<Communicator> owned;
  Communicator* current = nullptr;
  CommBackend backend = CommBackend::kLocal;
};
World& world_state() {
  static World w;
  return w;
}

}  // namespace

std::unique_ptr<Communicator> make_local() {
  return std::make_unique<LocalComm>();
}

LaunchInfo launch_info() {
  LaunchInfo l;
  const int size = env_int({"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "SLURM_NTASKS"});
  const int rank = env_int({"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"});
  if (size >= 1 && rank >= 0) {
    l.size = size;
    l.rank = rank;
    // Slurm's variables alone also describe a plain `srun` of one task; the MPI ones mean mpirun.
    l.by_mpirun = env_int({"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"}) >= 1 || size > 1;
  }
  return l;
}

bool built_with(CommBackend b) {
  switch (b) {
    case CommBackend::kMpi:
      return detail::kHaveMpi;
    case CommBackend::kNccl:
      return detail::kHaveNccl;
    default:
      return true;
  }
}

CommBackend resolve_backend(const CommConfig& cfg, const LaunchInfo& launch, bool gpu) {
  CommBackend b = cfg.backend;
  if (b == CommBackend::kAuto) {
    if (!launch.by_mpirun)
      b = CommBackend::kLocal;
    else if (gpu && built_with(CommBackend::kNccl))
      b = CommBackend::kNccl;
    else
      b = CommBackend::kMpi;
  }
  MMFL_CHECK(built_with(b), "comm.backend '", to_string(b), "': this mmfl was built without ",
             b == CommBackend::kMpi ? "MPI (install libopenmpi-dev, the Makefile's deps do, and "
                                      "rebuild)"
                                    : "NCCL (it needs MPI and the CUDA toolkit's NCCL at build "
                                      "time); use comm.backend: mpi");
  MMFL_CHECK(b != CommBackend::kLocal || launch.size == 1,
             "comm.backend 'local' but mpirun launched ", launch.size,
             " ranks: each would train the whole run alone and write the same run directory; set "
             "comm.backend to auto or mpi, or run without mpirun");
  MMFL_CHECK(b != CommBackend::kNccl || gpu,
             "comm.backend 'nccl' needs the run on a GPU (device: cuda or auto with a GPU "
             "visible); use comm.backend: mpi for CPU runs");
  return b;
}

Communicator& world() {
  auto& w = world_state();
  if (!w.current) {
    w.owned = make_local();
    w.current = w.owned.get();
  }
  return *w.current;
}

Communicator& init_world(const CommConfig& cfg, bool gpu) {
  auto& w = world_state();
  const CommBackend b = resolve_backend(cfg, launch_info(), gpu);
  if (w.owned && w.current == w.owned.get() && w.backend == b) {
    w.current->set_timeout(cfg.timeout_s);
    return *w.current;
  }
  switch (b) {
    case CommBackend::kLocal:
      w.owned = make_local();
      break;
    case CommBackend::kMpi:
      w.owned = detail::make_mpi(cfg.timeout_s);
      break;
    case CommBackend::kNccl:
      w.owned = detail::make_nccl(cfg.timeout_s);
      break;
    default:
      MMFL_FAIL("unknown CommBackend ", static_cast<int>(b));
  }
  w.backend = b;
  w.current = w.owned.get();
  return *w.current;
}

Communicator* set_world(Communicator* c) {
  auto& w = world_state();
  Communicator* prev = w.current;
  w.current = c;
  return prev;
}

void abort_all(int code) {
  if (world().size() > 1) detail::mpi_abort(code);
}

void finalize() {
  auto& w = world_state();
  w.current = nullptr;
  w.owned.reset();
  detail::mpi_finalize();
}

}  // namespace mmfl::engine::comm
