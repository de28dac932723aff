// MoE on the GPU. Routers: expert choice is one block per expert, a radix select over the logits'
// order-preserving bits then one ordered pass that packs the chosen tokens (block_select.cuh);
// token choice is a thread per token for its top k, then one block per expert packing its tokens
// in order. The permutation token -> slots: a CUB radix sort of (token, slot) pairs on the GPU, a
// counting sort on the emulator. The experts: one grouped-GEMM launch per product, each 64 x 64
// tile finding its expert from the slot offsets (row-grouped: the rows are an expert's slots;
// depth-grouped, for the weight gradients: the sum runs over an expert's slots), bias, GELU and
// GELU' fused in the epilogue. The combine and the bias gradients are ordered sums, no atomics:
// every result is deterministic.
#include <cstdint>
#include <cstdio>

#include "../common/moe_checks.h"
#include "block_select.cuh"
#include "common.cuh"
#include "mmfl/kernels/launch.h"
#include "mmfl/kernels/moe.h"

namespace mmfl::kernels::MMFL_KERNEL_NS {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMaxBlocks = 65535;

unsigned blocks_for(int64_t items, int threads = kThreads) {
  const int64_t b = (items + threads - 1) / threads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > kMaxBlocks ? kMaxBlocks : b));
}

// Device memory allocated and freed on `stream` (the pool reuses it without a sync).
class Scratch {
 public:
  Scratch(size_t bytes, cudaStream_t stream) : stream_(stream) {
    MMFL_CUDA_CHECK(cudaMallocAsync(&ptr_, bytes == 0 ? 1 : bytes, stream));
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() {
    const cudaError_t err = cudaFreeAsync(ptr_, stream_);
    if (err != cudaSuccess)  // destructors report, never throw
      std::fprintf(stderr, "mmfl: cudaFreeAsync of a MoE workspace failed: %s\n",
                   cudaGetErrorString(err));
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  cudaStream_t stream_;
  void* ptr_ = nullptr;
};

// Larger floats give larger keys; -0 and +0 the same one.
__device__ __forceinline__ uint32_t order_key(float v) {
  const uint32_t u = __float_as_uint(v == 0.0f ? 0.0f : v);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// ---- Routers

// Expert blockIdx.x: its `capacity` largest logits (ties to the lower token), packed in token
// order.
__global__ void __launch_bounds__(kThreads)
    expert_choice_kernel(const float* __restrict__ logits, int64_t tokens, int64_t experts,
                         int64_t capacity, int64_t* __restrict__ order,
                         int64_t* __restrict__ gate_index) {
  __shared__ detail::BlockSelectShared sh;
  const int64_t e = blockIdx.x;
  auto load = [&](int64_t t) { return logits[t * experts + e]; };
  const detail::Selected s = detail::block_select(
      tokens, capacity, [&](int64_t t) { return order_key(load(t)); }, sh);
  int64_t* out_order = order + e * capacity;
  int64_t* out_gate = gate_index + e * capacity;
  detail::block_pack(
      tokens, true, s, load, [](float v) { return order_key(v); },
      [&](int64_t t, float, bool take, int64_t pos) {
        if (take) {
          out_order[pos] = t;
          out_gate[pos] = t * experts + e;
        }
      },
      sh);
}

// Token t's top k experts in rank order: pick[t k + j]. k selection passes over the E logits (E
// is a handful), each taking the best that ranks after the previous pick.
__global__ void token_topk_kernel(const float* __restrict__ logits, int64_t tokens, int64_t experts,
                                  int64_t k, int32_t* __restrict__ pick) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < tokens; t += stride) {
    const float* row = logits + t * experts;
    uint32_t prev_key = 0xffffffffu;
    int64_t prev_e = -1;
    for (int64_t j = 0; j < k; ++j) {
      uint32_t best_key = 0;
      int64_t best_e = -1;
      for (int64_t e = 0; e < experts; ++e) {
        const uint32_t key = order_key(row[e]);
        const bool after_prev = key < prev_key || (key == prev_key && e > prev_e);
        if (after_prev && (best_e < 0 || key > best_key)) {
          best_key = key;
          best_e = e;
        }
      }
      pick[t * k + j] = static_cast<int32_t>(best_e);
      prev_key = best_key;
      prev_e = best_e;
    }
  }
}

// counts[e] = how many picks name expert blockIdx.x (a block sum: deterministic).
__global__ void __launch_bounds__(kThreads)
    count_picks_kernel(const int32_t* __restrict__ pick, int64_t n, int64_t* __restrict__ counts) {
  const int32_t e = static_cast<int32_t>(blockIdx.x);
  long long c = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
    c += pick[i] == e ? 1 : 0;
  c = detail::block_sum(c);
  if (threadIdx.x == 0) counts[e] = c;
}

// offsets[0] = 0, offsets[e+1] = offsets[e] + counts[e], with counts held in offsets[1..E].
__global__ void scan_offsets_kernel(int64_t experts, int64_t* __restrict__ offsets) {
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    offsets[0] = 0;
    for (int64_t e = 0; e < experts; ++e)
      offsets[e + 1] += offsets[e];
  }
}

// Expert blockIdx.x's picks packed in token order (the picks are token-major).
__global__ void __launch_bounds__(kThreads)
    pack_picks_kernel(const int32_t* __restrict__ pick, int64_t n, int64_t k, int64_t experts,
                      const int64_t* __restrict__ offsets, int64_t* __restrict__ order,
                      int64_t* __restrict__ gate_index) {
  __shared__ unsigned warp_take[kWarps];
  const int32_t e = static_cast<int32_t>(blockIdx.x);
  const int tid = threadIdx.x;
  int64_t taken_before = offsets[e];
  for (int64_t base = 0; base < n; base += kThreads) {
    const int64_t i = base + tid;
    const bool take = i < n && pick[i] == e;
    __syncthreads();  // the previous tile's readers of warp_take are done
    int64_t tile_take = 0;
    const int64_t pos = taken_before + detail::block_flag_rank(take, warp_take, &tile_take);
    if (take) {
      const int64_t t = i / k;
      order[pos] = t;
      gate_index[pos] = t * experts + e;
    }
    taken_before += tile_take;
  }
}

// ---- The permutation token -> slots
// --------------------------------------------------------------
#ifdef MMFL_SIMT
// The emulator's path: a counting sort.

__global__ void count_tokens_kernel(const int64_t* __restrict__ order, int64_t slots,
                                    unsigned long long* __restrict__ token_offsets) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t s = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; s < slots; s += stride)
    atomicAdd(&token_offsets[order[s] + 1], 1ull);  // integer counts: order-independent
}

// In place over v[0..n): inclusive prefix sums, one block walking tiles of kThreads.
__global__ void __launch_bounds__(kThreads) inclusive_scan_kernel(int64_t* v, int64_t n) {
  __shared__ long long warp_sums[kWarps];
  __shared__ long long carry;
  const int tid = threadIdx.x;
  const unsigned lane = tid & 31, warp = tid >> 5;
  if (tid == 0) carry = 0;
  __syncthreads();
  for (int64_t base = 0; base < n; base += kThreads) {
    const int64_t i = base + tid;
    long long x = i < n ? v[i] : 0;
    for (int off = 1; off < 32; off *= 2) {
      const long long y = __shfl_up_sync(detail::kFullWarp, x, off);
      if (static_cast<int>(lane) >= off) x += y;
    }
    if (lane == 31) warp_sums[warp] = x;
    __syncthreads();
    long long before = carry;
    for (int w = 0; w < static_cast<int>(warp); ++w)
      before += warp_sums[w];
    if (i < n) v[i] = x + before;
    __syncthreads();
    if (tid == kThreads - 1) carry = x + before;
    __syncthreads();
  }
}

// Each slot claims a place in its token's range; the places within a token are then sorted, so
// the final order (increasing slot) does not depend on which thread claimed first. Afterwards
// cursor[t] (= token_offsets[t] on entry) holds token t's end.
__global__ void scatter_slots_kernel(const int64_t* __restrict__ order, int64_t slots,
                                     unsigned long long* __restrict__ cursor,
                                     int64_t* __restrict__ token_slots) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t s = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; s < slots; s += stride)
    token_slots[atomicAdd(&cursor[order[s]], 1ull)] = s;
}

// token_offsets after the scatter is shifted by one (entry t holds token t's end): shift it back,
// tiles walked from the top so that every entry is read before it is overwritten. One block.
__global__ void __launch_bounds__(kThreads) unshift_kernel(int64_t* v, int64_t tokens) {
  const int64_t tiles = (tokens + kThreads - 1) / kThreads;
  for (int64_t tile = tiles - 1; tile >= 0; --tile) {
    const int64_t t = tile * kThreads + threadIdx.x;
    const int64_t value = t < tokens ? (t == 0 ? 0 : v[t - 1]) : 0;
    __syncthreads();
    if (t < tokens) v[t] = value;
    __syncthreads();
  }
}

__global__ void sort_segments_kernel(const int64_t* __restrict__ token_offsets, int64_t tokens,
                                     int64_t* __restrict__ token_slots) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < tokens; t += stride) {
    int64_t* seg = token_slots + token_offsets[t];
    const int64_t n = token_offsets[t + 1] - token_offsets[t];
    for (int64_t i = 1; i < n; ++i) {  // insertion sort: a token has a few slots
      const int64_t v = seg[i];
      int64_t j = i - 1;
      for (; j >= 0 && seg[j] > v; --j)
        seg[j + 1] = seg[j];
      seg[j + 1] = v;
    }
  }
}

#else
// The GPU's path (after CUB's radix sort): token_offsets[t] = the first position of `sorted`
// (ascending) holding a token >= t.
__global__ void token_bounds_kernel(const int64_t* __restrict__ sorted, int64_t slots,
                                    int64_t tokens, int64_t* __restrict__ token_offsets) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t <= tokens; t += stride) {
    int64_t lo = 0, hi = slots;
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (sorted[mid] < t) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    token_offsets[t] = lo;
  }
}
#endif  // MMFL_SIMT

// ---- Experts: gather, grouped GEMM, slot gradients, combine
// --------------------------------------

__global__ void gather_kernel(const float* __restrict__ x, const int64_t* __restrict__ order,
                              int64_t slots, int64_t d, float* __restrict__ x_slots) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < slots * d; i += stride)
    x_slots[i] = x[order[i / d] * d + i % d];
}

__device__ __forceinline__ float gelu(float v) {
  return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
}
__device__ __forceinline__ float gelu_grad(float v) {
  return 0.5f * (1.0f + erff(v * 0.70710678118654752f)) +
         v * 0.39894228040143268f * expf(-0.5f * v * v);
}

// Tile of the grouped GEMM: 64 x 64 outputs, 16 deep per step, 256 threads of 4 x 4 outputs each
// (rows ty + 16 i, columns tx + 16 j, so shared-memory reads of a warp hit distinct banks).
constexpr int kBM = 64, kBN = 64, kBK = 16;

enum class Group : int {
  kRows,   // C[s, :] for the slots s of expert e = A[s, :] op(B_e): rows grouped by expert
  kDepth,  // C_e = sum over the slots s of e of A[s, :]^T B[s, :]: the depth grouped by expert
};
enum class Epilogue : int {
  kStore,     // c = acc
  kBias,      // c = acc + bias_e
  kBiasGelu,  // c = acc + bias_e (pre-activation), c2 = gelu(c)
  kGeluGrad,  // c = acc * gelu'(aux)
};

struct GemmArgs {
  const float* a;  // kRows: [S, K] (row s at a + s lda); kDepth: [S, M]
  int64_t lda;
  const float* b;  // kRows: expert e's matrix at b + e b_stride, [K, N] or (b_trans) [N, K];
                   // kDepth: [S, N]
  int64_t ldb, b_stride;
  bool b_trans;
  float* c;  // kRows: [S, N]; kDepth: expert e's [M, N] at c + e c_stride
  int64_t ldc, c_stride;
  float* c2;          // kBiasGelu: the activation, laid out as c
  const float* aux;   // kGeluGrad: the pre-activation, laid out as c
  const float* bias;  // kBias, kBiasGelu: expert e's [N] at bias + e N
  const int64_t* offsets;
  int64_t experts, m, n, k;  // kRows: m = S (all slots), k = K; kDepth: m = M, k unused
};

template <Group G, Epilogue EP, bool BT>
__global__ void __launch_bounds__(kThreads) grouped_gemm_kernel(GemmArgs p) {
  __shared__ float as[kBK][kBM + 4];
  __shared__ float bs[kBK][kBN + 4];
  int64_t e, m0, m_end, k_begin, k_end;
  if (G == Group::kRows) {
    // Tile blockIdx.x of the experts' row tiles, in expert order.
    int64_t tile = blockIdx.x;
    e = -1;
    for (int64_t x = 0; x < p.experts; ++x) {
      const int64_t rows = p.offsets[x + 1] - p.offsets[x];
      const int64_t tiles = (rows + kBM - 1) / kBM;
      if (tile < tiles) {
        e = x;
        break;
      }
      tile -= tiles;
    }
    if (e < 0) return;  // past the last tile: the whole block leaves, before any barrier
    m0 = p.offsets[e] + tile * kBM;
    m_end = p.offsets[e + 1];
    k_begin = 0;
    k_end = p.k;
  } else {
    e = blockIdx.z;
    m0 = int64_t(blockIdx.x) * kBM;
    m_end = p.m;
    k_begin = p.offsets[e];
    k_end = p.offsets[e + 1];
  }
  const int64_t n0 = int64_t(blockIdx.y) * kBN;
  const float* b = G == Group::kRows ? p.b + e * p.b_stride : p.b;
  float* c = G == Group::kRows ? p.c : p.c + e * p.c_stride;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  float acc[4][4] = {};
  for (int64_t k0 = k_begin; k0 < k_end; k0 += kBK) {
    // A tile into as[kk][i]: kRows reads rows of A (k contiguous), kDepth columns (m contiguous).
    for (int idx = tid; idx < kBM * kBK; idx += kThreads) {
      int i, kk;
      if (G == Group::kRows) {
        i = idx / kBK, kk = idx % kBK;
      } else {
        i = idx % kBM, kk = idx / kBM;
      }
      const int64_t row = m0 + i, depth = k0 + kk;
      float v = 0.0f;
      if (row < m_end && depth < k_end)
        v = G == Group::kRows ? p.a[row * p.lda + depth] : p.a[depth * p.lda + row];
      as[kk][i] = v;
    }
    for (int idx = tid; idx < kBN * kBK; idx += kThreads) {
      int j, kk;
      if (BT) {
        j = idx / kBK, kk = idx % kBK;
      } else {
        j = idx % kBN, kk = idx / kBN;
      }
      const int64_t col = n0 + j, depth = k0 + kk;
      float v = 0.0f;
      if (col < p.n && depth < k_end) v = BT ? b[col * p.ldb + depth] : b[depth * p.ldb + col];
      bs[kk][j] = v;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK; ++kk) {
      float av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i)
        av[i] = as[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j)
        bv[j] = bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
          acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t row = m0 + ty + 16 * i;
    if (row >= m_end) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t col = n0 + tx + 16 * j;
      if (col >= p.n) continue;
      const int64_t at = row * p.ldc + col;
      float v = acc[i][j];
      if (EP == Epilogue::kBias || EP == Epilogue::kBiasGelu) v += p.bias[e * p.n + col];
      if (EP == Epilogue::kGeluGrad) v *= gelu_grad(p.aux[at]);
      c[at] = v;
      if (EP == Epilogue::kBiasGelu) p.c2[at] = gelu(v);
    }
  }
}

template <Group G, Epilogue EP, bool BT>
void launch_gemm(const GemmArgs& p, cudaStream_t stream) {
  dim3 grid;
  if (G == Group::kRows) {
    // Every expert's row tiles: at most S / kBM + E of them (a partial tile per expert).
    const int64_t tiles = (p.m + kBM - 1) / kBM + p.experts;
    MMFL_CHECK(tiles <= 2147483647, "moe grouped GEMM: too many row tiles (", tiles, ")");
    grid = dim3(static_cast<unsigned>(tiles), static_cast<unsigned>((p.n + kBN - 1) / kBN), 1);
  } else {
    grid = dim3(static_cast<unsigned>((p.m + kBM - 1) / kBM),
                static_cast<unsigned>((p.n + kBN - 1) / kBN), static_cast<unsigned>(p.experts));
  }
  MMFL_CHECK(grid.y <= 65535 && grid.z <= 65535, "moe grouped GEMM: ", p.n, " columns or ",
             p.experts, " experts exceed the grid");
  MMFL_LAUNCH((grouped_gemm_kernel<G, EP, BT>), grid, kThreads, 0, stream)(p);
  MMFL_CHECK_LAUNCH(grouped_gemm_kernel<G, EP, BT>);
}

// grad_out[s] = gate[s] gy[t], grad_gate[s] = <gy[t], out[s]>: one warp per slot (a fixed
// butterfly sums the dot product).
__global__ void __launch_bounds__(kThreads)
    slot_grad_kernel(const int64_t* __restrict__ order, const float* __restrict__ gate,
                     const float* __restrict__ out, const float* __restrict__ gy, int64_t slots,
                     int64_t d, float* __restrict__ grad_gate, float* __restrict__ grad_out) {
  const int64_t warps = int64_t(gridDim.x) * kWarps;
  const int lane = threadIdx.x % 32;
  for (int64_t s = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32; s < slots; s += warps) {
    const float* g = gy + order[s] * d;
    const float w = gate[s];
    float dot = 0.0f;
    for (int64_t j = lane; j < d; j += 32) {
      dot = fmaf(g[j], out[s * d + j], dot);
      grad_out[s * d + j] = w * g[j];
    }
    dot = detail::warp_sum(dot);
    if (lane == 0) grad_gate[s] = dot;
  }
}

// gb[e, j] = sum over the slots s of expert blockIdx.y of src[s, j], in slot order.
__global__ void bias_grad_kernel(const float* __restrict__ src, const int64_t* __restrict__ offsets,
                                 int64_t n, float* __restrict__ gb) {
  const int64_t e = blockIdx.y;
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= n) return;
  float acc = 0.0f;
  for (int64_t s = offsets[e]; s < offsets[e + 1]; ++s)
    acc += src[s * n + j];
  gb[e * n + j] = acc;
}

// y[t] = sum over t's slots, in order, of weight[s] src[s] (weight null: 1). One thread per
// output value, so consecutive threads read consecutive features of a slot's row.
__global__ void __launch_bounds__(kThreads)
    combine_kernel(const float* __restrict__ src, const float* __restrict__ weight,
                   const int64_t* __restrict__ token_offsets,
                   const int64_t* __restrict__ token_slots, int64_t tokens, int64_t d,
                   float* __restrict__ y) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < tokens * d; i += stride) {
    const int64_t t = i / d, j = i % d;
    float acc = 0.0f;
    for (int64_t at = token_offsets[t]; at < token_offsets[t + 1]; ++at) {
      const int64_t s = token_slots[at];
      acc = fmaf(weight != nullptr ? weight[s] : 1.0f, src[s * d + j], acc);
    }
    y[i] = acc;
  }
}

void check_shape(const char* fn, const int64_t* order, const int64_t* offsets, const MoeShape& s) {
  checks::check_moe_shape(fn, s);
  MMFL_CHECK(offsets != nullptr, fn, ": offsets is null");
  MMFL_CHECK(s.slots == 0 || order != nullptr, fn, ": order is null");
}

}  // namespace

void moe_route_expert_choice(const float* logits, int64_t tokens, int64_t experts, int64_t capacity,
                             int64_t* order, int64_t* gate_index, cudaStream_t stream) {
  checks::check_router_args("moe_route_expert_choice", logits, tokens, experts, capacity,
                            "capacity", tokens, "tokens");
  MMFL_CHECK(experts <= 2147483647, "moe_route_expert_choice: too many experts (", experts, ")");
  MMFL_LAUNCH(expert_choice_kernel, static_cast<unsigned>(experts), kThreads, 0, stream)
  (logits, tokens, experts, capacity, order, gate_index);
  MMFL_CHECK_LAUNCH(expert_choice_kernel);
}

void moe_route_token_choice(const float* logits, int64_t tokens, int64_t experts, int64_t k,
                            int64_t* order, int64_t* gate_index, int64_t* offsets,
                            cudaStream_t stream) {
  checks::check_router_args("moe_route_token_choice", logits, tokens, experts, k, "k", experts,
                            "experts");
  MMFL_CHECK(experts <= 65535, "moe_route_token_choice: at most 65535 experts, got ", experts);
  Scratch pick(sizeof(int32_t) * static_cast<size_t>(tokens * k), stream);
  MMFL_LAUNCH(token_topk_kernel, blocks_for(tokens), kThreads, 0, stream)
  (logits, tokens, experts, k, pick.as<int32_t>());
  MMFL_CHECK_LAUNCH(token_topk_kernel);
  MMFL_LAUNCH(count_picks_kernel, static_cast<unsigned>(experts), kThreads, 0, stream)
  (pick.as<int32_t>(), tokens * k, offsets + 1);
  MMFL_CHECK_LAUNCH(count_picks_kernel);
  MMFL_LAUNCH(scan_offsets_kernel, 1, 32, 0, stream)(experts, offsets);
  MMFL_CHECK_LAUNCH(scan_offsets_kernel);
  MMFL_LAUNCH(pack_picks_kernel, static_cast<unsigned>(experts), kThreads, 0, stream)
  (pick.as<int32_t>(), tokens * k, k, experts, offsets, order, gate_index);
  MMFL_CHECK_LAUNCH(pack_picks_kernel);
}

#ifndef MMFL_SIMT
}  // namespace mmfl::kernels::MMFL_KERNEL_NS
#include <cub/device/device_radix_sort.cuh>
namespace mmfl::kernels::MMFL_KERNEL_NS {
namespace {
__global__ void iota_kernel(int64_t n, int64_t* __restrict__ v) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    v[i] = i;
}
}  // namespace
#endif

void moe_token_slots(const int64_t* order, int64_t slots, int64_t tokens, int64_t* token_offsets,
                     int64_t* token_slots, cudaStream_t stream) {
  MMFL_CHECK(tokens >= 0 && slots >= 0, "moe_token_slots: tokens and slots must be >= 0, got ",
             tokens, " and ", slots);
  MMFL_CHECK(slots == 0 || order != nullptr, "moe_token_slots: order is null");
  if (slots == 0) {
    MMFL_CUDA_CHECK(cudaMemsetAsync(token_offsets, 0, sizeof(int64_t) * (tokens + 1), stream));
    return;
  }
#ifndef MMFL_SIMT
  // GPU: a stable radix sort of (token, slot) pairs by token keeps each token's slots increasing.
  MMFL_CHECK(slots <= 2147483647, "moe_token_slots: slots must be < 2^31 (CUB's item count), got ",
             slots);
  int end_bit = 1;
  while ((int64_t(1) << end_bit) < tokens)
    ++end_bit;
  Scratch sorted(sizeof(int64_t) * slots, stream), ids(sizeof(int64_t) * slots, stream);
  MMFL_LAUNCH(iota_kernel, blocks_for(slots), kThreads, 0, stream)(slots, ids.as<int64_t>());
  MMFL_CHECK_LAUNCH(iota_kernel);
  size_t bytes = 0;
  MMFL_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, order, sorted.as<int64_t>(),
                                                  ids.as<int64_t>(), token_slots,
                                                  static_cast<int>(slots), 0, end_bit, stream));
  Scratch temp(bytes, stream);
  MMFL_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      temp.as<void>(), bytes, order, sorted.as<int64_t>(), ids.as<int64_t>(), token_slots,
      static_cast<int>(slots), 0, end_bit, stream));
  MMFL_LAUNCH(token_bounds_kernel, blocks_for(tokens + 1), kThreads, 0, stream)
  (sorted.as<int64_t>(), slots, tokens, token_offsets);
  MMFL_CHECK_LAUNCH(token_bounds_kernel);
#else
  // Emulator: a counting sort (CUB does not run here). Counts, prefix sums, claimed places, then
  // each token's places sorted: the result is the GPU path's.
  auto* offs = reinterpret_cast<unsigned long long*>(token_offsets);
  MMFL_CUDA_CHECK(cudaMemsetAsync(token_offsets, 0, sizeof(int64_t) * (tokens + 1), stream));
  MMFL_LAUNCH(count_tokens_kernel, blocks_for(slots), kThreads, 0, stream)(order, slots, offs);
  MMFL_CHECK_LAUNCH(count_tokens_kernel);
  MMFL_LAUNCH(inclusive_scan_kernel, 1, kThreads, 0, stream)(token_offsets, tokens + 1);
  MMFL_CHECK_LAUNCH(inclusive_scan_kernel);
  MMFL_LAUNCH(scatter_slots_kernel, blocks_for(slots), kThreads, 0, stream)
  (order, slots, offs, token_slots);
  MMFL_CHECK_LAUNCH(scatter_slots_kernel);
  MMFL_LAUNCH(unshift_kernel, 1, kThreads, 0, stream)(token_offsets, tokens);
  MMFL_CHECK_LAUNCH(unshift_kernel);
  MMFL_LAUNCH(sort_segments_kernel, blocks_for(tokens), kThreads, 0, stream)
  (token_offsets, tokens, token_slots);
  MMFL_CHECK_LAUNCH(sort_segments_kernel);
#endif
}

void moe_experts_forward(const float* x, const int64_t* order, const int64_t* offsets,
                         const float* w1, const float* b1, const float* w2, const float* b2,
                         const MoeShape& s, float* x_slots, float* pre, float* act, float* out,
                         cudaStream_t stream) {
  check_shape("moe_experts_forward", order, offsets, s);
  if (s.slots == 0) return;
  const int64_t d = s.model, f = s.hidden;
  MMFL_LAUNCH(gather_kernel, blocks_for(s.slots * d), kThreads, 0, stream)
  (x, order, s.slots, d, x_slots);
  MMFL_CHECK_LAUNCH(gather_kernel);
  GemmArgs p{};
  p.offsets = offsets;
  p.experts = s.experts;
  p.m = s.slots;
  // pre = x_slots w1[e]^T + b1[e], act = gelu(pre)
  p.a = x_slots, p.lda = d, p.b = w1, p.ldb = d, p.b_stride = f * d, p.b_trans = true;
  p.c = pre, p.ldc = f, p.c2 = act, p.bias = b1, p.n = f, p.k = d;
  launch_gemm<Group::kRows, Epilogue::kBiasGelu, true>(p, stream);
  // out = act w2[e]^T + b2[e]
  p.a = act, p.lda = f, p.b = w2, p.ldb = f, p.b_stride = d * f;
  p.c = out, p.ldc = d, p.c2 = nullptr, p.bias = b2, p.n = d, p.k = f;
  launch_gemm<Group::kRows, Epilogue::kBias, true>(p, stream);
}

void moe_combine(const float* src, const float* weight, const int64_t* token_offsets,
                 const int64_t* token_slots, const MoeShape& s, float* y, cudaStream_t stream) {
  checks::check_moe_shape("moe_combine", s);
  if (s.tokens == 0) return;
  MMFL_LAUNCH(combine_kernel, blocks_for(s.tokens * s.model), kThreads, 0, stream)
  (src, weight, token_offsets, token_slots, s.tokens, s.model, y);
  MMFL_CHECK_LAUNCH(combine_kernel);
}

void moe_experts_backward(const int64_t* order, const int64_t* offsets, const float* gate,
                          const float* w1, const float* w2, const MoeShape& s, const float* x_slots,
                          const float* pre, const float* act, const float* out, const float* gy,
                          float* grad_gate, float* grad_out, float* grad_pre, float* grad_x_slots,
                          float* gw1, float* gb1, float* gw2, float* gb2, cudaStream_t stream) {
  check_shape("moe_experts_backward", order, offsets, s);
  const int64_t d = s.model, f = s.hidden;
  if (s.slots > 0) {
    MMFL_LAUNCH(slot_grad_kernel, blocks_for(s.slots, kWarps), kThreads, 0, stream)
    (order, gate, out, gy, s.slots, d, grad_gate, grad_out);
    MMFL_CHECK_LAUNCH(slot_grad_kernel);
    GemmArgs p{};
    p.offsets = offsets;
    p.experts = s.experts;
    p.m = s.slots;
    // grad_pre = (grad_out w2[e]) * gelu'(pre): w2[e] is [d, f] = [K, N]
    p.a = grad_out, p.lda = d, p.b = w2, p.ldb = f, p.b_stride = d * f, p.b_trans = false;
    p.c = grad_pre, p.ldc = f, p.aux = pre, p.n = f, p.k = d;
    launch_gemm<Group::kRows, Epilogue::kGeluGrad, false>(p, stream);
    if (grad_x_slots != nullptr) {
      // grad_x_slots = grad_pre w1[e]: w1[e] is [f, d] = [K, N]
      p.a = grad_pre, p.lda = f, p.b = w1, p.ldb = d, p.b_stride = f * d;
      p.c = grad_x_slots, p.ldc = d, p.aux = nullptr, p.n = d, p.k = f;
      launch_gemm<Group::kRows, Epilogue::kStore, false>(p, stream);
    }
  }
  // Weight gradients, summed over each expert's slots (zero for an expert without any).
  GemmArgs q{};
  q.offsets = offsets;
  q.experts = s.experts;
  // gw2[e] [d, f] = grad_out_e^T act_e
  q.a = grad_out, q.lda = d, q.b = act, q.ldb = f, q.b_stride = 0, q.b_trans = false;
  q.c = gw2, q.ldc = f, q.c_stride = d * f, q.m = d, q.n = f;
  launch_gemm<Group::kDepth, Epilogue::kStore, false>(q, stream);
  // gw1[e] [f, d] = grad_pre_e^T x_slots_e
  q.a = grad_pre, q.lda = f, q.b = x_slots, q.ldb = d;
  q.c = gw1, q.ldc = d, q.c_stride = f * d, q.m = f, q.n = d;
  launch_gemm<Group::kDepth, Epilogue::kStore, false>(q, stream);
  MMFL_LAUNCH(bias_grad_kernel, dim3(blocks_for(d), static_cast<unsigned>(s.experts)), kThreads, 0,
              stream)
  (grad_out, offsets, d, gb2);
  MMFL_CHECK_LAUNCH(bias_grad_kernel);
  MMFL_LAUNCH(bias_grad_kernel, dim3(blocks_for(f), static_cast<unsigned>(s.experts)), kThreads, 0,
              stream)
  (grad_pre, offsets, f, gb1);
  MMFL_CHECK_LAUNCH(bias_grad_kernel);
}

}  // namespace mmfl::kernels::MMFL_KERNEL_NS
