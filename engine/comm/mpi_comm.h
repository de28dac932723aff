// The mpi backend's communicator (only built with MMFL_HAVE_MPI); the nccl backend uses it for
// its bootstrap and for CPU tensors.
#pragma once

#include <mpi.h>

#include "engine/comm/communicator.h"

namespace mmfl::engine::comm::detail {

class MpiComm : public Communicator {
 public:
  explicit MpiComm(double timeout_s);
  std::string backend() const override { return "mpi"; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return local_rank_; }
  void all_reduce_sum(torch::Tensor& t) override;
  std::vector<torch::Tensor> all_gather(const torch::Tensor& t) override;
  void broadcast(torch::Tensor& t, int root) override;
  void barrier() override;
  void set_timeout(double seconds) override { timeout_s_ = seconds; }
  double timeout_s() const { return timeout_s_; }

  // Broadcast of raw bytes (the nccl backend's unique id).
  void broadcast_bytes(void* data, int64_t bytes, int root, const char* what);
  // Polls `req` until it completes; past the timeout throws an Error naming this rank and `op`.
  void wait(MPI_Request& req, const std::string& op, int64_t bytes);

 private:
  int rank_ = 0, size_ = 1, local_rank_ = 0;
  double timeout_s_;
};

}  // namespace mmfl::engine::comm::detail
