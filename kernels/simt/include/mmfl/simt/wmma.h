// The SIMT emulator's nvcuda::wmma (tensor cores), included by mmfl/simt/shim.h: fragments, their
// loads and stores, fill and mma_sync for the shapes mmfl's kernels use, so that a tensor-core
// kernel runs on the CPU in CI like any other (DESIGN.md, "Verification").
//
// CUDA leaves the mapping of matrix elements to a fragment's lanes opaque, so the emulator picks
// its own: element e of lane l holds entry i = 32 * e + l of the matrix in row-major order (row
// i / cols, column i % cols). Code that relies only on the documented API behaves as on the GPU.
// load_matrix_sync, store_matrix_sync and mma_sync are warp-collective as on the GPU: all 32 lanes
// of a full warp must call the same one with the same pointer, ldm and layout (a missing or exited
// lane, a partial warp, a differing argument fail the launch naming the thread); mma_sync gathers
// the operand fragments of all lanes through the warp rendezvous. fill_fragment is per lane.
//
// Supported: m16n16k8 with precision::tf32 operands (float storage) and m16n16k16 with
// __nv_bfloat16 or __half operands, row_major or col_major; float accumulators. Numerics: tf32
// operands are read by mma_sync with their low 13 mantissa bits dropped (what the hardware reads
// of an fp32 register; __float_to_tf32 rounds to nearest, ties away from zero, as cvt.rna.tf32
// does). Products are exact in fp32 for these operand types; mma_sync adds them to C in k order
// in fp32. The GPU's internal summation order and width are unspecified, so results agree with it
// exactly when the sums are exactly representable (small integers), within rounding otherwise.
#pragma once

#if !defined(MMFL_SIMT_SHIM_INCLUDED)
#error "mmfl/simt/wmma.h is included by mmfl/simt/shim.h"
#endif

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace nvcuda::wmma {

struct row_major;
struct col_major;
struct matrix_a;
struct matrix_b;
struct accumulator;
namespace precision {
struct tf32;
}
enum layout_t { mem_row_major, mem_col_major };

// Rounds to the nearest tf32 value (10 mantissa bits), ties away from zero; NaN and infinities
// pass through. The result is a float whose low 13 mantissa bits are zero.
inline float __float_to_tf32(float in) {
  std::uint32_t bits;
  std::memcpy(&bits, &in, sizeof bits);
  if ((bits & 0x7f800000u) != 0x7f800000u) {  // finite: add half an ulp of tf32, then truncate
    bits += 0x1000u;
    bits &= 0xffffe000u;
  }
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

namespace detail {

template <typename T>
struct Storage {
  using type = T;
};
template <>
struct Storage<precision::tf32> {
  using type = float;
};

// The matrix a fragment of `Use` holds for an m x n x k operation.
template <typename Use, int M, int N, int K>
struct Extent;
template <int M, int N, int K>
struct Extent<matrix_a, M, N, K> {
  static constexpr int rows = M, cols = K;
};
template <int M, int N, int K>
struct Extent<matrix_b, M, N, K> {
  static constexpr int rows = K, cols = N;
};
template <int M, int N, int K>
struct Extent<accumulator, M, N, K> {
  static constexpr int rows = M, cols = N;
};

template <typename Use, int M, int N, int K, typename T>
constexpr bool supported() {
  if (std::is_same_v<Use, accumulator>) {
    return std::is_same_v<T, float> && M == 16 && N == 16 && (K == 8 || K == 16);
  }
  if (M == 16 && N == 16 && K == 8) return std::is_same_v<T, precision::tf32>;
  if (M == 16 && N == 16 && K == 16) {
    return std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>;
  }
  return false;
}

template <typename T>
float operand_value(T v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __bfloat162float(v);
  } else if constexpr (std::is_same_v<T, __half>) {
    return __half2float(v);
  } else {
    return v;
  }
}

// What a lane contributes to a load or store rendezvous: all lanes must agree on it.
struct alignas(16) MemArgs {
  const void* ptr;
  unsigned ldm;
  int layout;  // 0 row-major, 1 column-major
};
static_assert(sizeof(MemArgs) == 16, "the wmma rendezvous gathers 16 bytes a lane");

inline unsigned lane_id() {
  return ::mmfl::simt::detail::t_thread.linear % 32;
}

[[noreturn]] inline void fail(const char* what) {
  ::mmfl::simt::detail::trap(what);
}

// The rendezvous of a load or store: every lane of the full warp arrives with the same pointer,
// ldm and layout; the pointer is 256-bit aligned and ldm a multiple of 16 bytes, as CUDA requires.
inline void check_mem_args(::mmfl::simt::detail::WarpOp op, const void* ptr, unsigned ldm,
                           int layout, std::size_t element_bytes) {
  const MemArgs mine{ptr, ldm, layout};
  MemArgs all[32];
  ::mmfl::simt::detail::warp_collective(op, 0xffffffffu, &mine, all, sizeof mine, 0, 32);
  for (const MemArgs& other : all) {
    if (other.ptr != ptr || other.ldm != ldm || other.layout != layout) {
      fail(
          "nvcuda::wmma load/store: the lanes of the warp passed different pointers, ldm or "
          "layouts; all 32 lanes must pass the same");
    }
  }
  if (reinterpret_cast<std::uintptr_t>(ptr) % 32 != 0) {
    fail("nvcuda::wmma load/store: the pointer is not 256-bit (32-byte) aligned");
  }
  if ((ldm * element_bytes) % 16 != 0) {
    fail("nvcuda::wmma load/store: ldm is not a multiple of 16 bytes");
  }
}

}  // namespace detail

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
class fragment {
  static_assert(detail::supported<Use, M, N, K, T>(),
                "the SIMT emulator's wmma supports m16n16k8 tf32 and m16n16k16 bf16/half operands "
                "with float accumulators");
  static_assert(std::is_same_v<Use, accumulator>
                    ? std::is_void_v<Layout>
                    : (std::is_same_v<Layout, row_major> || std::is_same_v<Layout, col_major>),
                "matrix_a and matrix_b fragments take row_major or col_major; accumulators none");

 public:
  using element_type = T;
  using storage_element_type = typename detail::Storage<T>::type;
  static constexpr int kRows = detail::Extent<Use, M, N, K>::rows;
  static constexpr int kCols = detail::Extent<Use, M, N, K>::cols;
  enum { num_elements = kRows * kCols / 32, num_storage_elements = kRows * kCols / 32 };
  storage_element_type x[num_elements];
};

template <typename Use, int M, int N, int K, typename T, typename Layout, typename V>
void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, const V& v) {
  using S = typename fragment<Use, M, N, K, T, Layout>::storage_element_type;
  for (int e = 0; e < f.num_elements; ++e)
    f.x[e] = static_cast<S>(v);
}

// Operand fragments: the layout is part of the type.
template <typename Use, int M, int N, int K, typename T, typename Layout>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f,
                      const typename fragment<Use, M, N, K, T, Layout>::storage_element_type* p,
                      unsigned ldm) {
  using F = fragment<Use, M, N, K, T, Layout>;
  constexpr bool kRowMajor = std::is_same_v<Layout, row_major>;
  detail::check_mem_args(::mmfl::simt::detail::WarpOp::kWmmaLoad, p, ldm, kRowMajor ? 0 : 1,
                         sizeof(typename F::storage_element_type));
  const unsigned lane = detail::lane_id();
  for (int e = 0; e < F::num_elements; ++e) {
    const int i = 32 * e + static_cast<int>(lane);
    const int r = i / F::kCols, c = i % F::kCols;
    f.x[e] = kRowMajor ? p[static_cast<std::size_t>(r) * ldm + c]
                       : p[static_cast<std::size_t>(c) * ldm + r];
  }
}

// Accumulators: the layout is an argument.
template <int M, int N, int K>
void load_matrix_sync(fragment<accumulator, M, N, K, float>& f, const float* p, unsigned ldm,
                      layout_t layout) {
  using F = fragment<accumulator, M, N, K, float>;
  detail::check_mem_args(::mmfl::simt::detail::WarpOp::kWmmaLoad, p, ldm,
                         layout == mem_row_major ? 0 : 1, sizeof(float));
  const unsigned lane = detail::lane_id();
  for (int e = 0; e < F::num_elements; ++e) {
    const int i = 32 * e + static_cast<int>(lane);
    const int r = i / F::kCols, c = i % F::kCols;
    f.x[e] = layout == mem_row_major ? p[static_cast<std::size_t>(r) * ldm + c]
                                     : p[static_cast<std::size_t>(c) * ldm + r];
  }
}

template <int M, int N, int K>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ldm,
                       layout_t layout) {
  using F = fragment<accumulator, M, N, K, float>;
  detail::check_mem_args(::mmfl::simt::detail::WarpOp::kWmmaStore, p, ldm,
                         layout == mem_row_major ? 0 : 1, sizeof(float));
  const unsigned lane = detail::lane_id();
  for (int e = 0; e < F::num_elements; ++e) {
    const int i = 32 * e + static_cast<int>(lane);
    const int r = i / F::kCols, c = i % F::kCols;
    (layout == mem_row_major ? p[static_cast<std::size_t>(r) * ldm + c]
                             : p[static_cast<std::size_t>(c) * ldm + r]) = f.x[e];
  }
}

// D = A B + C over the warp. Each lane computes its own elements of D (those it holds of C) from
// the A and B fragments of all 32 lanes, gathered through the rendezvous; d may alias c.
template <int M, int N, int K, typename T, typename LayoutA, typename LayoutB>
void mma_sync(fragment<accumulator, M, N, K, float>& d,
              const fragment<matrix_a, M, N, K, T, LayoutA>& a,
              const fragment<matrix_b, M, N, K, T, LayoutB>& b,
              const fragment<accumulator, M, N, K, float>& c) {
  using FA = fragment<matrix_a, M, N, K, T, LayoutA>;
  using FB = fragment<matrix_b, M, N, K, T, LayoutB>;
  using FC = fragment<accumulator, M, N, K, float>;
  using S = typename FA::storage_element_type;
  static_assert(sizeof(S) * FA::num_elements == 16 && sizeof(S) * FB::num_elements == 16,
                "operand fragments of the supported shapes are 16 bytes a lane");
  S all_a[32][FA::num_elements];
  S all_b[32][FB::num_elements];
  ::mmfl::simt::detail::warp_collective(::mmfl::simt::detail::WarpOp::kWmmaMma, 0xffffffffu, a.x,
                                        all_a, 16, 0, 32);
  ::mmfl::simt::detail::warp_collective(::mmfl::simt::detail::WarpOp::kWmmaMma, 0xffffffffu, b.x,
                                        all_b, 16, 0, 32);
  // Entry i of an operand lives in lane i % 32, element i / 32.
  auto operand = [](const S(*all)[16 / sizeof(S)], int i) {
    float v = detail::operand_value<S>(all[i % 32][i / 32]);
    if constexpr (std::is_same_v<T, precision::tf32>) {
      std::uint32_t bits;
      std::memcpy(&bits, &v, sizeof bits);
      bits &= 0xffffe000u;  // the tensor core reads 10 mantissa bits of a tf32 operand
      std::memcpy(&v, &bits, sizeof v);
    }
    return v;
  };
  const unsigned lane = detail::lane_id();
  float out[FC::num_elements];
  for (int e = 0; e < FC::num_elements; ++e) {
    const int i = 32 * e + static_cast<int>(lane);
    const int r = i / N, col = i % N;
    float acc = c.x[e];
    for (int k = 0; k < K; ++k)
      acc += operand(all_a, r * K + k) * operand(all_b, k * N + col);
    out[e] = acc;
  }
  for (int e = 0; e < FC::num_elements; ++e)
    d.x[e] = out[e];
}

}  // namespace nvcuda::wmma
