// Definitions every kernels/ header shares, written so that the public headers compile without
// CUDA: the stream type is forward-declared exactly as CUDA declares it, and helpers that run on
// both sides are marked MMFL_HOST_DEVICE.
#pragma once

// Identical to CUDA's own `typedef struct CUstream_st* cudaStream_t;` (a legal redeclaration), so
// these headers can be included with or without the CUDA runtime headers, in either order.
struct CUstream_st;
typedef CUstream_st* cudaStream_t;

// Helpers used by host code and by kernels alike.
#if defined(__CUDACC__)
#define MMFL_HOST_DEVICE __host__ __device__ inline
#else
#define MMFL_HOST_DEVICE inline
#endif

namespace mmfl::kernels {

// Arithmetic of the GEMM-shaped device passes (InfoNCE, bank cross entropy, the CreamFL
// ensemble): the products <q_i, g_j> and dL/dlogits x bank. Accumulation, exponentials and
// log-sum-exps are fp32 in every mode; the host paths (ref, cpu) always compute in fp32 or wider.
//   kFp32  SIMT fp32 FMAs: the exact path (errors of fp32 summation only)
//   kTf32  tensor cores on fp32 data rounded to tf32 (10-bit mantissa): ~1e-3 relative
//   kBf16  tensor cores on data rounded to bf16 (7-bit mantissa): ~1e-2 relative
enum class Precision : int { kFp32, kTf32, kBf16 };

inline const char* precision_name(Precision p) {
  switch (p) {
    case Precision::kFp32:
      return "fp32";
    case Precision::kTf32:
      return "tf32";
    case Precision::kBf16:
      return "bf16";
    default:
      return "unknown";
  }
}

}  // namespace mmfl::kernels
