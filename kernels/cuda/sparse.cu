// Sparse client updates on the GPU (top-k with error feedback, and the scatter-sum of packets).
// Top-k: one block per row. A radix select over the 31 magnitude bits (four 8-bit digits, a
// shared-memory histogram each) finds the k-th largest key and how many entries equal to it are
// sent; one ordered pass (warp ballots and a block scan per tile) then writes the packed entries in
// index order and the residual. Aggregation: each block owns a range of the output, sums it in
// shared memory and adds the clients in order, so the result is deterministic without atomics.
// The CUB alternative (a segmented radix sort) is at the end of this file, GPU build only.
#include <cstdint>

#include "../common/sparse_checks.h"
#include "block_select.cuh"
#include "common.cuh"
#include "mmfl/kernels/launch.h"
#include "mmfl/kernels/sparse.h"

namespace mmfl::kernels::MMFL_KERNEL_NS {
namespace {

constexpr int kThreads = 256;
// Output values a block sums at once: 8 per thread, 16 KiB of fp64 sums in shared memory.
constexpr int64_t kSumRange = int64_t(kThreads) * 8;
constexpr int64_t kMaxBlocks = 65535;

__device__ __forceinline__ uint32_t magnitude_key(float v) {
  return __float_as_uint(v) & 0x7fffffffu;
}

// Row blockIdx.x of x: the k largest keys (ties to the lower index) packed in index order, and
// the residual (x with the sent entries zeroed; only those are written when residual == x).
__global__ void __launch_bounds__(kThreads)
    topk_kernel(const float* x,  // [rows, n] (not __restrict__: residual may alias it)
                int64_t n, int64_t k,
                int32_t* __restrict__ indices,  // [rows, k]
                float* __restrict__ values,     // [rows, k]
                float* residual) {              // [rows, n], may be x
  __shared__ detail::BlockSelectShared sh;
  const int64_t c = blockIdx.x;
  const float* row = x + c * n;
  float* res = residual + c * n;
  int32_t* out_idx = indices + c * k;
  float* out_val = values + c * k;
  const bool in_place = res == row;
  // The k-th largest magnitude and how many entries equal to it are sent (the lowest-indexed);
  // then one ordered pass packs the sent entries and writes the residual.
  const detail::Selected s = k > 0 ? detail::block_select(
                                         n, k, [&](int64_t j) { return magnitude_key(row[j]); }, sh)
                                   : detail::Selected{0, 0};
  detail::block_pack(
      n, k > 0, s, [&](int64_t j) { return row[j]; }, [](float v) { return magnitude_key(v); },
      [&](int64_t j, float v, bool take, int64_t pos) {
        if (take) {
          out_idx[pos] = static_cast<int32_t>(j);
          out_val[pos] = v;
        }
        if (take || !in_place) res[j] = take ? 0.0f : v;
      },
      sh);
}

// First position in idx[0, k) (ascending) whose value is >= target.
__device__ __forceinline__ int64_t lower_bound(const int32_t* idx, int64_t k, int64_t target) {
  int64_t lo = 0, hi = k;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (idx[mid] < target) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// out[j] = sum_c w_c * (client c's value at j) for the ranges of kSumRange outputs this block owns.
// Per batch of kThreads clients, each thread binary-searches one client's entries in the range;
// then the clients are added one after another (a barrier between two clients: their indices may
// coincide), each client's entries spread over the threads (indices of a row are distinct).
template <typename Acc>
__global__ void __launch_bounds__(kThreads)
    sparse_sum_kernel(const int32_t* __restrict__ indices,  // [rows, k], rows ascending
                      const float* __restrict__ values,     // [rows, k]
                      const float* __restrict__ weights,    // [rows]
                      int64_t rows, int64_t k, int64_t n,
                      float* __restrict__ out) {  // [n]
  __shared__ Acc sum[kSumRange];
  __shared__ int64_t s_lo[kThreads], s_hi[kThreads];
  const int tid = threadIdx.x;
  for (int64_t r0 = int64_t(blockIdx.x) * kSumRange; r0 < n; r0 += int64_t(gridDim.x) * kSumRange) {
    const int64_t r1 = r0 + kSumRange < n ? r0 + kSumRange : n;
    for (int i = tid; i < kSumRange; i += blockDim.x)
      sum[i] = Acc(0);
    for (int64_t c0 = 0; c0 < rows; c0 += kThreads) {
      __syncthreads();  // the sums are zeroed, and the previous batch is done with s_lo / s_hi
      if (c0 + tid < rows) {
        const int32_t* idx = indices + (c0 + tid) * k;
        s_lo[tid] = lower_bound(idx, k, r0);
        s_hi[tid] = lower_bound(idx, k, r1);
      }
      __syncthreads();
      const int64_t batch = rows - c0 < kThreads ? rows - c0 : kThreads;
      for (int64_t u = 0; u < batch; ++u) {
        const int32_t* idx = indices + (c0 + u) * k;
        const float* val = values + (c0 + u) * k;
        const Acc w = static_cast<Acc>(weights[c0 + u]);
        for (int64_t e = s_lo[u] + tid; e < s_hi[u]; e += blockDim.x)
          sum[idx[e] - r0] += w * static_cast<Acc>(val[e]);
        __syncthreads();
      }
    }
    __syncthreads();
    for (int64_t i = tid; r0 + i < r1; i += blockDim.x)
      out[r0 + i] = static_cast<float>(sum[i]);
    __syncthreads();  // the sums are read before the next range zeroes them
  }
}

template <typename Acc>
void launch_sparse_sum(const int32_t* indices, const float* values, const float* weights,
                       int64_t rows, int64_t k, int64_t n, float* out, cudaStream_t stream) {
  int64_t blocks = (n + kSumRange - 1) / kSumRange;
  blocks = blocks > kMaxBlocks ? kMaxBlocks : blocks;
  MMFL_LAUNCH(sparse_sum_kernel<Acc>, static_cast<unsigned>(blocks), kThreads, 0, stream)
  (indices, values, weights, rows, k, n, out);
  MMFL_CHECK_LAUNCH(sparse_sum_kernel<Acc>);
}

}  // namespace

void topk_by_magnitude(const float* x, int64_t rows, int64_t n, int64_t k, int32_t* indices,
                       float* values, float* residual, cudaStream_t stream) {
  checks::check_topk_args("topk_by_magnitude", x, rows, n, k, indices, values, residual);
  if (rows == 0 || n == 0) return;
  MMFL_CHECK(rows <= 2147483647, "topk_by_magnitude: rows must be < 2^31 (one block each), got ",
             rows);
  MMFL_LAUNCH(topk_kernel, static_cast<unsigned>(rows), kThreads, 0, stream)
  (x, n, k, indices, values, residual);
  MMFL_CHECK_LAUNCH(topk_kernel);
}

void sparse_weighted_sum(const int32_t* indices, const float* values, const float* weights,
                         int64_t rows, int64_t k, int64_t n, float* out, Accumulator acc,
                         cudaStream_t stream) {
  const char* fn = "sparse_weighted_sum";
  checks::check_sparse_sum_args(fn, indices, values, weights, rows, k, n, out, acc);
  if (n == 0) return;
  switch (acc) {
    case Accumulator::kFloat32:
      launch_sparse_sum<float>(indices, values, weights, rows, k, n, out, stream);
      break;
    case Accumulator::kFloat64:
      launch_sparse_sum<double>(indices, values, weights, rows, k, n, out, stream);
      break;
    default:
      MMFL_FAIL(fn, ": unknown Accumulator ", static_cast<int>(acc));
  }
}

}  // namespace mmfl::kernels::MMFL_KERNEL_NS

#ifndef MMFL_SIMT
// Top-k by magnitude through CUB, GPU build only (CUB does not run on the SIMT emulator): the
// alternative to the radix-select kernel of sparse.cu, kept so that the benchmark can measure
// both on a GPU. Each entry becomes one unique 64-bit key, (inverted magnitude << index bits) |
// index, so an ascending segmented radix sort orders every row by magnitude descending and index
// ascending without relying on the sort's stability; the first k of a row are the selection, whose
// indices a second (small) segmented sort puts in ascending order.
// (In this file, not one of its own, because it is the same op: kernels/ref/sparse.cpp is its
// reference, and the gpu test SparseCub.MatchesRadixSelect checks it against the kernel above.)
#include <cstdio>
#include <cub/device/device_segmented_radix_sort.cuh>

#include "mmfl/kernels/cuda_check.h"

namespace mmfl::kernels::cuda {
namespace {
namespace cub_path {

unsigned blocks_for(int64_t items) {
  const int64_t b = (items + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > kMaxBlocks ? kMaxBlocks : b));
}

// Device memory allocated and freed on `stream` (the default pool reuses it without a sync).
class Scratch {
 public:
  Scratch(size_t bytes, cudaStream_t stream) : stream_(stream) {
    MMFL_CUDA_CHECK(cudaMallocAsync(&ptr_, bytes == 0 ? 1 : bytes, stream));
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() {
    const cudaError_t err = cudaFreeAsync(ptr_, stream_);
    if (err != cudaSuccess) {  // destructors report, never throw
      std::fprintf(stderr, "mmfl: cudaFreeAsync of a top-k workspace failed: %s\n",
                   cudaGetErrorString(err));
    }
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  cudaStream_t stream_;
  void* ptr_ = nullptr;
};

__global__ void make_keys(const float* __restrict__ x, int64_t total, int64_t n, int index_bits,
                          uint64_t* __restrict__ keys) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const uint64_t inverted = 0x7fffffffu - (__float_as_uint(x[i]) & 0x7fffffffu);
    keys[i] = (inverted << index_bits) | static_cast<uint64_t>(i % n);
  }
}

__global__ void make_offsets(int64_t rows, int64_t len, int* __restrict__ offsets) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c <= rows; c += stride)
    offsets[c] = static_cast<int>(c * len);
}

// sel[c, i] = the index held by row c's i-th sorted key, i < k.
__global__ void take_first(const uint64_t* __restrict__ sorted, int64_t rows, int64_t n, int64_t k,
                           uint64_t index_mask, int32_t* __restrict__ sel) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < rows * k; i += stride)
    sel[i] = static_cast<int32_t>(sorted[(i / k) * n + i % k] & index_mask);
}

__global__ void gather(const float* x, const int32_t* __restrict__ sel, int64_t rows, int64_t n,
                       int64_t k, int32_t* __restrict__ indices, float* __restrict__ values,
                       float* residual) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < rows * k; i += stride) {
    const int64_t at = (i / k) * n + sel[i];
    indices[i] = sel[i];
    values[i] = x[at];
    residual[at] = 0.0f;
  }
}

}  // namespace cub_path
}  // namespace

void topk_by_magnitude_cub(const float* x, int64_t rows, int64_t n, int64_t k, int32_t* indices,
                           float* values, float* residual, cudaStream_t stream) {
  using namespace cub_path;
  const char* fn = "topk_by_magnitude_cub";
  checks::check_topk_args(fn, x, rows, n, k, indices, values, residual);
  if (rows == 0 || n == 0) return;
  MMFL_CHECK(rows * n <= 2147483647, fn, ": rows * n must be < 2^31 (CUB's item count), got ",
             rows * n);
  if (residual != x)
    MMFL_CUDA_CHECK(cudaMemcpyAsync(residual, x, static_cast<size_t>(rows * n) * sizeof(float),
                                    cudaMemcpyDeviceToDevice, stream));
  if (k == 0) return;
  int index_bits = 1;
  while ((int64_t(1) << index_bits) < n)
    ++index_bits;
  const int total = static_cast<int>(rows * n), selected = static_cast<int>(rows * k);
  Scratch keys(sizeof(uint64_t) * total, stream), sorted(sizeof(uint64_t) * total, stream);
  Scratch row_offsets(sizeof(int) * (rows + 1), stream),
      sel_offsets(sizeof(int) * (rows + 1), stream);
  Scratch sel(sizeof(int32_t) * selected, stream), sel_sorted(sizeof(int32_t) * selected, stream);
  make_keys<<<blocks_for(total), kThreads, 0, stream>>>(x, total, n, index_bits,
                                                        keys.as<uint64_t>());
  MMFL_CHECK_LAUNCH(make_keys);
  make_offsets<<<blocks_for(rows + 1), kThreads, 0, stream>>>(rows, n, row_offsets.as<int>());
  MMFL_CHECK_LAUNCH(make_offsets);
  make_offsets<<<blocks_for(rows + 1), kThreads, 0, stream>>>(rows, k, sel_offsets.as<int>());
  MMFL_CHECK_LAUNCH(make_offsets);
  // Pass 1: every row by (magnitude descending, index ascending); bits above 31 + index_bits are 0.
  size_t bytes1 = 0, bytes2 = 0;
  MMFL_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortKeys(
      nullptr, bytes1, keys.as<uint64_t>(), sorted.as<uint64_t>(), total, static_cast<int>(rows),
      row_offsets.as<int>(), row_offsets.as<int>() + 1, 0, 31 + index_bits, stream));
  MMFL_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortKeys(
      nullptr, bytes2, sel.as<int32_t>(), sel_sorted.as<int32_t>(), selected,
      static_cast<int>(rows), sel_offsets.as<int>(), sel_offsets.as<int>() + 1, 0, index_bits,
      stream));
  Scratch temp(bytes1 > bytes2 ? bytes1 : bytes2, stream);
  MMFL_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortKeys(
      temp.as<void>(), bytes1, keys.as<uint64_t>(), sorted.as<uint64_t>(), total,
      static_cast<int>(rows), row_offsets.as<int>(), row_offsets.as<int>() + 1, 0, 31 + index_bits,
      stream));
  take_first<<<blocks_for(selected), kThreads, 0, stream>>>(
      sorted.as<uint64_t>(), rows, n, k, (uint64_t(1) << index_bits) - 1, sel.as<int32_t>());
  MMFL_CHECK_LAUNCH(take_first);
  // Pass 2: the k chosen indices of each row in ascending order.
  MMFL_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortKeys(
      temp.as<void>(), bytes2, sel.as<int32_t>(), sel_sorted.as<int32_t>(), selected,
      static_cast<int>(rows), sel_offsets.as<int>(), sel_offsets.as<int>() + 1, 0, index_bits,
      stream));
  gather<<<blocks_for(selected), kThreads, 0, stream>>>(x, sel_sorted.as<int32_t>(), rows, n, k,
                                                        indices, values, residual);
  MMFL_CHECK_LAUNCH(gather);
}

}  // namespace mmfl::kernels::cuda
#endif  // MMFL_SIMT
