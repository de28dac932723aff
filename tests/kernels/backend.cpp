// Backend dispatch of the test device-memory API: host memory for the CPU reference, the
// emulator's allocations for simt, and the CUDA runtime (backend_cuda.cpp) for real GPUs.
#include "backend.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "mmfl/error.h"
#include "mmfl/simt/runtime.h"

namespace mmfl::test {

const char* backend_name(Backend backend) {
  switch (backend) {
    case Backend::kRef:
      return "ref";
    case Backend::kCpu:
      return "cpu";
    case Backend::kSimt:
      return "simt";
    case Backend::kCuda:
      return "cuda";
    default:
      MMFL_FAIL("unknown backend ", static_cast<int>(backend));
  }
}

std::string unavailable_reason(Backend backend) {
  switch (backend) {
    case Backend::kRef:
    case Backend::kCpu:
    case Backend::kSimt:
      return {};
    case Backend::kCuda:
#if defined(MMFL_TEST_HAVE_CUDA)
      return cuda_backend::unavailable_reason();
#else
      return "real-CUDA backend not built (configured without nvcc, or MMFL_HAVE_CUDA=OFF)";
#endif
    default:
      MMFL_FAIL("unknown backend ", static_cast<int>(backend));
  }
}

kernels::cpu::Context thread_context(int threads) {
  kernels::cpu::Context ctx;
  ctx.parallel_for = [threads](int64_t num_tasks, const kernels::cpu::TaskBody& body) {
    std::atomic<int64_t> next{0};
    auto worker = [&] {
      for (int64_t t = next++; t < num_tasks; t = next++)
        body(t, t + 1);
    };
    std::vector<std::thread> pool;
    for (int i = 1; i < threads; ++i)
      pool.emplace_back(worker);
    worker();
    for (std::thread& th : pool)
      th.join();
  };
  return ctx;
}

const kernels::cpu::Context& cpu_test_context() {
  static const kernels::cpu::Context ctx = thread_context(3);
  return ctx;
}

void* backend_alloc(Backend backend, std::size_t bytes) {
  switch (backend) {
    case Backend::kRef:
    case Backend::kCpu: {
      // 256-byte aligned like device memory, so the float4 paths are exercised the same way.
      void* p = nullptr;
      MMFL_CHECK(posix_memalign(&p, 256, bytes == 0 ? 1 : bytes) == 0, "host alloc of ", bytes,
                 " bytes failed");
      return p;
    }
    case Backend::kSimt:
      return simt::device_alloc(bytes);
    case Backend::kCuda:
#if defined(MMFL_TEST_HAVE_CUDA)
      return cuda_backend::alloc(bytes);
#endif
    default:
      MMFL_FAIL("backend ", backend_name(backend), " is not available");
  }
}

void backend_free(Backend backend, void* ptr) {
  switch (backend) {
    case Backend::kRef:
    case Backend::kCpu:
      std::free(ptr);
      return;
    case Backend::kSimt:
      simt::device_free(ptr);
      return;
    case Backend::kCuda:
#if defined(MMFL_TEST_HAVE_CUDA)
      cuda_backend::free(ptr);
      return;
#endif
    default:
      MMFL_FAIL("backend ", backend_name(backend), " is not available");
  }
}

void backend_upload(Backend backend, void* dst, const void* src, std::size_t bytes) {
  switch (backend) {
    case Backend::kRef:
    case Backend::kCpu:
      if (bytes > 0) std::memcpy(dst, src, bytes);
      return;
    case Backend::kSimt:
      simt::copy_to_device(dst, src, bytes);
      return;
    case Backend::kCuda:
#if defined(MMFL_TEST_HAVE_CUDA)
      cuda_backend::upload(dst, src, bytes);
      return;
#endif
    default:
      MMFL_FAIL("backend ", backend_name(backend), " is not available");
  }
}

void backend_download(Backend backend, void* dst, const void* src, std::size_t bytes) {
  switch (backend) {
    case Backend::kRef:
    case Backend::kCpu:
      if (bytes > 0) std::memcpy(dst, src, bytes);
      return;
    case Backend::kSimt:
      simt::copy_to_host(dst, src, bytes);
      return;
    case Backend::kCuda:
#if defined(MMFL_TEST_HAVE_CUDA)
      cuda_backend::download(dst, src, bytes);
      return;
#endif
    default:
      MMFL_FAIL("backend ", backend_name(backend), " is not available");
  }
}

void backend_synchronize(Backend backend) {
  switch (backend) {
    case Backend::kRef:
    case Backend::kCpu:
      return;
    case Backend::kSimt:
      simt::device_synchronize();
      return;
    case Backend::kCuda:
#if defined(MMFL_TEST_HAVE_CUDA)
      cuda_backend::synchronize();
      return;
#endif
    default:
      MMFL_FAIL("backend ", backend_name(backend), " is not available");
  }
}

}  // namespace mmfl::test
