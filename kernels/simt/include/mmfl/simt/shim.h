// SIMT emulator shim: force-included (`-include`) when the host compiler builds a CUDA source with
// MMFL_SIMT defined. It supplies what the kernels use from CUDA (built-in variables, qualifiers,
// shared memory, barriers, warp intrinsics, atomics, math, runtime calls), backed by
// kernels/simt/runtime.cpp, which runs a launch block by block on a pool of OS threads.
#pragma once

#if !defined(MMFL_SIMT)
#error "mmfl/simt/shim.h is for host builds of CUDA sources with MMFL_SIMT defined"
#endif
#if defined(__CUDACC__)
#error "mmfl/simt/shim.h must not be seen by nvcc"
#endif
#define MMFL_SIMT_SHIM_INCLUDED 1

// CUDA's own host-compilable headers give the exact types of a CUDA build (dim3, float4,
// cudaError_t, __half, __nv_bfloat16), so the emulated and the real backend link into one binary
// without two definitions of one type. The runtime *functions* below are the emulator's own, in a
// namespace: cuda_runtime.h is kept out (its extern "C" declarations would name libcudart's).
// The include guards of cuda_runtime.h / cuda_runtime_api.h are set first, because
// vector_functions.h would otherwise pull the latter in.
#define __CUDA_RUNTIME_H__
#define __CUDA_RUNTIME_API_H__
// clang-format off
#include <driver_types.h>
#include <vector_types.h>
#include <vector_functions.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
// clang-format on

#include <math.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#include "mmfl/simt/runtime.h"

// ---- Qualifiers ---------------------------------------------------------------------------------
// crt/host_defines.h already maps __global__, __device__, __host__ to nothing and __forceinline__
// to always_inline for a host compiler. Static shared memory becomes a static variable: blocks run
// one at a time and the runtime orders one block's threads after the previous block's (a mutex
// hand-over that ThreadSanitizer sees), so a static array is exactly one block's shared memory.
// Ordinary static storage also gets AddressSanitizer's redzones. `extern __shared__` does not
// compile here on purpose: dynamic shared memory goes through MMFL_DYNAMIC_SHARED (launch.h).
#undef __shared__
#define __shared__ static
#undef __launch_bounds__
#define __launch_bounds__(...)
#undef __grid_constant__
#define __grid_constant__

namespace mmfl::simt::detail {

class BlockState;

// Where the calling OS thread is in the emulated grid; set by the runtime before it runs a kernel
// thread. Trivial and constant-initialized, so access needs no TLS wrapper call.
struct ThreadState {
  uint3 thread_idx;
  uint3 block_idx;
  uint3 block_dim;
  uint3 grid_dim;
  unsigned linear;  // x-fastest index of the thread in its block; lane = linear % 32
  BlockState* block;
  unsigned char* dynamic_shared;
};
inline thread_local ThreadState t_thread{};

inline unsigned char* dynamic_shared_memory() {
  return t_thread.dynamic_shared;
}

// __syncthreads and its predicate-reducing variants: returns the count / or / and of `predicate`
// over the block.
enum class BarrierOp : int { kSync, kCount, kOr, kAnd };
int block_barrier(BarrierOp op, int predicate);

// One warp-collective call of the calling lane: the lanes named in `mask` meet in lock step (a
// per-warp rendezvous with exchange slots), each contributes `size` bytes at `value`, and
// `result` receives this lane's answer. `arg` is srcLane / delta / laneMask, `width` the segment
// width of the shuffles. The kWmma* ops (nvcuda::wmma, mmfl/simt/wmma.h) are gathers of exactly
// 16 bytes a lane: `result` receives all 32 lanes' values (512 bytes, lane order), and they need
// the full mask and a warp whose 32 lanes all exist.
enum class WarpOp : int {
  kSyncWarp,
  kShflIdx,
  kShflUp,
  kShflDown,
  kShflXor,
  kBallot,
  kAny,
  kAll,
  kWmmaLoad,
  kWmmaStore,
  kWmmaMma
};
void warp_collective(WarpOp op, unsigned mask, const void* value, void* result, std::size_t size,
                     int arg, int width);

// Aborts the calling kernel thread's block with `what` (used by __trap).
[[noreturn]] void trap(const char* what);

// Launch machinery behind MMFL_LAUNCH.
using ThreadBody = void (*)(const void* closure);
struct LaunchConfig {
  const char* name;  // the kernel expression as written, for messages
  const void* func;  // identifies the kernel for cudaFuncSetAttribute
  dim3 grid;
  dim3 block;
  std::size_t dynamic_shared_bytes;
  cudaStream_t stream;
};
// Validates the configuration (a failure becomes the calling thread's last error, as in CUDA) and
// runs every block to completion before returning; a kernel failure (divergent barrier, exception,
// __trap) becomes cudaErrorLaunchFailure with an explanation in last_error_detail().
void launch(const LaunchConfig& config, ThreadBody body, const void* closure);

template <typename... Params>
class Launcher {
 public:
  using Kernel = void (*)(Params...);
  Launcher(const char* name, Kernel kernel, dim3 grid, dim3 block, std::size_t smem,
           cudaStream_t stream)
      : kernel_(kernel), config_{name,  reinterpret_cast<const void*>(kernel), grid, block, smem,
                                 stream} {}

  // Like <<<>>>, the arguments are converted to the parameter types once, at launch; each thread
  // then receives its own by-value copies.
  template <typename... Args>
  void operator()(Args&&... args) const {
    static_assert(sizeof...(Args) == sizeof...(Params),
                  "MMFL_LAUNCH: argument count differs from the kernel's parameter count");
    struct Closure {
      Kernel kernel;
      std::tuple<std::decay_t<Params>...> params;
    };
    const Closure closure{kernel_,
                          std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...)};
    launch(
        config_,
        [](const void* p) {
          const auto* c = static_cast<const Closure*>(p);
          std::apply(c->kernel, c->params);
        },
        &closure);
  }

 private:
  Kernel kernel_;
  LaunchConfig config_;
};

template <typename... Params>
Launcher<Params...> make_launcher(const char* name, void (*kernel)(Params...), dim3 grid,
                                  dim3 block, std::size_t smem, cudaStream_t stream) {
  return Launcher<Params...>(name, kernel, grid, block, smem, stream);
}

template <typename T>
T warp_exchange(WarpOp op, unsigned mask, T value, int arg, int width) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 16,
                "warp shuffles take trivially copyable values of at most 16 bytes");
  T result;
  warp_collective(op, mask, &value, &result, sizeof(T), arg, width);
  return result;
}

}  // namespace mmfl::simt::detail

// ---- Built-in variables -------------------------------------------------------------------------
// Read-only, as in CUDA.
#define threadIdx (static_cast<const ::uint3&>(::mmfl::simt::detail::t_thread.thread_idx))
#define blockIdx (static_cast<const ::uint3&>(::mmfl::simt::detail::t_thread.block_idx))
#define blockDim (static_cast<const ::uint3&>(::mmfl::simt::detail::t_thread.block_dim))
#define gridDim (static_cast<const ::uint3&>(::mmfl::simt::detail::t_thread.grid_dim))
inline constexpr int warpSize = 32;

// ---- Barriers and warp intrinsics ---------------------------------------------------------------
// Every thread of the block must reach each __syncthreads: a thread that exits while others wait
// (or reaches it after others exited) fails the launch instead of hanging.
inline void __syncthreads() {
  mmfl::simt::detail::block_barrier(mmfl::simt::detail::BarrierOp::kSync, 0);
}
inline int __syncthreads_count(int predicate) {
  return mmfl::simt::detail::block_barrier(mmfl::simt::detail::BarrierOp::kCount, predicate);
}
inline int __syncthreads_or(int predicate) {
  return mmfl::simt::detail::block_barrier(mmfl::simt::detail::BarrierOp::kOr, predicate);
}
inline int __syncthreads_and(int predicate) {
  return mmfl::simt::detail::block_barrier(mmfl::simt::detail::BarrierOp::kAnd, predicate);
}

inline void __syncwarp(unsigned mask = 0xffffffffu) {
  mmfl::simt::detail::warp_collective(mmfl::simt::detail::WarpOp::kSyncWarp, mask, nullptr, nullptr,
                                      0, 0, warpSize);
}

// Shuffles follow the PTX definition of shfl.sync (source lane from the mode, the segment of
// `width` lanes, and a fall-back to the caller's own value). Reading a lane that is not in `mask`
// is undefined in CUDA; the emulator returns all-ones bytes (NaN for floats) so it shows.
template <typename T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
  return mmfl::simt::detail::warp_exchange(mmfl::simt::detail::WarpOp::kShflIdx, mask, var,
                                           src_lane, width);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  return mmfl::simt::detail::warp_exchange(mmfl::simt::detail::WarpOp::kShflUp, mask, var,
                                           static_cast<int>(delta), width);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  return mmfl::simt::detail::warp_exchange(mmfl::simt::detail::WarpOp::kShflDown, mask, var,
                                           static_cast<int>(delta), width);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
  return mmfl::simt::detail::warp_exchange(mmfl::simt::detail::WarpOp::kShflXor, mask, var,
                                           lane_mask, width);
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  return static_cast<unsigned>(mmfl::simt::detail::warp_exchange(
      mmfl::simt::detail::WarpOp::kBallot, mask, predicate != 0 ? 1 : 0, 0, warpSize));
}
// "Non-exited threads in mask": the emulator counts the lanes that exist (a partial last warp).
inline int __any_sync(unsigned mask, int predicate) {
  return mmfl::simt::detail::warp_exchange(mmfl::simt::detail::WarpOp::kAny, mask,
                                           predicate != 0 ? 1 : 0, 0, warpSize);
}
inline int __all_sync(unsigned mask, int predicate) {
  return mmfl::simt::detail::warp_exchange(mmfl::simt::detail::WarpOp::kAll, mask,
                                           predicate != 0 ? 1 : 0, 0, warpSize);
}

[[noreturn]] inline void __trap() {
  mmfl::simt::detail::trap("__trap() called");
}

// ---- Memory fences and loads --------------------------------------------------------------------
// Fences are sequentially consistent host fences. ThreadSanitizer does not model fences, so it
// reports fence-ordered publication through plain stores as a race.
inline void __threadfence() {
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
}
inline void __threadfence_block() {
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
}
template <typename T>
T __ldg(const T* p) {
  return *p;
}

// ---- Atomics ------------------------------------------------------------------------------------
// Real read-modify-write operations on the address (GCC __atomic builtins, relaxed like CUDA's
// device-scope atomics), so contended integer sums are exact and ThreadSanitizer sees atomics.
namespace mmfl::simt::detail {
template <typename T, typename F>
T atomic_update(T* address, F f) {
  T old;
  __atomic_load(address, &old, __ATOMIC_RELAXED);
  T desired = f(old);
  while (!__atomic_compare_exchange(address, &old, &desired, true, __ATOMIC_RELAXED,
                                    __ATOMIC_RELAXED)) {
    desired = f(old);
  }
  return old;
}
}  // namespace mmfl::simt::detail

inline int atomicAdd(int* a, int v) {
  return __atomic_fetch_add(a, v, __ATOMIC_RELAXED);
}
inline unsigned atomicAdd(unsigned* a, unsigned v) {
  return __atomic_fetch_add(a, v, __ATOMIC_RELAXED);
}
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) {
  return __atomic_fetch_add(a, v, __ATOMIC_RELAXED);
}
inline float atomicAdd(float* a, float v) {
  return mmfl::simt::detail::atomic_update(a, [v](float old) { return old + v; });
}
inline double atomicAdd(double* a, double v) {
  return mmfl::simt::detail::atomic_update(a, [v](double old) { return old + v; });
}
inline int atomicSub(int* a, int v) {
  return __atomic_fetch_sub(a, v, __ATOMIC_RELAXED);
}
inline unsigned atomicSub(unsigned* a, unsigned v) {
  return __atomic_fetch_sub(a, v, __ATOMIC_RELAXED);
}
inline int atomicExch(int* a, int v) {
  return __atomic_exchange_n(a, v, __ATOMIC_RELAXED);
}
inline unsigned atomicExch(unsigned* a, unsigned v) {
  return __atomic_exchange_n(a, v, __ATOMIC_RELAXED);
}
inline unsigned long long atomicExch(unsigned long long* a, unsigned long long v) {
  return __atomic_exchange_n(a, v, __ATOMIC_RELAXED);
}
inline float atomicExch(float* a, float v) {
  float old;
  __atomic_exchange(a, &v, &old, __ATOMIC_RELAXED);
  return old;
}
inline int atomicMax(int* a, int v) {
  return mmfl::simt::detail::atomic_update(a, [v](int old) { return old > v ? old : v; });
}
inline unsigned atomicMax(unsigned* a, unsigned v) {
  return mmfl::simt::detail::atomic_update(a, [v](unsigned old) { return old > v ? old : v; });
}
inline long long atomicMax(long long* a, long long v) {
  return mmfl::simt::detail::atomic_update(a, [v](long long old) { return old > v ? old : v; });
}
inline unsigned long long atomicMax(unsigned long long* a, unsigned long long v) {
  return mmfl::simt::detail::atomic_update(
      a, [v](unsigned long long old) { return old > v ? old : v; });
}
inline int atomicMin(int* a, int v) {
  return mmfl::simt::detail::atomic_update(a, [v](int old) { return old < v ? old : v; });
}
inline unsigned atomicMin(unsigned* a, unsigned v) {
  return mmfl::simt::detail::atomic_update(a, [v](unsigned old) { return old < v ? old : v; });
}
inline long long atomicMin(long long* a, long long v) {
  return mmfl::simt::detail::atomic_update(a, [v](long long old) { return old < v ? old : v; });
}
inline unsigned long long atomicMin(unsigned long long* a, unsigned long long v) {
  return mmfl::simt::detail::atomic_update(
      a, [v](unsigned long long old) { return old < v ? old : v; });
}
inline int atomicAnd(int* a, int v) {
  return __atomic_fetch_and(a, v, __ATOMIC_RELAXED);
}
inline unsigned atomicAnd(unsigned* a, unsigned v) {
  return __atomic_fetch_and(a, v, __ATOMIC_RELAXED);
}
inline unsigned long long atomicAnd(unsigned long long* a, unsigned long long v) {
  return __atomic_fetch_and(a, v, __ATOMIC_RELAXED);
}
inline int atomicOr(int* a, int v) {
  return __atomic_fetch_or(a, v, __ATOMIC_RELAXED);
}
inline unsigned atomicOr(unsigned* a, unsigned v) {
  return __atomic_fetch_or(a, v, __ATOMIC_RELAXED);
}
inline unsigned long long atomicOr(unsigned long long* a, unsigned long long v) {
  return __atomic_fetch_or(a, v, __ATOMIC_RELAXED);
}
inline int atomicXor(int* a, int v) {
  return __atomic_fetch_xor(a, v, __ATOMIC_RELAXED);
}
inline unsigned atomicXor(unsigned* a, unsigned v) {
  return __atomic_fetch_xor(a, v, __ATOMIC_RELAXED);
}
inline unsigned long long atomicXor(unsigned long long* a, unsigned long long v) {
  return __atomic_fetch_xor(a, v, __ATOMIC_RELAXED);
}
// CUDA's wrap-around counters: ((old >= limit) ? 0 : old + 1) and the mirror for decrement.
inline unsigned atomicInc(unsigned* a, unsigned limit) {
  return mmfl::simt::detail::atomic_update(
      a, [limit](unsigned old) { return old >= limit ? 0u : old + 1; });
}
inline unsigned atomicDec(unsigned* a, unsigned limit) {
  return mmfl::simt::detail::atomic_update(
      a, [limit](unsigned old) { return (old == 0 || old > limit) ? limit : old - 1; });
}
namespace mmfl::simt::detail {
template <typename T>
T atomic_cas(T* a, T compare, T value) {
  __atomic_compare_exchange_n(a, &compare, value, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return compare;  // holds the old value whether or not the exchange happened
}
}  // namespace mmfl::simt::detail
inline int atomicCAS(int* a, int compare, int value) {
  return mmfl::simt::detail::atomic_cas(a, compare, value);
}
inline unsigned atomicCAS(unsigned* a, unsigned compare, unsigned value) {
  return mmfl::simt::detail::atomic_cas(a, compare, value);
}
inline unsigned long long atomicCAS(unsigned long long* a, unsigned long long compare,
                                    unsigned long long value) {
  return mmfl::simt::detail::atomic_cas(a, compare, value);
}
inline unsigned short atomicCAS(unsigned short* a, unsigned short compare, unsigned short value) {
  return mmfl::simt::detail::atomic_cas(a, compare, value);
}

// ---- Math and bit intrinsics --------------------------------------------------------------------
// <math.h> provides expf, logf, fmaxf, sqrtf, isfinite, ... in the global namespace. The fast
// intrinsics map to the accurate functions: results are at least as accurate as on the GPU, so a
// tolerance that passes here may still need to be widened for __expf & co. on a GPU.
inline float rsqrtf(float x) {
  return 1.0f / sqrtf(x);
}
inline double rsqrt(double x) {
  return 1.0 / sqrt(x);
}
inline float __expf(float x) {
  return expf(x);
}
inline float __exp10f(float x) {
  return powf(10.0f, x);
}
inline float __logf(float x) {
  return logf(x);
}
inline float __log2f(float x) {
  return log2f(x);
}
inline float __log10f(float x) {
  return log10f(x);
}
inline float __powf(float x, float y) {
  return powf(x, y);
}
inline float __sinf(float x) {
  return sinf(x);
}
inline float __cosf(float x) {
  return cosf(x);
}
inline float __tanf(float x) {
  return tanf(x);
}
inline float __fdividef(float a, float b) {
  return a / b;
}
inline float __frcp_rn(float x) {
  return 1.0f / x;
}
inline float __fsqrt_rn(float x) {
  return sqrtf(x);
}
inline float __fadd_rn(float a, float b) {
  return a + b;
}
inline float __fmul_rn(float a, float b) {
  return a * b;
}
inline float __fmaf_rn(float a, float b, float c) {
  return fmaf(a, b, c);
}
inline float __saturatef(float x) {
  return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x);
}

namespace mmfl::simt::detail {
template <typename To, typename From>
To bit_cast(From from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast needs equal sizes");
  To to;
  std::memcpy(&to, &from, sizeof(To));
  return to;
}
}  // namespace mmfl::simt::detail
inline int __float_as_int(float x) {
  return mmfl::simt::detail::bit_cast<int>(x);
}
inline unsigned __float_as_uint(float x) {
  return mmfl::simt::detail::bit_cast<unsigned>(x);
}
inline float __int_as_float(int x) {
  return mmfl::simt::detail::bit_cast<float>(x);
}
inline float __uint_as_float(unsigned x) {
  return mmfl::simt::detail::bit_cast<float>(x);
}
inline long long __double_as_longlong(double x) {
  return mmfl::simt::detail::bit_cast<long long>(x);
}
inline double __longlong_as_double(long long x) {
  return mmfl::simt::detail::bit_cast<double>(x);
}
inline int __popc(unsigned x) {
  return __builtin_popcount(x);
}
inline int __popcll(unsigned long long x) {
  return __builtin_popcountll(x);
}
inline int __clz(int x) {
  return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x));
}
inline int __clzll(long long x) {
  return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x));
}
inline int __ffs(int x) {
  return __builtin_ffs(x);
}
inline int __ffsll(long long x) {
  return __builtin_ffsll(x);
}
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i)
    r |= ((x >> i) & 1u) << (31 - i);
  return r;
}

// CUDA's device-side min/max overloads for same-typed arguments.
inline int min(int a, int b) {
  return a < b ? a : b;
}
inline int max(int a, int b) {
  return a > b ? a : b;
}
inline unsigned min(unsigned a, unsigned b) {
  return a < b ? a : b;
}
inline unsigned max(unsigned a, unsigned b) {
  return a > b ? a : b;
}
inline long long min(long long a, long long b) {
  return a < b ? a : b;
}
inline long long max(long long a, long long b) {
  return a > b ? a : b;
}
inline long min(long a, long b) {
  return a < b ? a : b;
}
inline long max(long a, long b) {
  return a > b ? a : b;
}
inline unsigned long long min(unsigned long long a, unsigned long long b) {
  return a < b ? a : b;
}
inline unsigned long long max(unsigned long long a, unsigned long long b) {
  return a > b ? a : b;
}
inline float min(float a, float b) {
  return fminf(a, b);
}
inline float max(float a, float b) {
  return fmaxf(a, b);
}
inline double min(double a, double b) {
  return fmin(a, b);
}
inline double max(double a, double b) {
  return fmax(a, b);
}

// ---- Tensor cores -------------------------------------------------------------------------------
#include "mmfl/simt/wmma.h"

// ---- Runtime API --------------------------------------------------------------------------------
// The emulated runtime calls, under C++ names of their own (no clash with libcudart's extern "C"
// symbols when both backends link into one binary). Streams execute in order and every call
// completes before it returns.
struct CUstream_st;
struct CUevent_st;

namespace mmfl::simt::api {
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t error);
const char* cudaGetErrorName(cudaError_t error);

cudaError_t cudaMalloc(void** ptr, std::size_t bytes);
template <typename T>
cudaError_t cudaMalloc(T** ptr, std::size_t bytes) {
  return cudaMalloc(reinterpret_cast<void**>(ptr), bytes);
}
cudaError_t cudaMallocAsync(void** ptr, std::size_t bytes, cudaStream_t stream);
template <typename T>
cudaError_t cudaMallocAsync(T** ptr, std::size_t bytes, cudaStream_t stream) {
  return cudaMallocAsync(reinterpret_cast<void**>(ptr), bytes, stream);
}
cudaError_t cudaFree(void* ptr);
cudaError_t cudaFreeAsync(void* ptr, cudaStream_t stream);
cudaError_t cudaMallocHost(void** ptr, std::size_t bytes);
cudaError_t cudaFreeHost(void* ptr);
cudaError_t cudaMemcpy(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream = nullptr);
cudaError_t cudaMemset(void* dst, int value, std::size_t bytes);
cudaError_t cudaMemsetAsync(void* dst, int value, std::size_t bytes, cudaStream_t stream = nullptr);

cudaError_t cudaStreamCreate(cudaStream_t* stream);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaStreamQuery(cudaStream_t stream);
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags = 0);
cudaError_t cudaEventCreate(cudaEvent_t* event);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = nullptr);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventQuery(cudaEvent_t event);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end);
cudaError_t cudaDeviceSynchronize();

cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
// Only cudaFuncAttributeMaxDynamicSharedMemorySize is emulated: as on the GPU, a launch may use
// more than 48 KiB of dynamic shared memory only after raising it (at most 227 KiB).
cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value);
template <typename T>
cudaError_t cudaFuncSetAttribute(T* func, cudaFuncAttribute attr, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(func), attr, value);
}
}  // namespace mmfl::simt::api

using namespace mmfl::simt::api;  // NOLINT: the kernels call these unqualified, as in CUDA
