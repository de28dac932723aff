// The k largest of a sequence of keys over one block, and their packing in sequence order: what
// sparse.cu's top-k (magnitudes of a row) and moe.cu's expert-choice router (an expert's logits)
// share. A radix select, most significant 8-bit digit first (a shared-memory histogram per digit),
// finds the k-th largest key and how many keys equal to it are taken (the lowest-indexed ones);
// an ordered pass (warp ballots and a block scan per tile of blockDim.x entries) then gives each
// taken entry its position. Both are deterministic: no result depends on timing.
#pragma once

#include <cstdint>

#include "common.cuh"

namespace mmfl::kernels::MMFL_KERNEL_NS::detail {

constexpr int kSelectDigitBits = 8;
constexpr int kSelectBins = 1 << kSelectDigitBits;

// The shared memory of a block select; a kernel declares one `__shared__` and passes it to both
// calls.
struct BlockSelectShared {
  unsigned hist[kSelectBins];
  unsigned warp_eq[32];
  unsigned warp_take[32];
  unsigned bin;
  unsigned long long above;
};

struct Selected {
  uint32_t kth;  // the k-th largest key
  int64_t ties;  // keys equal to it that are taken (the lowest-indexed)
};

// The k-th largest of the keys key_of(i), i in [0, count) (1 <= k <= count). All threads of the
// one-dimensional block (size a multiple of 32) call it and get the same result.
template <typename KeyOf>
__device__ Selected block_select(int64_t count, int64_t k, KeyOf key_of, BlockSelectShared& sh) {
  // `prefix` holds the digits of the k-th largest key found so far, `remaining` how many of the
  // keys sharing them are still to be taken.
  uint32_t prefix = 0, mask = 0;
  int64_t remaining = k;
  const int tid = threadIdx.x;
  for (int shift = 32 - kSelectDigitBits; shift >= 0; shift -= kSelectDigitBits) {
    for (int b = tid; b < kSelectBins; b += blockDim.x)
      sh.hist[b] = 0;
    __syncthreads();
    for (int64_t i = tid; i < count; i += blockDim.x) {
      const uint32_t key = key_of(i);
      if ((key & mask) == prefix) atomicAdd(&sh.hist[(key >> shift) & (kSelectBins - 1)], 1u);
    }
    __syncthreads();
    if (tid == 0) {
      // The digit holding the remaining-th largest key: bins above it hold fewer than needed.
      unsigned long long above = 0;
      int b = kSelectBins - 1;
      for (; b > 0; --b) {
        if (above + sh.hist[b] >= static_cast<unsigned long long>(remaining)) break;
        above += sh.hist[b];
      }
      sh.bin = static_cast<unsigned>(b);
      sh.above = above;
    }
    __syncthreads();
    prefix |= sh.bin << shift;
    mask |= static_cast<uint32_t>(kSelectBins - 1) << shift;
    remaining -= static_cast<int64_t>(sh.above);
    // bin and above are rewritten only after two more barriers, hist zeroed after tid 0 read it:
    // no third barrier needed.
  }
  return {prefix, remaining};
}

// The ordered pass: for every i in [0, count), in tiles of blockDim.x entries, calls
// visit(i, value, taken, position) with value = load(i), taken whether key_of(value) is among
// the selection `s` (above s.kth, or equal to it and among the first s.ties such), and position
// its rank among the taken entries (meaningful when taken). `active` false takes nothing (k = 0).
// All threads of the block call it. warp_eq is read between a tile's first and second barrier
// (inside block_flag_rank) and written before the next tile's first; warp_take is read after the
// second barrier and written after the next tile's first: two barriers per tile suffice.
template <typename Load, typename KeyOf, typename Visit>
__device__ void block_pack(int64_t count, bool active, Selected s, Load load, KeyOf key_of,
                           Visit visit, BlockSelectShared& sh) {
  int64_t eq_before = 0, taken_before = 0;
  for (int64_t base = 0; base < count; base += blockDim.x) {
    const int64_t i = base + threadIdx.x;
    const bool valid = i < count;
    const auto v = valid ? load(i) : decltype(load(i)){};
    const uint32_t key = key_of(v);
    const bool gt = valid && active && key > s.kth;
    const bool eq = valid && active && key == s.kth;
    int64_t tile_eq = 0, tile_take = 0;
    const int64_t eq_rank = eq_before + block_flag_rank(eq, sh.warp_eq, &tile_eq);
    const bool take = gt || (eq && eq_rank < s.ties);
    const int64_t pos = taken_before + block_flag_rank(take, sh.warp_take, &tile_take);
    if (valid) visit(i, v, take, pos);
    eq_before += tile_eq;
    taken_before += tile_take;
  }
}

}  // namespace mmfl::kernels::MMFL_KERNEL_NS::detail
