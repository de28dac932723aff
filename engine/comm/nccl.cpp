#include "engine/comm/backends.h"
#include "mmfl/error.h"

#ifndef MMFL_HAVE_NCCL

namespace mmfl::engine::comm::detail {

std::unique_ptr<Communicator> make_nccl(double) {
  MMFL_FAIL(
      "comm.backend 'nccl': this mmfl was built without NCCL (it needs MPI and the CUDA "
      "toolkit's NCCL at build time); use comm.backend: mpi");
}

}  // namespace mmfl::engine::comm::detail

#else

#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <chrono>
#include <cstdio>
#include <thread>

#include "engine/comm/mpi_comm.h"

namespace mmfl::engine::comm::detail {

namespace {

using Clock = std::chrono::steady_clock;

ncclDataType_t nccl_type(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32:
      return ncclFloat32;
    case torch::kFloat64:
      return ncclFloat64;
    case torch::kInt64:
      return ncclInt64;
    default:
      MMFL_FAIL("comm (nccl): all_reduce_sum: dtype ", t, " is not reduced (fp32, fp64 or int64)");
  }
}

// GPU tensors over NCCL (a non-blocking communicator, polled against the timeout); CPU tensors,
// the bootstrap and the barrier over MPI. Not launched by mpirun, it is one rank without MPI:
// GPU tensors still go through NCCL's collectives (over one GPU, what a GPU machine without MPI
// can check).
class NcclComm : public Communicator {
 public:
  NcclComm(double timeout_s, bool with_mpi) : timeout_s_(timeout_s) {
    if (with_mpi) mpi_ = std::make_unique<MpiComm>(timeout_s);
    int devices = 0;
    MMFL_CHECK(cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0, "comm (nccl): rank ",
               rank(), " sees no GPU");
    device_ = local_rank() % devices;
    c10::cuda::set_device(c10::DeviceIndex(device_));
    ncclUniqueId id;
    if (rank() == 0) check(ncclGetUniqueId(&id), "ncclGetUniqueId");
    if (mpi_) mpi_->broadcast_bytes(&id, sizeof(id), 0, "broadcast of the NCCL unique id");
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    check(ncclCommInitRankConfig(&comm_, size(), id, rank(), &config), "ncclCommInitRankConfig");
    settle("communicator setup", 0);
  }
  ~NcclComm() override {
    if (comm_) ncclCommDestroy(comm_);
  }
  std::string backend() const override { return "nccl"; }
  int rank() const override { return mpi_ ? mpi_->rank() : 0; }
  int size() const override { return mpi_ ? mpi_->size() : 1; }
  int local_rank() const override { return mpi_ ? mpi_->local_rank() : 0; }
  void set_timeout(double s) override {
    timeout_s_ = s;
    if (mpi_) mpi_->set_timeout(s);
  }

  void all_reduce_sum(torch::Tensor& t) override {
    if (!t.is_cuda()) {
      if (mpi_) mpi_->all_reduce_sum(t);
      return;
    }
    MMFL_CHECK(t.is_contiguous(), "comm (nccl): all_reduce_sum needs a contiguous tensor");
    const int64_t bytes = t.numel() * int64_t(t.element_size());
    bytes_sent_ += bytes;
    check(ncclAllReduce(t.data_ptr(), t.data_ptr(), size_t(t.numel()), nccl_type(t.scalar_type()),
                        ncclSum, comm_, stream()),
          "ncclAllReduce");
    settle("all_reduce_sum", bytes);
  }

  std::vector<torch::Tensor> all_gather(const torch::Tensor& t_in) override {
    if (!t_in.is_cuda()) return mpi_ ? mpi_->all_gather(t_in) : std::vector<torch::Tensor>{t_in};
    const auto t = t_in.dim() == 0 ? t_in.reshape({1}) : t_in.contiguous();
    // Row counts over MPI, then one NCCL all-gather of every rank's rows padded to the most.
    const auto rows = torch::tensor({t.size(0)}, torch::kInt64);
    const auto counts = mpi_ ? mpi_->all_gather(rows) : std::vector<torch::Tensor>{rows};
    int64_t max_rows = 0;
    for (const auto& c : counts)
      max_rows = std::max(max_rows, c.item<int64_t>());
    auto shape = t.sizes().vec();
    shape[0] = max_rows;
    auto send = torch::zeros(shape, t.options());
    send.narrow(0, 0, t.size(0)).copy_(t);
    shape.insert(shape.begin(), size());
    auto recv = torch::empty(shape, t.options());
    const int64_t bytes = send.numel() * int64_t(send.element_size());
    bytes_sent_ += bytes;
    check(
        ncclAllGather(send.data_ptr(), recv.data_ptr(), size_t(bytes), ncclUint8, comm_, stream()),
        "ncclAllGather");
    settle("all_gather", bytes * size());
    std::vector<torch::Tensor> out;
    for (int r = 0; r < size(); ++r) {
      auto p = recv[r].narrow(0, 0, counts[size_t(r)].item<int64_t>());
      out.push_back(t_in.dim() == 0 ? p.reshape({}) : p);
    }
    return out;
  }

  void broadcast(torch::Tensor& t, int root) override {
    MMFL_CHECK(root >= 0 && root < size(), "comm (nccl): broadcast from rank ", root, " of ",
               size());
    if (!t.is_cuda()) {
      if (mpi_) mpi_->broadcast(t, root);
      return;
    }
    MMFL_CHECK(t.is_contiguous(), "comm (nccl): broadcast needs a contiguous tensor");
    const int64_t bytes = t.numel() * int64_t(t.element_size());
    if (rank() == root) bytes_sent_ += bytes;
    check(
        ncclBroadcast(t.data_ptr(), t.data_ptr(), size_t(bytes), ncclUint8, root, comm_, stream()),
        "ncclBroadcast");
    settle("broadcast", bytes);
  }

  void barrier() override {
    if (mpi_) mpi_->barrier();
  }

 private:
  cudaStream_t stream() const { return c10::cuda::getCurrentCUDAStream(c10::DeviceIndex(device_)); }

  void check(ncclResult_t rc, const char* op) {
    if (rc == ncclSuccess || rc == ncclInProgress) return;
    MMFL_FAIL("comm (nccl): rank ", rank(), " of ", size(), ": ", op,
              " failed: ", ncclGetErrorString(rc), " (", ncclGetLastError(comm_), ")");
  }

  // Waits for the communicator (and, after a collective, the stream) to finish, polling NCCL's
  // asynchronous error; past the timeout the communicator is aborted and an Error names the op.
  void settle(const char* op, int64_t bytes) {
    const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                             std::chrono::duration<double>(timeout_s_));
    for (int64_t polls = 0;; ++polls) {
      ncclResult_t state = ncclSuccess;
      ncclCommGetAsyncError(comm_, &state);
      if (state != ncclSuccess && state != ncclInProgress) {
        ncclCommAbort(comm_);
        comm_ = nullptr;
        MMFL_FAIL("comm (nccl): rank ", rank(), " of ", size(), ": ", op,
                  " failed: ", ncclGetErrorString(state));
      }
      if (state == ncclSuccess && (bytes == 0 || cudaStreamQuery(stream()) == cudaSuccess)) return;
      if (Clock::now() > deadline) {
        ncclCommAbort(comm_);
        comm_ = nullptr;
        char mbs[32];
        std::snprintf(mbs, sizeof(mbs), "%.2f MB", double(bytes) / 1e6);
        MMFL_FAIL(
            "comm (nccl): rank ", rank(), " of ", size(), ": ", op, " (", mbs,
            ") did not finish within comm.timeout_s = ", timeout_s_,
            " s: another rank died or stalled before joining it; every rank is stopped. "
            "Checkpoints already written are intact (with none yet, a resume starts at round 1): "
            "resume with mmfl run --resume");
      }
      if (polls > 256) std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  std::unique_ptr<MpiComm> mpi_;  // null: one rank, not launched by mpirun
  double timeout_s_;
  ncclComm_t comm_ = nullptr;
  int device_ = 0;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl(double timeout_s) {
  return std::make_unique<NcclComm>(timeout_s, launch_info().by_mpirun);
}

}  // namespace mmfl::engine::comm::detail

#endif
