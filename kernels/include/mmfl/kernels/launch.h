// Kernel launch and namespace macros shared by the two builds of every kernels/cuda/*.cu file:
// nvcc builds it for the GPU (namespace mmfl::kernels::cuda), the host compiler builds it for the
// SIMT emulator (namespace mmfl::kernels::simt, MMFL_SIMT defined, shim force-included).
#pragma once

#include "mmfl/kernels/common.h"
#include "mmfl/kernels/cuda_check.h"

#if defined(MMFL_SIMT)
#if !defined(MMFL_SIMT_SHIM_INCLUDED)
#error "MMFL_SIMT builds must force-include mmfl/simt/shim.h (see kernels/CMakeLists.txt)"
#endif
// Launchers of the emulated build live here, so one binary can link all backends; their
// declarations come from the same .inc files as namespace cuda's.
#define MMFL_KERNEL_NS simt
#include "mmfl/simt/kernels.h"
#elif defined(__CUDACC__)
#define MMFL_KERNEL_NS cuda
#else
#error "mmfl/kernels/launch.h is for kernels/cuda/*.cu sources (nvcc, or the host with MMFL_SIMT)"
#endif

#if defined(MMFL_SIMT)
// The emulator runs the kernel on host threads during the launch; see mmfl/simt/shim.h.
#define MMFL_LAUNCH(kernel, grid, block, smem, stream) \
  ::mmfl::simt::detail::make_launcher(#kernel, kernel, grid, block, smem, stream)
// Dynamic shared memory: one buffer per launch, poisoned (0xff bytes) before every block.
#define MMFL_DYNAMIC_SHARED(type, name) \
  type* name = reinterpret_cast<type*>(::mmfl::simt::detail::dynamic_shared_memory())
#else
// MMFL_LAUNCH(kernel, grid, block, smem, stream)(args...). A kernel name with commas (template
// arguments) goes in parentheses: MMFL_LAUNCH((k<A, B>), ...).
#define MMFL_LAUNCH(kernel, grid, block, smem, stream) kernel<<<grid, block, smem, stream>>>
// `extern __shared__` arrays of different types in one file would clash, so every kernel declares
// the same byte array and views it as `type`. 16-byte alignment covers float4 / double2 accesses.
#define MMFL_DYNAMIC_SHARED(type, name)                                 \
  extern __shared__ __align__(16) unsigned char mmfl_dynamic_shared_[]; \
  type* name = reinterpret_cast<type*>(mmfl_dynamic_shared_)
#endif
