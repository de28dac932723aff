// Probe kernels for the SIMT emulator's own tests (see probe_kernels.h). Built by nvcc into
// namespace cuda and by the host compiler with the shim into namespace simt.
#include "probe_kernels.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "mmfl/kernels/launch.h"

namespace mmfl::test::probes::MMFL_KERNEL_NS {
namespace {

// Device memory owned by a probe call.
template <typename T>
class DeviceArray {
 public:
  explicit DeviceArray(size_t count) : count_(count) {
    MMFL_CUDA_CHECK(cudaMalloc(&ptr_, std::max<size_t>(count, 1) * sizeof(T)));
  }
  DeviceArray(const T* host, size_t count) : DeviceArray(count) {
    MMFL_CUDA_CHECK(cudaMemcpy(ptr_, host, count * sizeof(T), cudaMemcpyHostToDevice));
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() { cudaFree(ptr_); }  // destructors never throw
  T* get() const { return ptr_; }
  void download(T* host) const {
    MMFL_CUDA_CHECK(cudaDeviceSynchronize());
    MMFL_CUDA_CHECK(cudaMemcpy(host, ptr_, count_ * sizeof(T), cudaMemcpyDeviceToHost));
  }

 private:
  T* ptr_ = nullptr;
  size_t count_;
};

// Tree reduction in shared memory, a __syncthreads between levels; blockDim.x a power of 2.
__device__ long long tree_sum(long long* s) {
  for (unsigned stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) s[threadIdx.x] += s[threadIdx.x + stride];
    __syncthreads();
  }
  return s[0];
}

__global__ void block_sum_static_kernel(const int* in, int64_t n, long long* sums) {
  __shared__ long long s[1024];
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  s[threadIdx.x] = i < n ? in[i] : 0;
  __syncthreads();
  const long long total = tree_sum(s);
  if (threadIdx.x == 0) sums[blockIdx.x] = total;
}

__global__ void block_sum_dynamic_kernel(const int* in, int64_t n, long long* sums) {
  MMFL_DYNAMIC_SHARED(long long, s);  // [blockDim.x]
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  s[threadIdx.x] = i < n ? in[i] : 0;
  __syncthreads();
  const long long total = tree_sum(s);
  if (threadIdx.x == 0) sums[blockIdx.x] = total;
}

__global__ void shuffle_kernel(ShuffleMode mode, const int* in, const int* args, int* out,
                               unsigned mask, int width) {
  const int t = threadIdx.x;
  int v = in[t];
  if ((mask >> (t % 32) & 1u) != 0) {
    switch (mode) {
      case ShuffleMode::kIdx:
        v = __shfl_sync(mask, v, args[t], width);
        break;
      case ShuffleMode::kUp:
        v = __shfl_up_sync(mask, v, static_cast<unsigned>(args[t]), width);
        break;
      case ShuffleMode::kDown:
        v = __shfl_down_sync(mask, v, static_cast<unsigned>(args[t]), width);
        break;
      case ShuffleMode::kXor:
        v = __shfl_xor_sync(mask, v, args[t], width);
        break;
      default:
        __trap();  // device code cannot throw: an unknown mode aborts the launch
    }
  }
  out[t] = v;
}

__global__ void vote_kernel(VoteMode mode, const int* predicates, unsigned* out, unsigned mask) {
  const int t = threadIdx.x;
  unsigned v = 0xdeadbeefu;
  if ((mask >> (t % 32) & 1u) != 0) {
    switch (mode) {
      case VoteMode::kBallot:
        v = __ballot_sync(mask, predicates[t]);
        break;
      case VoteMode::kAny:
        v = static_cast<unsigned>(__any_sync(mask, predicates[t]));
        break;
      case VoteMode::kAll:
        v = static_cast<unsigned>(__all_sync(mask, predicates[t]));
        break;
      default:
        __trap();
    }
  }
  out[t] = v;
}

__global__ void syncthreads_reductions_kernel(const int* predicates, int* out) {
  const int p = predicates[blockIdx.x * blockDim.x + threadIdx.x];
  const int count = __syncthreads_count(p);
  const int any = __syncthreads_or(p);
  const int all = __syncthreads_and(p);
  if (threadIdx.x == 0) {
    out[3 * blockIdx.x + 0] = count;
    out[3 * blockIdx.x + 1] = any;
    out[3 * blockIdx.x + 2] = all;
  }
}

__global__ void syncwarp_exchange_kernel(const int* in, int* out) {
  __shared__ int s[1024];
  const unsigned t = threadIdx.x;
  s[t] = in[t];
  __syncwarp();  // the neighbour t ^ 1 is in the same warp
  out[t] = s[t ^ 1u];
}

// Every thread, `iterations` times, hits the same few counters.
__global__ void atomics_kernel(AtomicCounters* c, int iterations) {
  const unsigned id = blockIdx.x * blockDim.x + threadIdx.x;
  for (int it = 0; it < iterations; ++it) {
    atomicAdd(&c->add_int, 1);
    atomicAdd(&c->add_uint, 2u);
    atomicAdd(&c->add_ull, 3ull);
    atomicAdd(&c->add_float, 1.0f);  // exact while the total stays below 2^24
    atomicAdd(&c->add_double, 0.5);
    atomicSub(&c->sub_int, 1);
    atomicMax(&c->max_int, static_cast<int>(id * 7 + it));
    atomicMin(&c->min_int, -static_cast<int>(id * 5 + it));
    atomicMax(&c->max_ull, static_cast<unsigned long long>(id) << 33);
    // A lock-free increment: retry the compare-and-swap until no other thread got in between.
    unsigned seen = atomicAdd(&c->cas_count, 0u);
    for (;;) {
      const unsigned old = atomicCAS(&c->cas_count, seen, seen + 1);
      if (old == seen) break;
      seen = old;
    }
    atomicOr(&c->or_bits, 1u << (id % 32));
    atomicAnd(&c->and_bits, ~(1u << (id % 31)));
    atomicXor(&c->xor_bits, 1u << (it % 32));
    atomicInc(&c->inc_wrap, 9u);  // counts 0..9 and wraps
    // Every value ever written to the slot comes back exactly once (from a later exchange or as
    // the final value): sum(returned) + final == initial + sum(written).
    const unsigned old = atomicExch(&c->exch_slot, id * 16 + it + 1);
    atomicAdd(&c->exch_returned_sum, static_cast<unsigned long long>(old));
  }
}

__global__ void coordinates_kernel(unsigned* out) {
  const unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const unsigned thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned per_block = blockDim.x * blockDim.y * blockDim.z;
  const unsigned global = block * per_block + thread;
  out[4 * global + 0] = block;
  out[4 * global + 1] = thread;
  out[4 * global + 2] = per_block;
  out[4 * global + 3] = gridDim.x * gridDim.y * gridDim.z;
}

// Touches the first and last word of its dynamic shared memory, when it has any.
__global__ void probe_trivial_kernel(int* out, int64_t dynamic_smem) {
  MMFL_DYNAMIC_SHARED(int, s);
  if (threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0 && blockIdx.x == 0 &&
      blockIdx.y == 0 && dynamic_smem >= 4) {
    s[0] = 1;
    s[dynamic_smem / 4 - 1] = 2;
    *out = s[0] + s[dynamic_smem / 4 - 1];
  }
}

__global__ void half_math_kernel(const float* in, float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    const __half h = __float2half(in[i]) * __float2half(2.0f);
    const __nv_bfloat16 b = __float2bfloat16(in[i]) + __float2bfloat16(1.0f);
    out[i] = __half2float(h) + __bfloat162float(b);
  }
}

__global__ void scale_kernel(float* data, int n, float factor) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) data[i] *= factor;
}

unsigned blocks_of(int64_t n, int threads) {
  return static_cast<unsigned>((n + threads - 1) / threads);
}

}  // namespace

void block_sums(const int* in, int64_t n, long long* sums, int threads, SharedKind kind) {
  const unsigned blocks = blocks_of(n, threads);
  DeviceArray<int> d_in(in, n);
  DeviceArray<long long> d_sums(blocks);
  if (kind == SharedKind::kStatic) {
    MMFL_LAUNCH(block_sum_static_kernel, blocks, threads, 0, nullptr)(d_in.get(), n, d_sums.get());
    MMFL_CHECK_LAUNCH(block_sum_static_kernel);
  } else {
    MMFL_LAUNCH(block_sum_dynamic_kernel, blocks, threads, threads * sizeof(long long), nullptr)
    (d_in.get(), n, d_sums.get());
    MMFL_CHECK_LAUNCH(block_sum_dynamic_kernel);
  }
  d_sums.download(sums);
}

void shuffle(ShuffleMode mode, const int* in, const int* args, int* out, unsigned mask, int width,
             int threads) {
  DeviceArray<int> d_in(in, threads), d_args(args, threads), d_out(threads);
  MMFL_LAUNCH(shuffle_kernel, 1, threads, 0, nullptr)
  (mode, d_in.get(), d_args.get(), d_out.get(), mask, width);
  MMFL_CHECK_LAUNCH(shuffle_kernel);
  d_out.download(out);
}

void vote(VoteMode mode, const int* predicates, unsigned* out, unsigned mask, int threads) {
  DeviceArray<int> d_pred(predicates, threads);
  DeviceArray<unsigned> d_out(threads);
  MMFL_LAUNCH(vote_kernel, 1, threads, 0, nullptr)(mode, d_pred.get(), d_out.get(), mask);
  MMFL_CHECK_LAUNCH(vote_kernel);
  d_out.download(out);
}

void syncthreads_reductions(const int* predicates, int* out, int blocks, int threads) {
  DeviceArray<int> d_pred(predicates, static_cast<size_t>(blocks) * threads);
  DeviceArray<int> d_out(3 * static_cast<size_t>(blocks));
  MMFL_LAUNCH(syncthreads_reductions_kernel, blocks, threads, 0, nullptr)
  (d_pred.get(), d_out.get());
  MMFL_CHECK_LAUNCH(syncthreads_reductions_kernel);
  d_out.download(out);
}

void syncwarp_exchange(const int* in, int* out, int threads) {
  DeviceArray<int> d_in(in, threads), d_out(threads);
  MMFL_LAUNCH(syncwarp_exchange_kernel, 1, threads, 0, nullptr)(d_in.get(), d_out.get());
  MMFL_CHECK_LAUNCH(syncwarp_exchange_kernel);
  d_out.download(out);
}

AtomicCounters atomics(const AtomicCounters& initial, int blocks, int threads, int iterations) {
  DeviceArray<AtomicCounters> d_counters(&initial, 1);
  MMFL_LAUNCH(atomics_kernel, blocks, threads, 0, nullptr)(d_counters.get(), iterations);
  MMFL_CHECK_LAUNCH(atomics_kernel);
  AtomicCounters result;
  d_counters.download(&result);
  return result;
}

void coordinates(unsigned* out, int gx, int gy, int gz, int bx, int by, int bz) {
  const size_t total = static_cast<size_t>(gx) * gy * gz * bx * by * bz;
  DeviceArray<unsigned> d_out(4 * total);
  MMFL_LAUNCH(coordinates_kernel, dim3(gx, gy, gz), dim3(bx, by, bz), 0, nullptr)(d_out.get());
  MMFL_CHECK_LAUNCH(coordinates_kernel);
  d_out.download(out);
}

void trivial_launch(int bx, int by, int bz, int gx, int gy, int64_t dynamic_smem,
                    int64_t smem_opt_in) {
  DeviceArray<int> d_out(1);
  if (smem_opt_in > 0) {
    MMFL_CUDA_CHECK(cudaFuncSetAttribute(probe_trivial_kernel,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem_opt_in)));
  }
  MMFL_LAUNCH(probe_trivial_kernel, dim3(gx, gy), dim3(bx, by, bz),
              static_cast<size_t>(dynamic_smem), nullptr)
  (d_out.get(), dynamic_smem);
  MMFL_CHECK_LAUNCH(probe_trivial_kernel);
  MMFL_CUDA_CHECK(cudaDeviceSynchronize());
}

int64_t max_dynamic_shared_optin() {
  int device = 0, bytes = 0;
  MMFL_CUDA_CHECK(cudaGetDevice(&device));
  MMFL_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return bytes;
}

void half_math(const float* in, float* out, int n) {
  DeviceArray<float> d_in(in, n), d_out(n);
  MMFL_LAUNCH(half_math_kernel, blocks_of(n, 128), 128, 0, nullptr)(d_in.get(), d_out.get(), n);
  MMFL_CHECK_LAUNCH(half_math_kernel);
  d_out.download(out);
}

float stream_roundtrip(const float* host_in, float* host_out, int n) {
  cudaStream_t stream = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;
  MMFL_CUDA_CHECK(cudaStreamCreate(&stream));
  MMFL_CUDA_CHECK(cudaEventCreate(&start));
  MMFL_CUDA_CHECK(cudaEventCreate(&stop));
  DeviceArray<float> d_data(n);
  MMFL_CUDA_CHECK(cudaEventRecord(start, stream));
  MMFL_CUDA_CHECK(
      cudaMemcpyAsync(d_data.get(), host_in, n * sizeof(float), cudaMemcpyHostToDevice, stream));
  MMFL_LAUNCH(scale_kernel, blocks_of(n, 64), 64, 0, stream)(d_data.get(), n, 2.0f);
  MMFL_CHECK_LAUNCH(scale_kernel);
  MMFL_CUDA_CHECK(
      cudaMemcpyAsync(host_out, d_data.get(), n * sizeof(float), cudaMemcpyDeviceToHost, stream));
  MMFL_CUDA_CHECK(cudaEventRecord(stop, stream));
  MMFL_CUDA_CHECK(cudaStreamSynchronize(stream));
  MMFL_CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = -1.0f;
  MMFL_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  MMFL_CUDA_CHECK(cudaEventDestroy(start));
  MMFL_CUDA_CHECK(cudaEventDestroy(stop));
  MMFL_CUDA_CHECK(cudaStreamDestroy(stream));
  return ms;
}

namespace {

namespace wmma = nvcuda::wmma;

// Shared-memory operands of the wmma probe, 32-byte aligned as load_matrix_sync requires; leading
// dimensions padded past the matrix (24 elements: a multiple of 16 bytes for both types).
constexpr int kWmmaLd = 24;
template <typename T>
struct alignas(32) WmmaSmem {
  T a[16 * kWmmaLd];
  T b[16 * kWmmaLd];
  float c[16 * kWmmaLd];
};

// Element (r, col) of a matrix with leading dimension kWmmaLd in `layout`.
__device__ int wmma_at(MatrixLayout layout, int r, int col) {
  return layout == MatrixLayout::kRowMajor ? r * kWmmaLd + col : col * kWmmaLd + r;
}

template <typename T, int K, typename LayoutA, typename LayoutB>
__device__ void wmma_gemm_warp(const WmmaSmem<T>& s, MatrixLayout c_layout, float* d_smem) {
  using Op = std::conditional_t<K == 8, wmma::precision::tf32, T>;
  wmma::fragment<wmma::matrix_a, 16, 16, K, Op, LayoutA> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, K, Op, LayoutB> fb;
  wmma::fragment<wmma::accumulator, 16, 16, K, float> fc;
  const wmma::layout_t mem =
      c_layout == MatrixLayout::kRowMajor ? wmma::mem_row_major : wmma::mem_col_major;
  wmma::load_matrix_sync(fa, s.a, kWmmaLd);
  wmma::load_matrix_sync(fb, s.b, kWmmaLd);
  wmma::load_matrix_sync(fc, s.c, kWmmaLd, mem);
  wmma::mma_sync(fc, fa, fb, fc);
  wmma::store_matrix_sync(d_smem, fc, kWmmaLd, mem);
}

template <typename T, int K>
__global__ void wmma_gemm_kernel(MatrixLayout a_layout, MatrixLayout b_layout,
                                 MatrixLayout c_layout, const float* a, const float* b,
                                 const float* c, float* d) {
  __shared__ WmmaSmem<T> s;
  __shared__ __align__(32) float d_smem[16 * kWmmaLd];
  const int t = static_cast<int>(threadIdx.x);
  for (int i = t; i < 16 * K; i += 32) {
    const int r = i / K, k = i % K;       // a [16, K]
    const int kb = i / 16, col = i % 16;  // b [K, 16]
    if constexpr (K == 8) {
      s.a[wmma_at(a_layout, r, k)] = wmma::__float_to_tf32(a[i]);
      s.b[wmma_at(b_layout, kb, col)] = wmma::__float_to_tf32(b[i]);
    } else if constexpr (std::is_same_v<T, __half>) {
      s.a[wmma_at(a_layout, r, k)] = __float2half_rn(a[i]);
      s.b[wmma_at(b_layout, kb, col)] = __float2half_rn(b[i]);
    } else {
      s.a[wmma_at(a_layout, r, k)] = __float2bfloat16_rn(a[i]);
      s.b[wmma_at(b_layout, kb, col)] = __float2bfloat16_rn(b[i]);
    }
  }
  for (int i = t; i < 256; i += 32)
    s.c[wmma_at(c_layout, i / 16, i % 16)] = c[i];
  __syncwarp();
  const bool a_row = a_layout == MatrixLayout::kRowMajor;
  const bool b_row = b_layout == MatrixLayout::kRowMajor;
  if (a_row && b_row) wmma_gemm_warp<T, K, wmma::row_major, wmma::row_major>(s, c_layout, d_smem);
  if (a_row && !b_row) wmma_gemm_warp<T, K, wmma::row_major, wmma::col_major>(s, c_layout, d_smem);
  if (!a_row && b_row) wmma_gemm_warp<T, K, wmma::col_major, wmma::row_major>(s, c_layout, d_smem);
  if (!a_row && !b_row) {
    wmma_gemm_warp<T, K, wmma::col_major, wmma::col_major>(s, c_layout, d_smem);
  }
  __syncwarp();
  for (int i = t; i < 256; i += 32)
    d[i] = d_smem[wmma_at(c_layout, i / 16, i % 16)];
}

__global__ void tf32_round_kernel(const float* in, float* out, int n) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) out[i] = wmma::__float_to_tf32(in[i]);
}

}  // namespace

void wmma_gemm(WmmaType type, MatrixLayout a_layout, MatrixLayout b_layout, MatrixLayout c_layout,
               const float* a, const float* b, const float* c, float* d) {
  const int k = type == WmmaType::kTf32 ? 8 : 16;
  DeviceArray<float> d_a(a, 16 * k), d_b(b, 16 * k), d_c(c, 256), d_d(256);
  switch (type) {
    case WmmaType::kTf32:
      MMFL_LAUNCH((wmma_gemm_kernel<float, 8>), 1, 32, 0, nullptr)
      (a_layout, b_layout, c_layout, d_a.get(), d_b.get(), d_c.get(), d_d.get());
      MMFL_CHECK_LAUNCH(wmma_gemm_kernel);
      break;
    case WmmaType::kBf16:
      MMFL_LAUNCH((wmma_gemm_kernel<__nv_bfloat16, 16>), 1, 32, 0, nullptr)
      (a_layout, b_layout, c_layout, d_a.get(), d_b.get(), d_c.get(), d_d.get());
      MMFL_CHECK_LAUNCH(wmma_gemm_kernel);
      break;
    case WmmaType::kHalf:
      MMFL_LAUNCH((wmma_gemm_kernel<__half, 16>), 1, 32, 0, nullptr)
      (a_layout, b_layout, c_layout, d_a.get(), d_b.get(), d_c.get(), d_d.get());
      MMFL_CHECK_LAUNCH(wmma_gemm_kernel);
      break;
    default:
      MMFL_FAIL("wmma_gemm: unknown WmmaType ", static_cast<int>(type));
  }
  d_d.download(d);
}

void tf32_round(const float* in, float* out, int n) {
  DeviceArray<float> d_in(in, n), d_out(n);
  MMFL_LAUNCH(tf32_round_kernel, blocks_of(n, 128), 128, 0, nullptr)(d_in.get(), d_out.get(), n);
  MMFL_CHECK_LAUNCH(tf32_round_kernel);
  d_out.download(out);
}

#if defined(MMFL_SIMT)
namespace {

__global__ void probe_divergent_kernel(Divergence kind, int* out) {
  __shared__ int s[64];
  const unsigned t = threadIdx.x;
  switch (kind) {
    case Divergence::kExitBeforeSyncthreads:
      if (t >= 32) return;
      s[t] = 1;
      __syncthreads();
      break;
    case Divergence::kExitBeforeShuffle:
      if (t % 32 == 0) return;
      s[t] = __shfl_sync(0xffffffffu, static_cast<int>(t), 0);
      break;
    case Divergence::kMixedBarriers:
      if (t % 32 < 16) {
        s[t] = __shfl_xor_sync(0xffffffffu, static_cast<int>(t), 1);
      } else {
        __syncthreads();
      }
      break;
    case Divergence::kMaskWithoutSelf:
      s[t] = __shfl_sync(t == 5 ? 0x1u : 0xffffffffu, static_cast<int>(t), 0);
      break;
    case Divergence::kTrap:
      if (t == 3) __trap();
      break;
    case Divergence::kWmmaLaneExited:
    case Divergence::kWmmaPartialWarp: {
      if (kind == Divergence::kWmmaLaneExited && t % 32 == 0) return;
      __shared__ __align__(32) float m[16 * 16];
      nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 8, float> f;
      nvcuda::wmma::load_matrix_sync(f, m, 16, nvcuda::wmma::mem_row_major);
      s[t] = 0;
      break;
    }
    default:
      __trap();
  }
  out[t] = s[t];
}

}  // namespace

void divergent(Divergence kind) {
  DeviceArray<int> d_out(64);
  const unsigned threads = kind == Divergence::kWmmaPartialWarp ? 48 : 64;
  MMFL_LAUNCH(probe_divergent_kernel, 1, threads, 0, nullptr)(kind, d_out.get());
  MMFL_CHECK_LAUNCH(probe_divergent_kernel);
}
#endif

}  // namespace mmfl::test::probes::MMFL_KERNEL_NS
