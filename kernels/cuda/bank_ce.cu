// Cross entropy of queries against a feature bank, and CreamFL's representation ensemble, on the
// GPU: thin kernels around the rows x bank passes of bank_tile.cuh.
// Forward: one launch over (64-row query tiles) x (bank splits). With one split it writes lse and
//   loss itself; with several (few queries against a long bank, the training case: a batch
//   against the public set) each block leaves a partial log-sum-exp in a stream-ordered
//   workspace that a second launch merges in a fixed order.
// Backward: the logit tiles recomputed, turned into dL/dlogits and multiplied by the bank, once
//   for grad_q (rows: queries, bank: bank) and once for grad_bank (rows: bank, bank: queries).
//   Each output row is owned by one block per split and splits are summed in a fixed order: no
//   atomics, deterministic.
// Ensemble: the forward with all k*n local features as query rows (row c*n + j targets bank row
//   j), its losses written straight into `weights`; then one warp per public sample turns its k
//   losses into softmax weights in place and sums the clients' features. No workspace unless the
//   forward splits the bank (small k*n only).
#include <algorithm>
#include <cstdint>
#include <cstdio>

#include "bank_tile.cuh"
#include "mmfl/kernels/bank_ce.h"
#include "mmfl/kernels/launch.h"

namespace mmfl::kernels::MMFL_KERNEL_NS {
namespace {

using bank::AccumSpace;
using bank::kTileCols;
using bank::kTileRows;
using bank::RunningLse;
using detail::Access;

// ---- Splitting the bank -------------------------------------------------------------------------

// A 64-row query tile streams the whole bank, so a batch of 256 queries against a bank of 50,000
// would keep 4 of an H100's 132 SMs busy. The bank is split until there are about kTargetBlocks
// blocks (4 per SM), each split at least kMinColTilesPerSplit tiles long (64 x 128 logits: 4
// MFLOP at d = 256, far more than its partial result costs to write and merge). The split depends
// on the sizes only, so results are reproducible from GPU to GPU.
constexpr int64_t kTargetBlocks = 4 * 132;
constexpr int64_t kMinColTilesPerSplit = 2;
// The backward's partial gradients ([splits, rows, d] floats) stay under this.
constexpr int64_t kMaxPartialGradBytes = int64_t{64} << 20;

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

struct BankSplit {
  int64_t splits;
  int64_t cols_per_split;  // a multiple of kTileCols; the last split may be shorter
};

BankSplit split_bank(int64_t rows, int64_t cols, int64_t max_splits) {
  const int64_t col_tiles = ceil_div(cols, kTileCols);
  const int64_t wanted = std::min({ceil_div(kTargetBlocks, ceil_div(rows, kTileRows)),
                                   col_tiles / kMinColTilesPerSplit, max_splits});
  const int64_t tiles_per_split = ceil_div(col_tiles, std::max<int64_t>(wanted, 1));
  // Recounted so that no split is empty.
  return BankSplit{ceil_div(col_tiles, tiles_per_split), tiles_per_split * kTileCols};
}

dim3 tile_grid(int64_t rows, const BankSplit& split) {
  return dim3(static_cast<unsigned>(ceil_div(rows, kTileRows)),
              static_cast<unsigned>(split.splits));
}

// A scratch buffer allocated and freed on `stream` (the default memory pool reuses it without a
// device synchronization); freed after the work queued while it lives.
class StreamScratch {
 public:
  StreamScratch(int64_t floats, cudaStream_t stream) : stream_(stream) {
    MMFL_CUDA_CHECK(cudaMallocAsync(&ptr_, static_cast<size_t>(floats) * sizeof(float), stream));
  }
  StreamScratch(const StreamScratch&) = delete;
  StreamScratch& operator=(const StreamScratch&) = delete;
  ~StreamScratch() {
    const cudaError_t err = cudaFreeAsync(ptr_, stream_);
    if (err != cudaSuccess) {  // destructors report, never throw
      std::fprintf(stderr, "mmfl: cudaFreeAsync of a bank_ce workspace failed: %s\n",
                   cudaGetErrorString(err));
    }
  }
  float* get() const { return ptr_; }

 private:
  cudaStream_t stream_;
  float* ptr_ = nullptr;
};

// ---- Forward ------------------------------------------------------------------------------------

// Targets of the forward (see bank::row_lse_pass): an array, or CreamFL's pairing of local row
// c*n + j with bank row j.
struct TargetArray {
  const int64_t* target;  // [rows]
  __device__ __forceinline__ int64_t operator()(int64_t row) const { return target[row]; }
};
struct TargetRowModN {
  int64_t n;
  __device__ __forceinline__ int64_t operator()(int64_t row) const { return row % n; }
};

// lse = log-sum-exp of the row's logits, loss = lse - logit[target]. A target outside the bank
// (the device path cannot check it without a synchronization) gives a NaN loss.
__device__ __forceinline__ void write_row(RunningLse r, float picked, int64_t target, int64_t cols,
                                          int64_t row, float* __restrict__ lse,
                                          float* __restrict__ loss) {
  const float l = r.max + logf(r.sum);
  if (lse != nullptr) lse[row] = l;
  loss[row] = target >= 0 && target < cols ? l - picked : NAN;
}

// Block (x, y): query rows [64x, 64x + 64) against bank split y. `partial` == nullptr (one split):
// writes lse (if not null) and loss. Otherwise leaves for bank_ce_merge_kernel, in partial
// [2 * splits + 1, rows], the split's running log-sum-exp (max in row y, sum in row splits + y)
// and, from the split that holds the row's target, the target's logit (row 2 * splits).
template <typename Target, Precision P>
__global__ void __launch_bounds__(bank::kThreads)
    bank_ce_rows_kernel(const float* __restrict__ q,  // [rows, d]
                        int64_t rows,
                        const float* __restrict__ g,  // [cols, d]
                        int64_t cols, int64_t d,
                        const float* __restrict__ tau,  // [1]
                        Target target, int64_t cols_per_split,
                        float* __restrict__ lse,      // [rows] or nullptr
                        float* __restrict__ loss,     // [rows]
                        float* __restrict__ partial,  // [2 * splits + 1, rows] or nullptr
                        Access load) {
  __shared__ bank::RowLseSmem smem;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTileRows;
  const int64_t col_begin = static_cast<int64_t>(blockIdx.y) * cols_per_split;
  const int64_t col_end = cols - col_begin < cols_per_split ? cols : col_begin + cols_per_split;
  RunningLse run;
  float picked;
  bank::row_lse_pass(q, rows, g, col_begin, col_end, d, row0, 1.0f / *tau, load, P, target, smem,
                     run, picked);
  const int64_t row = row0 + threadIdx.x;
  if (threadIdx.x >= kTileRows || row >= rows) return;
  const int64_t t = target(row);
  if (partial == nullptr) {
    write_row(run, picked, t, cols, row, lse, loss);
    return;
  }
  const int64_t stride = static_cast<int64_t>(gridDim.y) * rows;
  const int64_t at = static_cast<int64_t>(blockIdx.y) * rows + row;
  partial[at] = run.max;
  partial[stride + at] = run.sum;
  if (t >= col_begin && t < col_end) partial[2 * stride + row] = picked;
}

constexpr int kMergeThreads = 256;

// One thread per row merges the splits' partials in split order (deterministic).
template <typename Target>
__global__ void __launch_bounds__(kMergeThreads)
    bank_ce_merge_kernel(const float* __restrict__ partial,  // [2 * splits + 1, rows]
                         int64_t splits, int64_t rows, int64_t cols, Target target,
                         float* __restrict__ lse,     // [rows] or nullptr
                         float* __restrict__ loss) {  // [rows]
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kMergeThreads + threadIdx.x;
  if (row >= rows) return;
  const int64_t stride = splits * rows;
  RunningLse r = bank::lse_empty();
  for (int64_t s = 0; s < splits; ++s) {
    const int64_t at = s * rows + row;
    r = bank::lse_merge(r, RunningLse{partial[at], partial[stride + at]});
  }
  // Written by the split that holds the target; never written when the target is outside the
  // bank, and then not read either (write_row gives NaN).
  const int64_t t = target(row);
  const float picked = t >= 0 && t < cols ? partial[2 * stride + row] : 0.0f;
  write_row(r, picked, t, cols, row, lse, loss);
}

// Per-row cross entropy of q [rows, d] against g [cols, d]: the forward of bank_ce and the
// scoring of the ensemble.
template <Precision P, typename Target>
void rows_forward(const float* q, int64_t rows, const float* g, int64_t cols, int64_t d,
                  const float* tau, Target target, float* lse, float* loss, cudaStream_t stream) {
  const Access load = detail::choose_access(q, g, d);
  const BankSplit split = split_bank(rows, cols, kTargetBlocks);
  if (split.splits == 1) {
    MMFL_LAUNCH((bank_ce_rows_kernel<Target, P>), tile_grid(rows, split), bank::kThreads, 0, stream)
    (q, rows, g, cols, d, tau, target, split.cols_per_split, lse, loss, nullptr, load);
    MMFL_CHECK_LAUNCH(bank_ce_rows_kernel);
    return;
  }
  const StreamScratch partial((2 * split.splits + 1) * rows, stream);
  MMFL_LAUNCH((bank_ce_rows_kernel<Target, P>), tile_grid(rows, split), bank::kThreads, 0, stream)
  (q, rows, g, cols, d, tau, target, split.cols_per_split, nullptr, nullptr, partial.get(), load);
  MMFL_CHECK_LAUNCH(bank_ce_rows_kernel);
  MMFL_LAUNCH(bank_ce_merge_kernel<Target>, static_cast<unsigned>(ceil_div(rows, kMergeThreads)),
              kMergeThreads, 0, stream)
  (partial.get(), split.splits, rows, cols, target, lse, loss);
  MMFL_CHECK_LAUNCH(bank_ce_merge_kernel<Target>);
}

// ---- Backward -----------------------------------------------------------------------------------

// dL/dlogit[i, m] = g_i * (P[i, m] - [m == t_i]), P = exp(logit - lse_i), for the two passes:
// rows are queries (grad_q), or rows are bank rows and the queries are the columns (grad_bank).
struct QueryGradDs {
  const int64_t* target;   // [b]
  const float* lse;        // [b]
  const float* grad_loss;  // [b]
  struct Row {
    float lse, g;
    int64_t target;
  };
  struct Col {};
  __device__ __forceinline__ Row row(int64_t i) const {
    return Row{lse[i], grad_loss[i], target[i]};
  }
  __device__ __forceinline__ Col col(int64_t) const { return Col{}; }
  __device__ __forceinline__ float operator()(const Row& r, const Col&, int64_t, int64_t m,
                                              float s) const {
    return r.g * (expf(s - r.lse) - (m == r.target ? 1.0f : 0.0f));
  }
};

struct BankGradDs {
  const int64_t* target;   // [b]
  const float* lse;        // [b]
  const float* grad_loss;  // [b]
  struct Row {};
  struct Col {
    float lse, g;
    int64_t target;
  };
  __device__ __forceinline__ Row row(int64_t) const { return Row{}; }
  __device__ __forceinline__ Col col(int64_t i) const {
    return Col{lse[i], grad_loss[i], target[i]};
  }
  __device__ __forceinline__ float operator()(const Row&, const Col& c, int64_t m, int64_t,
                                              float s) const {
    return c.g * (expf(s - c.lse) - (m == c.target ? 1.0f : 0.0f));
  }
};

// Block (x, y): out rows [64x, 64x + 64) of split y, out = [splits, rows, d].
template <typename Ds, Precision P>
__global__ void __launch_bounds__(bank::kThreads)
    bank_ce_grad_kernel(const float* __restrict__ q,  // [rows, d] rows whose gradient is made
                        int64_t rows,
                        const float* __restrict__ g,  // [cols, d] their bank
                        int64_t cols, int64_t d,
                        const float* __restrict__ tau,  // [1]
                        Ds ds, int64_t cols_per_split,
                        float* __restrict__ out,  // [splits, rows, d]
                        Access load, AccumSpace space) {
  __shared__ bank::GradSmem smem;
  MMFL_DYNAMIC_SHARED(float, shared_accum);  // [64, d] when space == kShared
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTileRows;
  const int64_t col_begin = static_cast<int64_t>(blockIdx.y) * cols_per_split;
  const int64_t col_end = cols - col_begin < cols_per_split ? cols : col_begin + cols_per_split;
  bank::grad_rows_pass(q, rows, g, col_begin, col_end, d, row0, 1.0f / *tau, ds, load, P, space,
                       smem, shared_accum,
                       out + (static_cast<int64_t>(blockIdx.y) * rows + row0) * d);
}

constexpr int kSumThreads = 256;

// out[x] = sum_s partial[s][x], in split order.
__global__ void __launch_bounds__(kSumThreads)
    sum_splits_kernel(const float* __restrict__ partial,  // [splits, count]
                      int64_t splits, int64_t count,
                      float* __restrict__ out) {  // [count]
  const int64_t step = static_cast<int64_t>(gridDim.x) * kSumThreads;
  for (int64_t x = static_cast<int64_t>(blockIdx.x) * kSumThreads + threadIdx.x; x < count;
       x += step) {
    float total = 0.0f;
    for (int64_t s = 0; s < splits; ++s)
      total += partial[s * count + x];
    out[x] = total;
  }
}

// out [rows, d] = (1/tau) dL/dlogits [rows, cols] * g [cols, d], the logits recomputed.
template <Precision P, typename Ds>
void rows_backward(const float* q, int64_t rows, const float* g, int64_t cols, int64_t d,
                   const float* tau, const Ds& ds, Access load, float* out, cudaStream_t stream) {
  const AccumSpace space = bank::choose_accum_space(d);
  const size_t smem = bank::accum_shared_bytes(space, d);
  // More than 48 KiB of dynamic shared memory needs an explicit opt-in.
  MMFL_CUDA_CHECK(cudaFuncSetAttribute(bank_ce_grad_kernel<Ds, P>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(bank::kMaxSharedAccumBytes)));
  const int64_t row_bytes = rows * d * static_cast<int64_t>(sizeof(float));
  const BankSplit split =
      split_bank(rows, cols, std::max<int64_t>(1, kMaxPartialGradBytes / row_bytes));
  if (split.splits == 1) {
    MMFL_LAUNCH((bank_ce_grad_kernel<Ds, P>), tile_grid(rows, split), bank::kThreads, smem, stream)
    (q, rows, g, cols, d, tau, ds, split.cols_per_split, out, load, space);
    MMFL_CHECK_LAUNCH(bank_ce_grad_kernel);
    return;
  }
  const StreamScratch partial(split.splits * rows * d, stream);
  MMFL_LAUNCH((bank_ce_grad_kernel<Ds, P>), tile_grid(rows, split), bank::kThreads, smem, stream)
  (q, rows, g, cols, d, tau, ds, split.cols_per_split, partial.get(), load, space);
  MMFL_CHECK_LAUNCH(bank_ce_grad_kernel);
  const int64_t blocks = std::min<int64_t>(ceil_div(rows * d, kSumThreads), 8 * kTargetBlocks);
  MMFL_LAUNCH(sum_splits_kernel, static_cast<unsigned>(blocks), kSumThreads, 0, stream)
  (partial.get(), split.splits, rows * d, out);
  MMFL_CHECK_LAUNCH(sum_splits_kernel);
}

// ---- Ensemble -----------------------------------------------------------------------------------

constexpr int kCombineWarps = 8;  // public samples per block, one warp each

// Warp per public sample j. kContrastive: weights[:, j] holds the clients' cross entropies
// (CreamFL's score is its negative, the log-softmax at the matched sample) and is overwritten with
// their softmax over clients; kMean: with 1/k. Then out[j] = sum_c weights[c, j] * local[c, j].
__global__ void __launch_bounds__(kCombineWarps * 32)
    ensemble_combine_kernel(const float* __restrict__ local,  // [k, n, d]
                            int64_t k, int64_t n, int64_t d, EnsembleWeighting weighting,
                            float* weights,           // [k, n] in: losses; out: weights
                            float* __restrict__ out,  // [n, d]
                            Access load) {
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kCombineWarps + threadIdx.x / 32;
  if (j >= n) return;  // the whole warp: j is per warp
  if (weighting == EnsembleWeighting::kContrastive) {
    // Every lane folds all k losses itself (broadcast loads; k is tens): no shuffles needed.
    RunningLse run = bank::lse_empty();
    for (int64_t c = 0; c < k; ++c)
      run = bank::lse_merge(run, RunningLse{-weights[c * n + j], 1.0f});
    __syncwarp();  // every lane has read every loss before any is overwritten
    for (int64_t c = lane; c < k; c += 32)
      weights[c * n + j] = expf(-weights[c * n + j] - run.max) / run.sum;
  } else {
    const float w = 1.0f / static_cast<float>(k);
    for (int64_t c = lane; c < k; c += 32)
      weights[c * n + j] = w;
  }
  __syncwarp();                      // orders every lane's weight stores before all lanes read them
  const float* src = local + j * d;  // client c's row j at src + c * n * d
  float* dst = out + j * d;
  const int64_t client_stride = n * d;
  if (load == Access::kVector4) {
    for (int64_t x = 4 * lane; x < d; x += 4 * 32) {
      float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 4
      for (int64_t c = 0; c < k; ++c) {
        const float w = weights[c * n + j];
        const float4 v = __ldg(reinterpret_cast<const float4*>(src + c * client_stride + x));
        acc.x += w * v.x;
        acc.y += w * v.y;
        acc.z += w * v.z;
        acc.w += w * v.w;
      }
      *reinterpret_cast<float4*>(dst + x) = acc;
    }
  } else {
    for (int64_t x = lane; x < d; x += 32) {
      float acc = 0.0f;
#pragma unroll 4
      for (int64_t c = 0; c < k; ++c)
        acc += weights[c * n + j] * __ldg(src + c * client_stride + x);
      dst[x] = acc;
    }
  }
}

// ---- Argument checks ----------------------------------------------------------------------------

void check_sizes(const char* fn, const char* rows_name, int64_t rows, int64_t n, int64_t d,
                 const float* tau) {
  MMFL_CHECK(rows >= 1, fn, ": ", rows_name, " must be >= 1, got ", rows);
  MMFL_CHECK(n >= 1, fn, ": n (bank rows) must be >= 1, got ", n);
  MMFL_CHECK(d >= 1, fn, ": d (feature size) must be >= 1, got ", d);
  MMFL_CHECK(tau != nullptr, fn, ": tau is null");
}

}  // namespace

void bank_ce_forward(const float* q, const float* bank, const int64_t* target, int64_t b, int64_t n,
                     int64_t d, const float* tau, float* lse, float* loss, Precision precision,
                     cudaStream_t stream) {
  check_sizes("bank_ce_forward", "b (queries)", b, n, d, tau);
  MMFL_CHECK(q && bank && target && lse && loss,
             "bank_ce_forward: q, bank, target, lse and loss must not be null");
  detail::with_precision("bank_ce_forward", precision, [&](auto p) {
    rows_forward<decltype(p)::value>(q, b, bank, n, d, tau, TargetArray{target}, lse, loss, stream);
  });
}

void bank_ce_backward(const float* q, const float* bank, const int64_t* target, int64_t b,
                      int64_t n, int64_t d, const float* tau, const float* lse,
                      const float* grad_loss, float* grad_q, float* grad_bank, Precision precision,
                      cudaStream_t stream) {
  check_sizes("bank_ce_backward", "b (queries)", b, n, d, tau);
  MMFL_CHECK(q && bank && target && lse && grad_loss && grad_q,
             "bank_ce_backward: q, bank, target, lse, grad_loss and grad_q must not be null");
  const Access load = detail::choose_access(q, bank, d);
  detail::with_precision("bank_ce_backward", precision, [&](auto p) {
    constexpr Precision P = decltype(p)::value;
    rows_backward<P>(q, b, bank, n, d, tau, QueryGradDs{target, lse, grad_loss}, load, grad_q,
                     stream);
    if (grad_bank != nullptr) {
      rows_backward<P>(bank, n, q, b, d, tau, BankGradDs{target, lse, grad_loss}, load, grad_bank,
                       stream);
    }
  });
}

void creamfl_ensemble(const float* local, const float* bank, int64_t k, int64_t n, int64_t d,
                      const float* tau, EnsembleWeighting weighting, float* weights, float* out,
                      Precision precision, cudaStream_t stream) {
  check_sizes("creamfl_ensemble", "k (clients)", k, n, d, tau);
  MMFL_CHECK(local && bank && weights && out,
             "creamfl_ensemble: local, bank, weights and out must not be null");
  switch (weighting) {
    case EnsembleWeighting::kContrastive:
      // CreamFL's global-local contrast: the k*n local rows against the one bank in one launch;
      // row c*n + j targets bank row j and its cross entropy lands in weights[c, j].
      detail::with_precision("creamfl_ensemble", precision, [&](auto p) {
        rows_forward<decltype(p)::value>(local, k * n, bank, n, d, tau, TargetRowModN{n}, nullptr,
                                         weights, stream);
      });
      break;
    case EnsembleWeighting::kMean:
      break;
    default:
      MMFL_FAIL("creamfl_ensemble: unknown EnsembleWeighting ", static_cast<int>(weighting),
                " (expected kContrastive or kMean)");
  }
  MMFL_LAUNCH(ensemble_combine_kernel, static_cast<unsigned>(ceil_div(n, kCombineWarps)),
              kCombineWarps * 32, 0, stream)
  (local, k, n, d, weighting, weights, out, detail::choose_access(local, out, d));
  MMFL_CHECK_LAUNCH(ensemble_combine_kernel);
}

}  // namespace mmfl::kernels::MMFL_KERNEL_NS
