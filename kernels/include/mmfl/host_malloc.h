// Process-wide glibc malloc settings for programs that train with LibTorch on the CPU.
#pragma once

#if defined(__GLIBC__) || defined(__linux__)
#include <malloc.h>
#endif

namespace mmfl {

// LibTorch allocates every step's activations and gradients afresh. With glibc's defaults the
// large ones (above the mmap threshold, which only adapts up to a point) are mapped and unmapped
// on each use, so every step pays page faults and the kernel's zeroing of each page: measured at
// 10-25% of a small CNN's CPU step. This keeps freed blocks up to 256 MiB in the heap for reuse
// and lets the heap keep up to 1 GiB of free memory before returning it. Call once, first thing
// in main.
inline void keep_freed_host_memory() {
#if defined(M_MMAP_THRESHOLD) && defined(M_TRIM_THRESHOLD)
  mallopt(M_MMAP_THRESHOLD, 256 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
}

}  // namespace mmfl
