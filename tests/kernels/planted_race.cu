// A planted missing barrier for the ThreadSanitizer build: each thread writes its shared-memory
// slot and reads its neighbour's without the __syncthreads between, which is a data race among
// the emulated threads (real OS threads). ctest registers it only in the TSan build and passes
// when TSan reports "data race"; elsewhere it is built but not run.
#include <cstdio>

#include "mmfl/kernels/launch.h"

namespace {

__global__ void missing_barrier_kernel(int* out) {
  __shared__ int s[64];
  const unsigned t = threadIdx.x;
  s[t] = static_cast<int>(t);
  // A __syncthreads() belongs here.
  out[t] = s[(t + 1) % 64];
}

}  // namespace

int main() {
  int* out = nullptr;
  MMFL_CUDA_CHECK(cudaMalloc(&out, 64 * sizeof(int)));
  for (int repeat = 0; repeat < 4; ++repeat) {
    MMFL_LAUNCH(missing_barrier_kernel, 1, 64, 0, nullptr)(out);
    MMFL_CHECK_LAUNCH(missing_barrier_kernel);
  }
  MMFL_CUDA_CHECK(cudaFree(out));
  std::printf("kernel finished; any ThreadSanitizer report is above\n");
  return 0;
}
