// A planted out-of-bounds write for the AddressSanitizer build: proves that ASan sees overruns of
// emulated device memory ("global": one float past a cudaMalloc'd buffer) and of static shared
// memory ("shared": one element past a __shared__ array). ctest registers it only in the ASan
// build and passes when the output names AddressSanitizer; anywhere else it would just corrupt
// memory, so it is built (to keep it compiling) but not run.
#include <cstdio>
#include <cstring>

#include "mmfl/kernels/launch.h"

namespace {

__global__ void overrun_global_kernel(float* data, int n) {
  data[threadIdx.x + 1] = 1.0f;  // thread n-1 writes data[n]
  (void)n;
}

__global__ void overrun_shared_kernel(float* out) {
  __shared__ float s[32];
  // Through a pointer the compiler cannot trace back to `s`, so that UBSan's bounds and
  // object-size checks (same build) leave the report to AddressSanitizer.
  float* volatile laundered = s;
  float* p = laundered;
  p[threadIdx.x + 1] = 1.0f;  // thread 31 writes s[32]
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x];
}

}  // namespace

int main(int argc, char** argv) {
  const bool shared = argc > 1 && std::strcmp(argv[1], "shared") == 0;
  const int n = 32;
  float* data = nullptr;
  MMFL_CUDA_CHECK(cudaMalloc(&data, n * sizeof(float)));
  if (shared) {
    MMFL_LAUNCH(overrun_shared_kernel, 1, n, 0, nullptr)(data);
    MMFL_CHECK_LAUNCH(overrun_shared_kernel);
  } else {
    MMFL_LAUNCH(overrun_global_kernel, 1, n, 0, nullptr)(data, n);
    MMFL_CHECK_LAUNCH(overrun_global_kernel);
  }
  MMFL_CUDA_CHECK(cudaFree(data));
  std::printf("no out-of-bounds access was reported\n");
  return 0;
}
