// What the kernels of kernels/cuda share: deterministic warp and block reductions (a fixed
// butterfly inside warps and a fixed order across warps, so a result does not depend on timing),
// and the choice between float4 and scalar global loads.
#pragma once

#include <cstdint>
#include <type_traits>

#include "mmfl/error.h"
#include "mmfl/kernels/common.h"
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

// Ordered ranking of a per-thread flag over a one-dimensional block (size a multiple of 32):
// returns how many lower threads have the flag set, and the block's count in *total. `counts` is
// shared memory of blockDim.x / 32 entries. All threads must call (it holds one barrier); the
// caller makes sure no thread still reads `counts` from a previous call (a barrier in between).
__device__ __forceinline__ int64_t block_flag_rank(bool flag, unsigned* counts, int64_t* total) {
  const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const unsigned bits = __ballot_sync(kFullWarp, flag);
  if (lane == 0) counts[warp] = static_cast<unsigned>(__popc(bits));
  __syncthreads();
  int64_t rank = __popc(bits & ((1u << lane) - 1u));
  int64_t sum = 0;
  for (unsigned w = 0; w < blockDim.x / 32; ++w) {
    rank += w < warp ? counts[w] : 0;
    sum += counts[w];
  }
  *total = sum;
  return rank;
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

// float4 global loads need rows whose length is a multiple of 4 and 16-byte aligned bases (every
// row start is then aligned); otherwise one float per load.
enum class Access : int { kVector4, kScalar };

inline Access choose_access(const float* a, const float* b, int64_t row_length) {
  const bool aligned =
      reinterpret_cast<uintptr_t>(a) % 16 == 0 && reinterpret_cast<uintptr_t>(b) % 16 == 0;
  return aligned && row_length % 4 == 0 ? Access::kVector4 : Access::kScalar;
}

// Calls f(std::integral_constant<Precision, P>{}) for the runtime `precision`: every precision
// gets kernel instantiations of its own, so the fp32 kernels keep their registers and occupancy
// (one kernel holding all three paths needed about twice the fp32 path's registers).
template <typename F>
void with_precision(const char* fn, Precision precision, F&& f) {
  switch (precision) {
    case Precision::kFp32:
      f(std::integral_constant<Precision, Precision::kFp32>{});
      return;
    case Precision::kTf32:
      f(std::integral_constant<Precision, Precision::kTf32>{});
      return;
    case Precision::kBf16:
      f(std::integral_constant<Precision, Precision::kBf16>{});
      return;
    default:
      MMFL_FAIL(fn, ": unknown Precision ", static_cast<int>(precision),
                " (expected kFp32, kTf32 or kBf16)");
  }
}

}  // namespace mmfl::kernels::MMFL_KERNEL_NS::detail
