// Deterministic warp and block reductions shared by the kernels of kernels/cuda: a fixed
// butterfly inside warps and a fixed order across warps, so a result does not depend on timing.
#pragma once

#include "mmfl/kernels/launch.h"

namespace mmfl::kernels::MMFL_KERNEL_NS::detail {

constexpr unsigned kFullWarp = 0xffffffffu;

// Sum over the 32 lanes; every lane gets the same (bitwise) total. All lanes must call.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2)
    v += __shfl_xor_sync(kFullWarp, v, offset);
  return v;
}

// Sum over a one-dimensional block whose size is a multiple of 32 (at most 1024); every thread
// gets the same total. All threads must call (it holds barriers). Safe to call repeatedly.
template <typename T>
__device__ T block_sum(T v) {
  __shared__ T warp_totals[32];
  v = warp_sum(v);
  __syncthreads();  // a previous call may still be reading warp_totals
  if (threadIdx.x % 32 == 0) warp_totals[threadIdx.x / 32] = v;
  __syncthreads();
  T total = 0;
  for (unsigned w = 0; w < blockDim.x / 32; ++w)
    total += warp_totals[w];
  return total;
}

}  // namespace mmfl::kernels::MMFL_KERNEL_NS::detail
