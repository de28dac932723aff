// How the ranks of one run talk: one process per rank (per GPU), launched by mpirun. Backends:
// `local` (one rank; every collective is the identity), `mpi` (CPU tensors over MPI; a GPU tensor
// is staged through the host) and `nccl` (GPU tensors over NCCL, whose unique id is broadcast
// over MPI; CPU tensors still go over MPI). Every collective of the mpi and nccl backends is
// non-blocking underneath and polled against `comm.timeout_s`: one that does not finish (a rank
// died or stalled) throws an Error naming this rank and the operation; the CLI then ends every
// rank (abort_all), so no rank hangs.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/config.h"

namespace mmfl::engine::comm {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual std::string backend() const = 0;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Rank among the processes of this machine (which GPU this rank uses).
  virtual int local_rank() const = 0;

  // In place, element-wise sum over the ranks of a contiguous fp32, fp64 or int64 tensor of the
  // same shape on every rank.
  virtual void all_reduce_sum(torch::Tensor& t) = 0;
  // Every rank's `t`, in rank order. Shapes may differ in dim 0 (the trailing dims and the dtype
  // must agree); each result is on t's device.
  virtual std::vector<torch::Tensor> all_gather(const torch::Tensor& t) = 0;
  // Rank `root`'s t into every rank's t (same shape and dtype everywhere).
  virtual void broadcast(torch::Tensor& t, int root) = 0;
  virtual void barrier() = 0;
  // Seconds a collective may take before it is an error (comm.timeout_s).
  virtual void set_timeout(double /*seconds*/) {}

  // Payload bytes this rank sent into collectives (for bytes-per-round metrics).
  int64_t bytes_sent() const { return bytes_sent_; }

 protected:
  int64_t bytes_sent_ = 0;
};

// What the launch says: rank and size from mpirun's environment (Open MPI, MPICH/PMI, Slurm),
// size 1 when the process was not launched by one.
struct LaunchInfo {
  int rank = 0;
  int size = 1;
  bool by_mpirun = false;
};
LaunchInfo launch_info();

// Whether this build has the backend (mpi: MPI found at configure time; nccl: MPI, CUDA and NCCL).
bool built_with(CommBackend b);

// The backend `cfg` asks for, resolved against the launch (auto: mpi under mpirun, nccl when
// `gpu` and NCCL is built, local otherwise). Errors name comm.backend and what to change.
CommBackend resolve_backend(const CommConfig& cfg, const LaunchInfo& launch, bool gpu);

// The process's communicator: installed by init_world, a one-rank local one before that.
Communicator& world();
// Makes world() the backend `cfg` resolves to (MPI is initialized once per process and finalized
// at exit). Calling it again with the same backend keeps the communicator (its timeout updated).
Communicator& init_world(const CommConfig& cfg, bool gpu);
// Ends every rank of the job with `code` (MPI_Abort) when world() spans more than one rank;
// returns without doing anything otherwise.
void abort_all(int code);
// Finalizes MPI if it was initialized (the CLI calls it before a normal exit).
void finalize();

// Makes `c` the world (tests); returns the previous one, which the caller restores.
Communicator* set_world(Communicator* c);

std::unique_ptr<Communicator> make_local();

}  // namespace mmfl::engine::comm
