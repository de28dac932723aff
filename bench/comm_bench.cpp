// mmfl_comm_bench: all-reduce of 1 MB to 1 GB through engine/comm, as nccl-tests reports it.
//   mpirun -n N mmfl_comm_bench [--backend auto|mpi|nccl] [--device cpu|cuda] [--max-mb 1024]
//                               [--iters 5] [--json FILE]
// algbw = bytes / time; busbw = algbw * 2 (N - 1) / N (what each rank's links carry in a ring:
// comparable across rank counts and to the link's bandwidth). Time: the slowest rank's, per
// iteration, after one warm-up. The same run measures the ceiling that bounds ranks of one machine
// over shared memory: this machine's host copy bandwidth (memcpy of the largest buffer); on GPUs
// the device-to-device copy bandwidth.
#include <torch/types.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/comm/communicator.h"
#include "engine/config.h"
#include "mmfl/error.h"

#ifdef MMFL_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace {

using Clock = std::chrono::steady_clock;
namespace comm = mmfl::engine::comm;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

void sync(const torch::Tensor& t) {
#ifdef MMFL_HAVE_CUDA
  if (t.is_cuda()) cudaDeviceSynchronize();
#else
  (void)t;
#endif
}

// Copy bandwidth of `bytes` (read + write counted once each, as STREAM's copy does).
double copy_gbps(int64_t bytes, const torch::Device& dev) {
  auto a = torch::ones({bytes / 4}, torch::TensorOptions().device(dev));
  auto b = torch::empty_like(a);
  b.copy_(a);
  sync(b);
  const int reps = 5;
  const auto t0 = Clock::now();
  for (int i = 0; i < reps; ++i)
    b.copy_(a);
  sync(b);
  return 2.0 * double(bytes) * reps / seconds_since(t0) / 1e9;
}

int run(int argc, char** argv) {
  mmfl::engine::CommConfig cfg;
  std::string device = "cpu", json;
  int64_t max_mb = 1024;
  int iters = 5;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      MMFL_CHECK(i + 1 < argc, a, " needs a value");
      return argv[++i];
    };
    if (a == "--backend") {
      const auto b = next();
      cfg.backend = b == "mpi"    ? mmfl::engine::CommBackend::kMpi
                    : b == "nccl" ? mmfl::engine::CommBackend::kNccl
                    : b == "auto" ? mmfl::engine::CommBackend::kAuto
                                  : (MMFL_FAIL("--backend: auto, mpi or nccl, not '", b, "'"),
                                     mmfl::engine::CommBackend::kAuto);
    } else if (a == "--device") {
      device = next();
      MMFL_CHECK(device == "cpu" || device == "cuda", "--device: cpu or cuda, not '", device, "'");
    } else if (a == "--max-mb") {
      max_mb = std::stoll(next());
    } else if (a == "--iters") {
      iters = std::stoi(next());
    } else if (a == "--json") {
      json = next();
    } else {
      MMFL_FAIL("unknown argument '", a, "' (see the header of bench/comm_bench.cpp)");
    }
  }
  cfg.timeout_s = 600;
  auto& c = comm::init_world(cfg, device == "cuda");
  const torch::Device dev = device == "cuda"
                                ? torch::Device(torch::kCUDA, c10::DeviceIndex(c.local_rank()))
                                : torch::Device(torch::kCPU);
  const int n = c.size();
  const bool lead = c.rank() == 0;
  if (lead)
    std::printf("all_reduce_sum, backend %s, %d rank(s), %s tensors, fp32\n", c.backend().c_str(),
                n, device.c_str());
  const double ceiling = copy_gbps(std::min<int64_t>(max_mb, 256) << 20, dev);
  if (lead) {
    std::printf("copy bandwidth of one rank here: %.1f GB/s (the shared-memory ceiling)\n",
                ceiling);
    std::printf("%10s %12s %12s %12s\n", "size", "time (ms)", "algbw GB/s", "busbw GB/s");
  }
  nlohmann::json rows = nlohmann::json::array();
  for (int64_t mb = 1; mb <= max_mb; mb *= 4) {
    const int64_t bytes = mb << 20;
    auto t = torch::ones({bytes / 4}, torch::TensorOptions().device(dev));
    c.all_reduce_sum(t);  // warm-up (and registers the buffer)
    sync(t);
    const int reps = mb >= 256 ? std::max(1, iters / 2) : iters;
    c.barrier();
    const auto t0 = Clock::now();
    for (int i = 0; i < reps; ++i)
      c.all_reduce_sum(t);
    sync(t);
    // The slowest rank's time.
    auto secs = torch::tensor({seconds_since(t0) / reps}, torch::kFloat64);
    for (const auto& s : c.all_gather(secs))
      secs = torch::maximum(secs, s);
    const double s = secs.item<double>();
    const double alg = double(bytes) / s / 1e9;
    const double bus = n > 1 ? alg * 2.0 * (n - 1) / n : 0.0;
    // Check: every element is the sum over the ranks of the repeated sums (n^(reps+1)).
    const double want = std::pow(double(n), reps + 1);
    MMFL_CHECK(std::abs(t[0].item<double>() - want) <= 1e-6 * want, "all_reduce_sum gave ",
               t[0].item<double>(), ", not ", want);
    if (lead && n == 1)
      std::printf("%7lld MB %12.3f %25s\n", (long long)mb, 1e3 * s, "one rank: nothing moves");
    else if (lead)
      std::printf("%7lld MB %12.3f %12.2f %12.2f\n", (long long)mb, 1e3 * s, alg, bus);
    rows.push_back({{"bytes", bytes}, {"seconds", s}, {"algbw_gbps", alg}, {"busbw_gbps", bus}});
  }
  if (lead && !json.empty())
    std::ofstream(json) << nlohmann::json{{"backend", c.backend()},
                                          {"ranks", n},
                                          {"device", device},
                                          {"copy_gbps", ceiling},
                                          {"rows", rows}}
                               .dump(2)
                        << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const int rc = run(argc, argv);
    comm::finalize();
    return rc;
  } catch (const mmfl::Error& e) {
    std::cerr << "mmfl_comm_bench: error: " << e.what() << std::endl;
    comm::abort_all(2);
    return 2;
  }
}
