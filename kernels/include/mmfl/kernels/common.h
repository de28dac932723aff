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
