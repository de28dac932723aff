// The real-CUDA half of the test backend API (built only when CUDA is): plain runtime calls, and
// the check that decides whether the GPU tests run or skip with a reason.
#include <cuda_runtime_api.h>

#include "backend.h"
#include "mmfl/kernels/cuda_check.h"

namespace mmfl::test::cuda_backend {

std::string unavailable_reason() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear it, so it does not surface in a later check
    return std::string("no usable CUDA device: cudaGetDeviceCount failed: ") +
           cudaGetErrorString(err);
  }
  if (count == 0) return "no CUDA device visible";
  return {};
}

void* alloc(std::size_t bytes) {
  void* p = nullptr;
  MMFL_CUDA_CHECK(cudaMalloc(&p, bytes));
  return p;
}

void free(void* ptr) {
  MMFL_CUDA_CHECK(cudaFree(ptr));
}

void upload(void* dst, const void* src, std::size_t bytes) {
  MMFL_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}

void download(void* dst, const void* src, std::size_t bytes) {
  MMFL_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}

void synchronize() {
  MMFL_CUDA_CHECK(cudaDeviceSynchronize());
}

}  // namespace mmfl::test::cuda_backend
