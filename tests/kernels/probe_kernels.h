// Small CUDA kernels that probe the SIMT emulator against the CUDA semantics it claims: barriers
// and shared memory, each warp intrinsic, atomics under contention, launch limits, streams. Built
// twice like kernels/cuda (namespace simt: emulated; namespace cuda: nvcc), so the same
// expectations run on the emulator and on a real GPU. Every probe takes host memory, allocates and
// copies itself, and returns after the device has finished.
#pragma once

#include <cstdint>

namespace mmfl::test::probes {

enum class SharedKind : int { kStatic, kDynamic };
enum class ShuffleMode : int { kIdx, kUp, kDown, kXor };
enum class VoteMode : int { kBallot, kAny, kAll };
// Operand types of the wmma probe: tf32 (m16n16k8), bf16 or half (m16n16k16), fp32 accumulators.
enum class WmmaType : int { kTf32, kBf16, kHalf };
enum class MatrixLayout : int { kRowMajor, kColMajor };

// Exact results of the atomics probe; see probe_kernels.cu for what each thread does.
struct AtomicCounters {
  int add_int;
  unsigned add_uint;
  unsigned long long add_ull;
  float add_float;
  double add_double;
  int sub_int;
  int max_int;
  int min_int;
  unsigned long long max_ull;
  unsigned cas_count;
  unsigned or_bits;
  unsigned and_bits;
  unsigned xor_bits;
  unsigned inc_wrap;
  unsigned exch_slot;
  unsigned long long exch_returned_sum;
};

// Failures the emulator must turn into an error naming the kernel instead of a hang.
enum class Divergence : int {
  kExitBeforeSyncthreads,  // warp 1 returns, warp 0 waits at __syncthreads
  kExitBeforeShuffle,      // lane 0 returns, lanes 1..31 shuffle with the full mask
  kMixedBarriers,          // half a warp shuffles with the full mask, the other half syncthreads
  kMaskWithoutSelf,        // a lane passes a mask that does not name it
  kTrap,                   // __trap()
  kWmmaLaneExited,         // lane 0 returns, lanes 1..31 call wmma::load_matrix_sync
  kWmmaPartialWarp,        // a 48-thread block: the 16 lanes of warp 1 call load_matrix_sync
};

#define MMFL_PROBE_DECLARATIONS                                                                    \
  /* sums[b] = sum of in[b*threads, (b+1)*threads) by a shared-memory tree reduction */            \
  void block_sums(const int* in /*[n]*/, int64_t n, long long* sums /*[ceil(n/threads)]*/,         \
                  int threads, SharedKind kind);                                                   \
  /* out[t] = shuffle of in[t] with args[t] over the lanes of `mask` (others keep in[t]) */        \
  void shuffle(ShuffleMode mode, const int* in /*[threads]*/, const int* args /*[threads]*/,       \
               int* out /*[threads]*/, unsigned mask, int width, int threads);                     \
  /* out[t] = the vote of predicates over the lanes of `mask` (others get 0xdeadbeef) */           \
  void vote(VoteMode mode, const int* predicates /*[threads]*/, unsigned* out /*[threads]*/,       \
            unsigned mask, int threads);                                                           \
  /* out[3b..3b+2] = __syncthreads_count / _or / _and of block b's predicates */                   \
  void syncthreads_reductions(const int* predicates /*[blocks*threads]*/, int* out /*[3*blocks]*/, \
                              int blocks, int threads);                                            \
  /* out[t] = in[t ^ 1], exchanged through shared memory and ordered by __syncwarp */              \
  void syncwarp_exchange(const int* in /*[threads]*/, int* out /*[threads]*/, int threads);        \
  AtomicCounters atomics(const AtomicCounters& initial, int blocks, int threads, int iterations);  \
  /* Per thread of the grid, x fastest: {blockIdx linear, threadIdx linear, blockDim.x*y*z,        \
     gridDim.x*y*z}, at the thread's global linear index * 4 */                                    \
  void coordinates(unsigned* out /*[4 * total threads]*/, int gx, int gy, int gz, int bx, int by,  \
                   int bz);                                                                        \
  /* A kernel that does nothing much, launched with the given configuration (after raising its     \
     dynamic shared memory limit to smem_opt_in when > 0); throws mmfl::Error naming               \
     "probe_trivial_kernel" when the launch fails */                                               \
  void trivial_launch(int bx, int by, int bz, int gx, int gy, int64_t dynamic_smem,                \
                      int64_t smem_opt_in);                                                        \
  /* The device's cudaDevAttrMaxSharedMemoryPerBlockOptin (227 KiB on an H100) */                  \
  int64_t max_dynamic_shared_optin();                                                              \
  /* out[i] = float(__half(in[i]) * __half(2)) + float(__nv_bfloat16(in[i]) + 1) */                \
  void half_math(const float* in /*[n]*/, float* out /*[n]*/, int n);                              \
  /* host_out = 2 * host_in through a created stream, async copies and events; returns the         \
     elapsed milliseconds between the events */                                                    \
  float stream_roundtrip(const float* host_in /*[n]*/, float* host_out /*[n]*/, int n);            \
  /* d = a b + c by one warp through nvcuda::wmma fragments; k = 8 (tf32) or 16 (bf16, half).      \
     The kernel lays a, b and c out in shared memory in the given layouts (padded leading          \
     dimensions), converts a and b to the operand type (__float_to_tf32, __float2bfloat16_rn,      \
     __float2half_rn), loads, mma_syncs and stores d through c_layout */                           \
  void wmma_gemm(WmmaType type, MatrixLayout a_layout, MatrixLayout b_layout,                      \
                 MatrixLayout c_layout, const float* a /*[16, k] row-major*/,                      \
                 const float* b /*[k, 16] row-major*/, const float* c /*[16, 16] row-major*/,      \
                 float* d /*[16, 16] row-major*/);                                                 \
  /* out[i] = wmma::__float_to_tf32(in[i]) */                                                      \
  void tf32_round(const float* in /*[n]*/, float* out /*[n]*/, int n);

namespace simt {
MMFL_PROBE_DECLARATIONS
// Runs a kernel with the given defect (emulator only: on a GPU it may hang); throws mmfl::Error.
void divergent(Divergence kind);
}  // namespace simt

namespace cuda {
MMFL_PROBE_DECLARATIONS
}  // namespace cuda

#undef MMFL_PROBE_DECLARATIONS

}  // namespace mmfl::test::probes
