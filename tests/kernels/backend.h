// One test body, every backend: the CPU reference, the CUDA code on the SIMT emulator, and the
// CUDA code on a real GPU. This names the backends and gives each a small device-memory API
// (host memory for the CPU reference and the emulator) so a test uploads, runs and downloads
// without caring where it runs.
#pragma once

#include <gtest/gtest.h>

#include <cstddef>
#include <string>
#include <vector>

#include "mmfl/kernels/cpu.h"

namespace mmfl::test {

// kRef: the CPU reference (the oracle); kCpu: the fast CPU path, run on cpu_test_context()'s
// three threads; kSimt: the CUDA code on the emulator; kCuda: on a real GPU.
enum class Backend { kRef, kCpu, kSimt, kCuda };

const char* backend_name(Backend backend);  // "ref", "cpu", "simt", "cuda"

// Why `backend` cannot run on this machine (built without CUDA, no GPU visible), or "" if it can.
std::string unavailable_reason(Backend backend);

void* backend_alloc(Backend backend, std::size_t bytes);
void backend_free(Backend backend, void* ptr);
void backend_upload(Backend backend, void* dst, const void* src, std::size_t bytes);
void backend_download(Backend backend, void* dst, const void* src, std::size_t bytes);
// Waits for the backend's work; throws mmfl::Error with the device's error if there was one.
void backend_synchronize(Backend backend);

// A cpu::Context whose parallel_for runs tasks on `threads` new threads (std::thread), each taking
// the next task from a shared counter, so the assignment of tasks to threads varies run to run.
kernels::cpu::Context thread_context(int threads);
// The context the kCpu backend runs with: three threads.
const kernels::cpu::Context& cpu_test_context();

// Real-CUDA half of the API, in backend_cuda.cpp (built only with CUDA).
namespace cuda_backend {
std::string unavailable_reason();
void* alloc(std::size_t bytes);
void free(void* ptr);
void upload(void* dst, const void* src, std::size_t bytes);
void download(void* dst, const void* src, std::size_t bytes);
void synchronize();
}  // namespace cuda_backend

// An array in the memory of a backend.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer(Backend backend, std::size_t count)
      : backend_(backend),
        count_(count),
        ptr_(static_cast<T*>(backend_alloc(backend, count * sizeof(T)))) {}
  DeviceBuffer(Backend backend, const std::vector<T>& host) : DeviceBuffer(backend, host.size()) {
    upload(host);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    try {
      backend_free(backend_, ptr_);
    } catch (const std::exception& e) {  // destructors report, never throw
      ADD_FAILURE() << "freeing a test buffer failed: " << e.what();
    }
  }

  T* get() const { return ptr_; }
  std::size_t size() const { return count_; }
  void upload(const std::vector<T>& host) {
    EXPECT_EQ(host.size(), count_);
    backend_upload(backend_, ptr_, host.data(), count_ * sizeof(T));
  }
  // Fills with `value`; tests poison outputs (NaN, 0xab bytes) before a kernel writes them.
  void fill(T value) { upload(std::vector<T>(count_, value)); }
  std::vector<T> download() const {
    std::vector<T> host(count_);
    backend_synchronize(backend_);
    backend_download(backend_, host.data(), ptr_, count_ * sizeof(T));
    return host;
  }

 private:
  Backend backend_;
  std::size_t count_;
  T* ptr_;
};

// Test names end in the backend so ctest labels can select them (see CMakeLists.txt).
inline std::string backend_param_name(const ::testing::TestParamInfo<Backend>& info) {
  return backend_name(info.param);
}

}  // namespace mmfl::test

// Skips (visibly) when the backend cannot run here; a skip is never a pass.
#define MMFL_SKIP_IF_UNAVAILABLE(backend)                                            \
  do {                                                                               \
    const std::string mmfl_skip_reason_ = ::mmfl::test::unavailable_reason(backend); \
    if (!mmfl_skip_reason_.empty()) GTEST_SKIP() << mmfl_skip_reason_;               \
  } while (0)
