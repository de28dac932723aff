#include "bench/harness.h"

#include <algorithm>
#include <chrono>
#include <cstdio>

#ifdef MMFL_HAVE_CUDA
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include "mmfl/kernels/cuda_check.h"
#endif

namespace mmfl::bench {

namespace {

Timing summarize(std::vector<double> ms) {
  Timing t;
  std::sort(ms.begin(), ms.end());
  t.reps = int(ms.size());
  t.min_ms = ms.front();
  t.median_ms =
      ms.size() % 2 ? ms[ms.size() / 2] : 0.5 * (ms[ms.size() / 2 - 1] + ms[ms.size() / 2]);
  return t;
}

std::string rate(const Row& r, const Timing& t) {
  char buf[64];
  if (r.flops > 0) {
    std::snprintf(buf, sizeof(buf), "%8.2f GFLOP/s", r.flops / (t.median_ms * 1e-3) / 1e9);
  } else if (r.bytes > 0) {
    std::snprintf(buf, sizeof(buf), "%8.2f GB/s   ", r.bytes / (t.median_ms * 1e-3) / 1e9);
  } else {
    std::snprintf(buf, sizeof(buf), "%15s", "-");
  }
  return buf;
}

}  // namespace

Timing time_cpu(const std::function<void()>& fn, int warmup, int reps, double budget_s) {
  using Clock = std::chrono::steady_clock;
  for (int i = 0; i < warmup; ++i)
    fn();
  std::vector<double> ms;
  double spent = 0;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = Clock::now();
    fn();
    const double dt = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    ms.push_back(dt);
    spent += dt * 1e-3;
    if (spent > budget_s) break;  // slow cases: fewer reps, reported in the output
  }
  return summarize(ms);
}

#ifdef MMFL_HAVE_CUDA
Timing time_gpu(const std::function<void()>& fn, int warmup, int reps) {
  int dev = 0, l2 = 0;
  MMFL_CUDA_CHECK(cudaGetDevice(&dev));
  MMFL_CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev));
  void* flush = nullptr;
  const size_t flush_bytes = size_t(std::max(l2, 1 << 20)) * 2;
  MMFL_CUDA_CHECK(cudaMalloc(&flush, flush_bytes));
  const cudaStream_t s = c10::cuda::getCurrentCUDAStream().stream();
  cudaEvent_t a, b;
  MMFL_CUDA_CHECK(cudaEventCreate(&a));
  MMFL_CUDA_CHECK(cudaEventCreate(&b));
  for (int i = 0; i < warmup; ++i)
    fn();
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    MMFL_CUDA_CHECK(cudaMemsetAsync(flush, i & 0xff, flush_bytes, s));
    MMFL_CUDA_CHECK(cudaEventRecord(a, s));
    fn();
    MMFL_CUDA_CHECK(cudaEventRecord(b, s));
    MMFL_CUDA_CHECK(cudaEventSynchronize(b));
    float dt = 0;
    MMFL_CUDA_CHECK(cudaEventElapsedTime(&dt, a, b));
    ms.push_back(dt);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  cudaFree(flush);
  return summarize(ms);
}
#endif

void Report::print_header() const {
  std::printf("%-18s %-9s %-26s %11s %15s %11s %8s %9s %s\n", "op", "dev", "shape", "kernel ms",
              "kernel rate", "torch ms", "speedup", "%ceiling", "notes");
}

void Report::add(const Row& r) {
  rows_.push_back(r);
  char ceil[32] = "-";
  if (r.ceiling > 0) {
    const double achieved = r.flops > 0 ? r.flops : r.bytes;
    std::snprintf(ceil, sizeof(ceil), "%.1f%%",
                  100.0 * achieved / (r.kernel.median_ms * 1e-3) / r.ceiling);
  }
  char speed[32] = "-";
  char base[32] = "-";
  if (r.baseline.reps > 0) {
    std::snprintf(speed, sizeof(speed), "%.2fx", r.baseline.median_ms / r.kernel.median_ms);
    std::snprintf(base, sizeof(base), "%.3f", r.baseline.median_ms);
  }
  std::string note = r.note;
  if (r.kernel_peak_mb >= 0)
    note += (note.empty() ? "" : "; ") + std::string("peak MB ") +
            std::to_string(int64_t(r.kernel_peak_mb)) + " vs " +
            (r.baseline_peak_mb >= 0 ? std::to_string(int64_t(r.baseline_peak_mb)) : "-");
  std::printf("%-18s %-9s %-26s %11.3f %15s %11s %8s %9s %s\n", r.op.c_str(), r.backend.c_str(),
              r.shape.c_str(), r.kernel.median_ms, rate(r, r.kernel).c_str(), base, speed, ceil,
              note.c_str());
  std::fflush(stdout);
}

nlohmann::json Report::json() const {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& r : rows_) {
    nlohmann::json j;
    j["op"] = r.op;
    j["backend"] = r.backend;
    j["shape"] = r.shape;
    j["kernel_ms"] = r.kernel.median_ms;
    j["kernel_min_ms"] = r.kernel.min_ms;
    j["kernel_reps"] = r.kernel.reps;
    if (r.baseline.reps > 0) {
      j["baseline_ms"] = r.baseline.median_ms;
      j["speedup"] = r.baseline.median_ms / r.kernel.median_ms;
    }
    if (r.flops > 0) j["flops"] = r.flops;
    if (r.bytes > 0) j["bytes"] = r.bytes;
    if (r.ceiling > 0) {
      j["ceiling"] = r.ceiling;
      j["ceiling_name"] = r.ceiling_name;
      j["fraction_of_ceiling"] =
          (r.flops > 0 ? r.flops : r.bytes) / (r.kernel.median_ms * 1e-3) / r.ceiling;
    }
    if (r.kernel_peak_mb >= 0) j["kernel_peak_mb"] = r.kernel_peak_mb;
    if (r.baseline_peak_mb >= 0) j["baseline_peak_mb"] = r.baseline_peak_mb;
    if (!r.note.empty()) j["note"] = r.note;
    out.push_back(j);
  }
  return out;
}

}  // namespace mmfl::bench
