// Top-k by magnitude through CUB, GPU build only (CUB does not run on the SIMT emulator): the
// alternative to the radix-select kernel of sparse.cu, kept so that the benchmark can measure
// both on a GPU. Each entry becomes one unique 64-bit key, (inverted magnitude << index bits) |
// index, so an ascending segmented radix sort orders every row by magnitude descending and index
// ascending without relying on the sort's stability; the first k of a row are the selection, whose
// indices a second (small) segmented sort puts in ascending order.
#include <cstdint>
#include <cstdio>
#include <cub/device/device_segmented_radix_sort.cuh>

#include "../common/sparse_checks.h"
#include "mmfl/kernels/cuda_check.h"
#include "mmfl/kernels/sparse.h"

namespace mmfl::kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;

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

}  // namespace

void topk_by_magnitude_cub(const float* x, int64_t rows, int64_t n, int64_t k, int32_t* indices,
                           float* values, float* residual, cudaStream_t stream) {
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
