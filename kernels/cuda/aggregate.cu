// Weighted aggregation of client updates on the GPU (FedAvg's reduction). Bandwidth-bound: every
// update value is read once, so each thread owns a few columns and walks the clients (no atomics,
// a fixed summation order), with float4 loads when every row is 16-byte aligned.
#include <cstdint>

#include "common.cuh"
#include "mmfl/kernels/aggregate.h"
#include "mmfl/kernels/launch.h"

namespace mmfl::kernels::MMFL_KERNEL_NS {
namespace {

constexpr int kThreads = 256;
// Client rows loaded before the first is consumed: 4 independent 16-byte loads per thread keep
// enough bytes in flight to cover HBM latency at full occupancy.
constexpr int kRowsInFlight = 4;
// The grid-stride loops cover any size; more blocks than this only add scheduling overhead.
constexpr int64_t kMaxBlocks = 65535;
// Elements of one client row a block scans per step of the finiteness pass.
constexpr int64_t kFlagChunk = kThreads * 16;

// NaN and +-Inf are the floats whose exponent bits are all ones; a bit test is immune to
// fast-math flags.
__device__ __forceinline__ bool is_nonfinite(float x) {
  return (__float_as_uint(x) & 0x7f800000u) == 0x7f800000u;
}

__device__ __forceinline__ bool skipped(const uint8_t* bad, int64_t k) {
  return bad != nullptr && bad[k] != 0;
}

// Factor that makes the remaining clients' weights sum to the sum of all weights; 1 without
// `bad`, when nothing was skipped, or when the remaining weights sum to 0. Every block computes it
// (num_clients loads, small next to num_clients * n), so no second launch or workspace is needed.
template <typename Acc>
__device__ Acc rescale_factor(const float* __restrict__ weights,  // [num_clients]
                              const uint8_t* __restrict__ bad,    // [num_clients] or null
                              int64_t num_clients) {
  if (bad == nullptr) return Acc(1);
  Acc all = 0;
  Acc good = 0;
  int count = 0;
  for (int64_t k = threadIdx.x; k < num_clients; k += blockDim.x) {
    const Acc w = static_cast<Acc>(weights[k]);
    all += w;
    if (bad[k] != 0) {
      ++count;
    } else {
      good += w;
    }
  }
  all = detail::block_sum(all);
  good = detail::block_sum(good);
  count = detail::block_sum(count);
  return (count == 0 || good == Acc(0)) ? Acc(1) : all / good;
}

// out[j] = scale * sum_k w_k * updates[k][j] over the clients not marked in `bad` (nullable).
template <typename Acc>
__global__ void __launch_bounds__(kThreads)
    weighted_sum_kernel(const float* __restrict__ updates,  // [num_clients, n]
                        const float* __restrict__ weights,  // [num_clients]
                        const uint8_t* __restrict__ bad,    // [num_clients] or null
                        int64_t num_clients, int64_t n,
                        float* __restrict__ out,  // [n]
                        detail::Access layout) {
  const Acc scale = rescale_factor<Acc>(weights, bad, num_clients);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (layout == detail::Access::kVector4) {
    const int64_t n4 = n / 4;
    const float4* rows = reinterpret_cast<const float4*>(updates);
    for (int64_t c = first; c < n4; c += stride) {
      Acc a0 = 0, a1 = 0, a2 = 0, a3 = 0;
      int64_t k = 0;
      for (; k + kRowsInFlight <= num_clients; k += kRowsInFlight) {
        float4 v[kRowsInFlight];
        Acc w[kRowsInFlight];
#pragma unroll
        for (int u = 0; u < kRowsInFlight; ++u) {
          const bool skip = skipped(bad, k + u);
          w[u] = skip ? Acc(0) : static_cast<Acc>(weights[k + u]);
          v[u] = skip ? make_float4(0.0f, 0.0f, 0.0f, 0.0f) : __ldg(rows + (k + u) * n4 + c);
        }
#pragma unroll
        for (int u = 0; u < kRowsInFlight; ++u) {
          a0 += w[u] * static_cast<Acc>(v[u].x);
          a1 += w[u] * static_cast<Acc>(v[u].y);
          a2 += w[u] * static_cast<Acc>(v[u].z);
          a3 += w[u] * static_cast<Acc>(v[u].w);
        }
      }
      for (; k < num_clients; ++k) {
        if (skipped(bad, k)) continue;
        const Acc w = static_cast<Acc>(weights[k]);
        const float4 v = __ldg(rows + k * n4 + c);
        a0 += w * static_cast<Acc>(v.x);
        a1 += w * static_cast<Acc>(v.y);
        a2 += w * static_cast<Acc>(v.z);
        a3 += w * static_cast<Acc>(v.w);
      }
      reinterpret_cast<float4*>(out)[c] =
          make_float4(static_cast<float>(a0 * scale), static_cast<float>(a1 * scale),
                      static_cast<float>(a2 * scale), static_cast<float>(a3 * scale));
    }
  } else {
    for (int64_t j = first; j < n; j += stride) {
      Acc a = 0;
      int64_t k = 0;
      for (; k + kRowsInFlight <= num_clients; k += kRowsInFlight) {
        float v[kRowsInFlight];
        Acc w[kRowsInFlight];
#pragma unroll
        for (int u = 0; u < kRowsInFlight; ++u) {
          const bool skip = skipped(bad, k + u);
          w[u] = skip ? Acc(0) : static_cast<Acc>(weights[k + u]);
          v[u] = skip ? 0.0f : __ldg(updates + (k + u) * n + j);
        }
#pragma unroll
        for (int u = 0; u < kRowsInFlight; ++u)
          a += w[u] * static_cast<Acc>(v[u]);
      }
      for (; k < num_clients; ++k) {
        if (skipped(bad, k)) continue;
        a += static_cast<Acc>(weights[k]) * static_cast<Acc>(__ldg(updates + k * n + j));
      }
      out[j] = static_cast<float>(a * scale);
    }
  }
}

// bad[k] = 1 for every client whose row holds a NaN or +-Inf (bad is zeroed before the launch).
// A block scans one kFlagChunk-long piece of one row per step and its thread 0 stores the flag;
// several blocks may store 1 for one client, which is the same value, so no atomic is needed.
__global__ void __launch_bounds__(kThreads)
    flag_nonfinite_kernel(const float* __restrict__ updates,  // [num_clients, n]
                          int64_t num_clients, int64_t n,
                          uint8_t* __restrict__ bad,  // [num_clients]
                          detail::Access layout) {
  const int64_t chunks = (n + kFlagChunk - 1) / kFlagChunk;
  for (int64_t b = blockIdx.x; b < num_clients * chunks; b += gridDim.x) {
    const int64_t k = b / chunks;
    const int64_t begin = (b % chunks) * kFlagChunk;
    const int64_t end = begin + kFlagChunk < n ? begin + kFlagChunk : n;
    const float* row = updates + k * n;
    int found = 0;
    if (layout == detail::Access::kVector4) {
      for (int64_t j = begin + 4 * static_cast<int64_t>(threadIdx.x); j < end;
           j += 4 * static_cast<int64_t>(blockDim.x)) {
        const float4 v = __ldg(reinterpret_cast<const float4*>(row + j));
        found |= is_nonfinite(v.x) | is_nonfinite(v.y) | is_nonfinite(v.z) | is_nonfinite(v.w);
      }
    } else {
      for (int64_t j = begin + threadIdx.x; j < end; j += blockDim.x) {
        found |= is_nonfinite(__ldg(row + j)) ? 1 : 0;
      }
    }
    // The loop bound is uniform over the block, so every thread reaches this barrier.
    if (__syncthreads_or(found) != 0 && threadIdx.x == 0) bad[k] = 1;
  }
}

void check_args(const char* fn, const float* updates, const float* weights, int64_t num_clients,
                int64_t n, const float* out, Accumulator acc) {
  MMFL_CHECK(num_clients >= 1, fn, ": num_clients must be >= 1, got ", num_clients);
  MMFL_CHECK(n >= 0, fn, ": n (values per client) must be >= 0, got ", n);
  MMFL_CHECK(weights != nullptr, fn, ": weights is null");
  MMFL_CHECK(n == 0 || updates != nullptr, fn, ": updates is null");
  MMFL_CHECK(n == 0 || out != nullptr, fn, ": out is null");
  MMFL_CHECK(acc == Accumulator::kFloat32 || acc == Accumulator::kFloat64, fn,
             ": acc must be Accumulator::kFloat32 or kFloat64, got ", static_cast<int>(acc));
}

unsigned blocks_for(int64_t work_items) {
  const int64_t blocks = (work_items + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > kMaxBlocks ? kMaxBlocks : blocks));
}

template <typename Acc>
void launch_weighted_sum(const float* updates, const float* weights, const uint8_t* bad,
                         int64_t num_clients, int64_t n, float* out, cudaStream_t stream) {
  const detail::Access layout = detail::choose_access(updates, out, n);
  const unsigned blocks = blocks_for(layout == detail::Access::kVector4 ? n / 4 : n);
  MMFL_LAUNCH(weighted_sum_kernel<Acc>, blocks, kThreads, 0, stream)
  (updates, weights, bad, num_clients, n, out, layout);
  MMFL_CHECK_LAUNCH(weighted_sum_kernel<Acc>);
}

void dispatch_weighted_sum(const char* fn, const float* updates, const float* weights,
                           const uint8_t* bad, int64_t num_clients, int64_t n, float* out,
                           Accumulator acc, cudaStream_t stream) {
  switch (acc) {
    case Accumulator::kFloat32:
      launch_weighted_sum<float>(updates, weights, bad, num_clients, n, out, stream);
      break;
    case Accumulator::kFloat64:
      launch_weighted_sum<double>(updates, weights, bad, num_clients, n, out, stream);
      break;
    default:
      MMFL_FAIL(fn, ": unknown Accumulator ", static_cast<int>(acc));
  }
}

}  // namespace

void weighted_sum(const float* updates, const float* weights, int64_t num_clients, int64_t n,
                  float* out, Accumulator acc, cudaStream_t stream) {
  check_args("weighted_sum", updates, weights, num_clients, n, out, acc);
  if (n == 0) return;
  dispatch_weighted_sum("weighted_sum", updates, weights, nullptr, num_clients, n, out, acc,
                        stream);
}

void weighted_sum_finite(const float* updates, const float* weights, int64_t num_clients, int64_t n,
                         float* out, uint8_t* bad, Accumulator acc, cudaStream_t stream) {
  check_args("weighted_sum_finite", updates, weights, num_clients, n, out, acc);
  MMFL_CHECK(bad != nullptr, "weighted_sum_finite: bad is null");
  MMFL_CUDA_CHECK(cudaMemsetAsync(bad, 0, static_cast<size_t>(num_clients), stream));
  if (n == 0) return;  // empty updates are finite: nothing skipped, nothing to sum
  const detail::Access layout = detail::choose_access(updates, updates, n);
  const int64_t chunks = (n + kFlagChunk - 1) / kFlagChunk;
  const int64_t flag_blocks = num_clients * chunks < kMaxBlocks ? num_clients * chunks : kMaxBlocks;
  MMFL_LAUNCH(flag_nonfinite_kernel, static_cast<unsigned>(flag_blocks), kThreads, 0, stream)
  (updates, num_clients, n, bad, layout);
  MMFL_CHECK_LAUNCH(flag_nonfinite_kernel);
  dispatch_weighted_sum("weighted_sum_finite", updates, weights, bad, num_clients, n, out, acc,
                        stream);
}

}  // namespace mmfl::kernels::MMFL_KERNEL_NS
