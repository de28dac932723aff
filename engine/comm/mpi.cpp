#include "engine/comm/backends.h"
#include "mmfl/error.h"

#ifndef MMFL_HAVE_MPI

namespace mmfl::engine::comm::detail {

std::unique_ptr<Communicator> make_mpi(double) {
  MMFL_FAIL(
      "comm.backend 'mpi': this mmfl was built without MPI (install libopenmpi-dev, the "
      "Makefile's deps do, and rebuild)");
}
void mpi_abort(int) {}
void mpi_finalize() {}

}  // namespace mmfl::engine::comm::detail

#else

#include <chrono>
#include <climits>
#include <cstdio>
#include <thread>

#include "engine/comm/mpi_comm.h"

namespace mmfl::engine::comm::detail {

namespace {

using Clock = std::chrono::steady_clock;

bool g_initialized_here = false;

void check(int rc, const std::string& op) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  MMFL_FAIL("comm (mpi): ", op, " failed: ", std::string(msg, size_t(len)));
}

void ensure_init() {
  int init = 0;
  MPI_Initialized(&init);
  if (init) return;
  int provided = 0;
  check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
  g_initialized_here = true;
  // Errors come back as codes (turned into mmfl errors), not as MPI's own abort.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
}

MPI_Datatype mpi_type(torch::ScalarType t, const char* op) {
  switch (t) {
    case torch::kFloat32:
      return MPI_FLOAT;
    case torch::kFloat64:
      return MPI_DOUBLE;
    case torch::kInt64:
      return MPI_INT64_T;
    default:
      MMFL_FAIL("comm (mpi): ", op, ": dtype ", t, " is not reduced (fp32, fp64 or int64)");
  }
}

std::string mb(int64_t bytes) {
  char buf[32];
  if (bytes < 1000000)
    std::snprintf(buf, sizeof(buf), "%lld bytes", static_cast<long long>(bytes));
  else
    std::snprintf(buf, sizeof(buf), "%.2f MB", double(bytes) / 1e6);
  return buf;
}

// MPI counts are ints: messages go in pieces of at most this many elements.
constexpr int64_t kChunk = int64_t(1) << 28;

}  // namespace

MpiComm::MpiComm(double timeout_s) : timeout_s_(timeout_s) {
  ensure_init();
  check(MPI_Comm_rank(MPI_COMM_WORLD, &rank_), "MPI_Comm_rank");
  check(MPI_Comm_size(MPI_COMM_WORLD, &size_), "MPI_Comm_size");
  MPI_Comm node;
  check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node),
        "MPI_Comm_split_type");
  check(MPI_Comm_rank(node, &local_rank_), "MPI_Comm_rank");
  MPI_Comm_free(&node);
}

void MpiComm::wait(MPI_Request& req, const std::string& op, int64_t bytes) {
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                           std::chrono::duration<double>(timeout_s_));
  int64_t polls = 0;
  for (;;) {
    int done = 0;
    check(MPI_Test(&req, &done, MPI_STATUS_IGNORE), op);
    if (done) return;
    if (Clock::now() > deadline)
      MMFL_FAIL(
          "comm (mpi): rank ", rank_, " of ", size_, ": ", op, " (", mb(bytes),
          ") did not finish within comm.timeout_s = ", timeout_s_,
          " s: another rank died or stalled before joining it; every rank is stopped. "
          "Checkpoints already written are intact (with none yet, a resume starts at round 1): "
          "resume with mmfl run --resume (raise "
          "comm.timeout_s if ranks are only slow)");
    // Spin briefly for latency, then yield the core (ranks may share cores).
    if (++polls > 256) std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

void MpiComm::all_reduce_sum(torch::Tensor& t) {
  if (size_ == 1) return;
  MMFL_CHECK(t.is_contiguous(), "comm (mpi): all_reduce_sum needs a contiguous tensor");
  const auto type = mpi_type(t.scalar_type(), "all_reduce_sum");
  torch::Tensor host = t.is_cpu() ? t : t.cpu();
  auto* base = static_cast<char*>(host.data_ptr());
  const int64_t n = host.numel(), es = int64_t(host.element_size());
  bytes_sent_ += n * es;
  for (int64_t off = 0; off < n; off += kChunk) {
    const int count = int(std::min(kChunk, n - off));
    MPI_Request req;
    check(MPI_Iallreduce(MPI_IN_PLACE, base + off * es, count, type, MPI_SUM, MPI_COMM_WORLD, &req),
          "all_reduce_sum");
    wait(req, "all_reduce_sum", n * es);
  }
  if (!t.is_cpu()) t.copy_(host);
}

std::vector<torch::Tensor> MpiComm::all_gather(const torch::Tensor& t_in) {
  if (size_ == 1) return {t_in};
  const auto t = t_in.contiguous();
  const auto host = t.is_cpu() ? t : t.cpu();
  const int64_t rows = host.dim() == 0 ? 1 : host.size(0);
  int64_t trailing = int64_t(host.element_size());  // bytes per row
  for (int64_t d = 1; d < host.dim(); ++d)
    trailing *= host.size(d);
  // Shapes first: every rank's rows and bytes per row (which must agree).
  int64_t mine[2] = {rows, trailing};
  std::vector<int64_t> all(size_t(2 * size_));
  MPI_Request req;
  check(MPI_Iallgather(mine, 2, MPI_INT64_T, all.data(), 2, MPI_INT64_T, MPI_COMM_WORLD, &req),
        "all_gather (sizes)");
  wait(req, "all_gather (sizes)", 16);
  for (int r = 0; r < size_; ++r)
    MMFL_CHECK(all[size_t(2 * r + 1)] == trailing, "comm (mpi): all_gather: rank ", r, " sends ",
               all[size_t(2 * r + 1)], " bytes per row, rank ", rank_, " ", trailing);
  MMFL_CHECK(trailing < INT_MAX, "comm (mpi): all_gather rows of ", trailing, " bytes");
  std::vector<int> counts(static_cast<size_t>(size_)), displs(static_cast<size_t>(size_));
  int64_t total_rows = 0;
  for (int r = 0; r < size_; ++r) {
    const int64_t rr = all[size_t(2 * r)];
    MMFL_CHECK(total_rows + rr < INT_MAX, "comm (mpi): all_gather of more than ", INT_MAX, " rows");
    counts[size_t(r)] = int(rr);
    displs[size_t(r)] = int(total_rows);
    total_rows += rr;
  }
  MPI_Datatype row;
  check(MPI_Type_contiguous(int(trailing), MPI_BYTE, &row), "MPI_Type_contiguous");
  MPI_Type_commit(&row);
  std::vector<int64_t> shape = host.sizes().vec();
  if (shape.empty()) shape = {1};
  shape[0] = total_rows;
  auto out = torch::empty(shape, host.options());
  bytes_sent_ += rows * trailing;
  const int rc = MPI_Iallgatherv(host.data_ptr(), int(rows), row, out.data_ptr(), counts.data(),
                                 displs.data(), row, MPI_COMM_WORLD, &req);
  MPI_Type_free(&row);
  check(rc, "all_gather");
  wait(req, "all_gather", total_rows * trailing);
  std::vector<torch::Tensor> parts;
  for (int r = 0; r < size_; ++r) {
    auto p = out.narrow(0, displs[size_t(r)], counts[size_t(r)]);
    if (t_in.dim() == 0) p = p.reshape({});
    parts.push_back(t_in.is_cpu() ? p : p.to(t_in.device()));
  }
  return parts;
}

void MpiComm::broadcast_bytes(void* data, int64_t bytes, int root, const char* what) {
  auto* base = static_cast<char*>(data);
  if (rank_ == root) bytes_sent_ += bytes;
  int64_t off = 0;
  do {  // at least one call: an empty broadcast is still a collective every rank joins
    const int count = int(std::min(kChunk, bytes - off));
    MPI_Request req;
    check(MPI_Ibcast(base + off, count, MPI_BYTE, root, MPI_COMM_WORLD, &req), what);
    wait(req, what, bytes);
    off += kChunk;
  } while (off < bytes);
}

void MpiComm::broadcast(torch::Tensor& t, int root) {
  MMFL_CHECK(root >= 0 && root < size_, "comm (mpi): broadcast from rank ", root, " of ", size_);
  if (size_ == 1) return;
  MMFL_CHECK(t.is_contiguous(), "comm (mpi): broadcast needs a contiguous tensor");
  torch::Tensor host = t.is_cpu() ? t : t.cpu();
  broadcast_bytes(host.data_ptr(), host.numel() * int64_t(host.element_size()), root, "broadcast");
  if (!t.is_cpu()) t.copy_(host);
}

void MpiComm::barrier() {
  if (size_ == 1) return;
  MPI_Request req;
  check(MPI_Ibarrier(MPI_COMM_WORLD, &req), "barrier");
  wait(req, "barrier", 0);
}

std::unique_ptr<Communicator> make_mpi(double timeout_s) {
  return std::make_unique<MpiComm>(timeout_s);
}

void mpi_abort(int code) {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  if (init && !fin) MPI_Abort(MPI_COMM_WORLD, code);
}

void mpi_finalize() {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  if (init && !fin && g_initialized_here) MPI_Finalize();
}

}  // namespace mmfl::engine::comm::detail

#endif
