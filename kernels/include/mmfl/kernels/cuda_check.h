// Error checks for CUDA runtime calls and kernel launches: MMFL_CUDA_CHECK and MMFL_CHECK_LAUNCH
// throw mmfl::Error with the runtime's own message. Include after the CUDA runtime declarations
// (cuda_runtime.h, implicit under nvcc) or in a file compiled with the SIMT shim.
#pragma once

#include "mmfl/error.h"

// Throws mmfl::Error naming the failed call and CUDA's message when `expr` (a cudaError_t) is not
// cudaSuccess.
#define MMFL_CUDA_CHECK(expr)                                                            \
  do {                                                                                   \
    const cudaError_t mmfl_cuda_err_ = (expr);                                           \
    if (mmfl_cuda_err_ != cudaSuccess) {                                                 \
      /* reset the last error, or the next launch check would report this failure */     \
      (void)cudaGetLastError();                                                          \
      MMFL_FAIL(#expr, " failed: ", cudaGetErrorString(mmfl_cuda_err_), " (",            \
                cudaGetErrorName(mmfl_cuda_err_), ")" MMFL_DETAIL_SIMT_ERROR_SUFFIX_()); \
    }                                                                                    \
  } while (0)

// The launch check that follows every MMFL_LAUNCH: turns a launch error (bad configuration, too
// much shared memory) into mmfl::Error naming the kernel. The SIMT emulator runs the kernel during
// the launch, so there it also reports the kernel's own failures (a barrier that not all threads
// reach, an exception), with the emulator's explanation. Variadic so that template arguments with
// commas need no parentheses.
#define MMFL_CHECK_LAUNCH(...)                                                                     \
  do {                                                                                             \
    const cudaError_t mmfl_launch_err_ = cudaGetLastError();                                       \
    if (mmfl_launch_err_ != cudaSuccess) {                                                         \
      MMFL_FAIL("CUDA kernel '", #__VA_ARGS__, "' failed: ", cudaGetErrorString(mmfl_launch_err_), \
                " (", cudaGetErrorName(mmfl_launch_err_), ")" MMFL_DETAIL_SIMT_ERROR_SUFFIX_());   \
    }                                                                                              \
  } while (0)

// Under the emulator an error carries an explanation beyond CUDA's error code.
#if defined(MMFL_SIMT)
#define MMFL_DETAIL_SIMT_ERROR_SUFFIX_() , ": ", ::mmfl::simt::last_error_detail()
#else
#define MMFL_DETAIL_SIMT_ERROR_SUFFIX_()
#endif
