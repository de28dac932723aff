// What every adapter in fusion/ops needs about devices: the stream its CUDA kernels are queued on,
// and the error for a CUDA tensor in a build without CUDA.
#pragma once

#include <ATen/core/Tensor.h>

#include "mmfl/error.h"

#ifdef MMFL_HAVE_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace mmfl::fusion::ops {

#ifdef MMFL_HAVE_CUDA
// LibTorch's current stream on t's device (so that the kernel is ordered with the tensor ops
// around it; the caller holds a CUDAGuard for that device).
inline cudaStream_t stream_of(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}
#endif

[[noreturn]] inline void no_cuda(const char* op) {
  MMFL_FAIL(op, ": a CUDA tensor was given but mmfl was built without CUDA");
}

}  // namespace mmfl::fusion::ops
