// Tests of the SIMT emulator against CUDA's documented semantics. The probe kernels run on the
// emulator and, when a GPU is there, on the GPU with the same expectations (so a wrong belief about
// CUDA shows up as a GPU failure, not as a wrong emulator). SimtEmulator.* covers what only the
// emulator promises: divergent barriers become errors, its runtime checks memory ranges.
#include <gtest/gtest.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "backend.h"
#include "mmfl/error.h"
#include "mmfl/simt/runtime.h"
#include "probe_kernels.h"
#include "test_util.h"

namespace mmfl::test {
namespace {

using probes::AtomicCounters;
using probes::MatrixLayout;
using probes::SharedKind;
using probes::ShuffleMode;
using probes::VoteMode;
using probes::WmmaType;

// The probe functions of one backend.
struct Probes {
  decltype(&probes::simt::block_sums) block_sums;
  decltype(&probes::simt::shuffle) shuffle;
  decltype(&probes::simt::vote) vote;
  decltype(&probes::simt::syncthreads_reductions) syncthreads_reductions;
  decltype(&probes::simt::syncwarp_exchange) syncwarp_exchange;
  decltype(&probes::simt::atomics) atomics;
  decltype(&probes::simt::coordinates) coordinates;
  decltype(&probes::simt::trivial_launch) trivial_launch;
  decltype(&probes::simt::max_dynamic_shared_optin) max_dynamic_shared_optin;
  decltype(&probes::simt::half_math) half_math;
  decltype(&probes::simt::stream_roundtrip) stream_roundtrip;
  decltype(&probes::simt::wmma_gemm) wmma_gemm;
  decltype(&probes::simt::tf32_round) tf32_round;
};

const Probes& probes_for(Backend backend) {
  static const Probes simt{probes::simt::block_sums,
                           probes::simt::shuffle,
                           probes::simt::vote,
                           probes::simt::syncthreads_reductions,
                           probes::simt::syncwarp_exchange,
                           probes::simt::atomics,
                           probes::simt::coordinates,
                           probes::simt::trivial_launch,
                           probes::simt::max_dynamic_shared_optin,
                           probes::simt::half_math,
                           probes::simt::stream_roundtrip,
                           probes::simt::wmma_gemm,
                           probes::simt::tf32_round};
#if defined(MMFL_TEST_HAVE_CUDA)
  static const Probes cuda{probes::cuda::block_sums,
                           probes::cuda::shuffle,
                           probes::cuda::vote,
                           probes::cuda::syncthreads_reductions,
                           probes::cuda::syncwarp_exchange,
                           probes::cuda::atomics,
                           probes::cuda::coordinates,
                           probes::cuda::trivial_launch,
                           probes::cuda::max_dynamic_shared_optin,
                           probes::cuda::half_math,
                           probes::cuda::stream_roundtrip,
                           probes::cuda::wmma_gemm,
                           probes::cuda::tf32_round};
  if (backend == Backend::kCuda) return cuda;
#endif
  if (backend == Backend::kSimt) return simt;
  MMFL_FAIL("no probes for backend ", backend_name(backend));
}

class ProbeTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    MMFL_SKIP_IF_UNAVAILABLE(GetParam());
    probes_ = &probes_for(GetParam());
  }
  const Probes& probes() const { return *probes_; }
  bool emulated() const { return GetParam() == Backend::kSimt; }

 private:
  const Probes* probes_ = nullptr;
};

TEST_P(ProbeTest, BlockReductionThroughSharedMemory) {
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  for (SharedKind kind : {SharedKind::kStatic, SharedKind::kDynamic}) {
    for (int threads : {32, 128, 1024}) {
      for (int64_t n : {int64_t{1}, int64_t{1000}, int64_t{4099}}) {
        SCOPED_TRACE(::testing::Message()
                     << "threads=" << threads << " n=" << n << " kind=" << static_cast<int>(kind));
        std::vector<int> in(n);
        std::uniform_int_distribution<int> dist(-1000, 1000);
        for (int& x : in)
          x = dist(rng);
        const int64_t blocks = (n + threads - 1) / threads;
        std::vector<long long> sums(blocks, LLONG_MIN);
        probes().block_sums(in.data(), n, sums.data(), threads, kind);
        for (int64_t b = 0; b < blocks; ++b) {
          long long expected = 0;
          for (int64_t i = b * threads; i < std::min<int64_t>(n, (b + 1) * threads); ++i) {
            expected += in[i];
          }
          EXPECT_EQ(sums[b], expected) << "block " << b;
        }
      }
    }
  }
}

// The source lane of each shuffle as the CUDA Programming Guide describes it, for a lane in a
// segment of `width` lanes starting at `base`.
int documented_source(ShuffleMode mode, int lane, int arg, int width) {
  const int base = lane / width * width;
  switch (mode) {
    case ShuffleMode::kIdx:  // srcLane taken modulo width, within the lane's segment
      return base + arg % width;
    case ShuffleMode::kUp:  // lane - delta; unchanged when that leaves the segment
      return lane - arg >= base ? lane - arg : lane;
    case ShuffleMode::kDown:  // lane + delta; unchanged when that leaves the segment
      return lane + arg < base + width ? lane + arg : lane;
    case ShuffleMode::kXor: {  // lane ^ laneMask; a later segment gives the caller's own value
      const int source = lane ^ arg;
      return source < base + width ? source : lane;
    }
    default:
      MMFL_FAIL("unknown shuffle mode ", static_cast<int>(mode));
  }
}

TEST_P(ProbeTest, ShufflesFollowDocumentedSemantics) {
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  const int threads = 64;  // two warps
  const unsigned random_mask = static_cast<unsigned>(rng()) | 1u;
  for (ShuffleMode mode :
       {ShuffleMode::kIdx, ShuffleMode::kUp, ShuffleMode::kDown, ShuffleMode::kXor}) {
    for (int width : {32, 16, 8, 4, 2, 1}) {
      for (unsigned mask : {0xffffffffu, 0x0000ffffu, 0xf0f0f0f0u, random_mask}) {
        SCOPED_TRACE(::testing::Message() << "mode=" << static_cast<int>(mode) << " width=" << width
                                          << " mask=0x" << std::hex << mask);
        std::vector<int> in(threads), args(threads), out(threads, -7);
        const int arg_limit =
            mode == ShuffleMode::kIdx ? 40 : (mode == ShuffleMode::kXor ? 32 : 33);
        for (int t = 0; t < threads; ++t) {
          in[t] = 1000 + t;
          args[t] = std::uniform_int_distribution<int>(0, arg_limit - 1)(rng);
        }
        probes().shuffle(mode, in.data(), args.data(), out.data(), mask, width, threads);
        for (int t = 0; t < threads; ++t) {
          const int lane = t % 32;
          if ((mask >> lane & 1u) == 0) {
            EXPECT_EQ(out[t], in[t]) << "thread " << t << " did not call";
            continue;
          }
          const int source = documented_source(mode, lane, args[t], width);
          if ((mask >> source & 1u) != 0) {
            EXPECT_EQ(out[t], in[t - lane + source]) << "thread " << t << " arg " << args[t];
          } else if (emulated()) {
            // CUDA leaves a read from a lane outside the mask undefined; the emulator makes it
            // visible as all-ones bytes.
            EXPECT_EQ(out[t], -1) << "thread " << t << " read lane " << source;
          }
        }
      }
    }
  }
}

TEST_P(ProbeTest, VotesOverMaskedLanes) {
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  const int threads = 64;
  for (VoteMode mode : {VoteMode::kBallot, VoteMode::kAny, VoteMode::kAll}) {
    for (unsigned mask : {0xffffffffu, 0x00ff00ffu, static_cast<unsigned>(rng()) | 2u}) {
      for (int density : {0, 50, 100}) {  // percent of true predicates: none, some, all
        SCOPED_TRACE(::testing::Message()
                     << "mode=" << static_cast<int>(mode) << " mask=0x" << std::hex << mask
                     << std::dec << " density=" << density);
        std::vector<int> pred(threads);
        for (int& p : pred)
          p = std::uniform_int_distribution<int>(0, 99)(rng) < density ? 3 : 0;
        std::vector<unsigned> out(threads, 0);
        probes().vote(mode, pred.data(), out.data(), mask, threads);
        for (int t = 0; t < threads; ++t) {
          const int lane = t % 32;
          if ((mask >> lane & 1u) == 0) {
            EXPECT_EQ(out[t], 0xdeadbeefu);
            continue;
          }
          unsigned ballot = 0;
          for (int l = 0; l < 32; ++l) {
            if ((mask >> l & 1u) != 0 && pred[t - lane + l] != 0) ballot |= 1u << l;
          }
          const unsigned expected = mode == VoteMode::kBallot ? ballot
                                    : mode == VoteMode::kAny  ? (ballot != 0 ? 1u : 0u)
                                                              : (ballot == mask ? 1u : 0u);
          EXPECT_EQ(out[t], expected) << "thread " << t;
        }
      }
    }
  }
}

TEST_P(ProbeTest, SyncthreadsCountOrAnd) {
  const int blocks = 3, threads = 96;
  std::vector<int> pred(blocks * threads, 0);
  for (int t = 0; t < threads; ++t) {
    pred[t] = 1;                         // block 0: all
    pred[2 * threads + t] = t % 7 == 0;  // block 2: some (none in block 1)
  }
  std::vector<int> out(3 * blocks, -1);
  probes().syncthreads_reductions(pred.data(), out.data(), blocks, threads);
  EXPECT_EQ(out, (std::vector<int>{threads, 1, 1, 0, 0, 0, (threads + 6) / 7, 1, 0}));
}

TEST_P(ProbeTest, SyncwarpOrdersSharedMemory) {
  const int threads = 64;
  std::vector<int> in(threads), out(threads, -1);
  for (int t = 0; t < threads; ++t)
    in[t] = 10 * t;
  probes().syncwarp_exchange(in.data(), out.data(), threads);
  for (int t = 0; t < threads; ++t)
    EXPECT_EQ(out[t], in[t ^ 1]);
}

TEST_P(ProbeTest, AtomicsUnderContentionAreExact) {
  const int blocks = 4, threads = 128, iterations = 8;
  const long long total_threads = blocks * threads;
  const long long ops = total_threads * iterations;
  AtomicCounters init{};
  init.add_int = 5;
  init.max_int = INT_MIN;
  init.min_int = INT_MAX;
  init.and_bits = 0xffffffffu;
  const AtomicCounters got = probes().atomics(init, blocks, threads, iterations);
  EXPECT_EQ(got.add_int, 5 + ops);
  EXPECT_EQ(got.add_uint, 2 * ops);
  EXPECT_EQ(got.add_ull, 3ull * ops);
  EXPECT_EQ(got.add_float, static_cast<float>(ops));
  EXPECT_EQ(got.add_double, 0.5 * ops);
  EXPECT_EQ(got.sub_int, -ops);
  EXPECT_EQ(got.max_int, (total_threads - 1) * 7 + iterations - 1);
  EXPECT_EQ(got.min_int, -((total_threads - 1) * 5 + iterations - 1));
  EXPECT_EQ(got.max_ull, static_cast<unsigned long long>(total_threads - 1) << 33);
  EXPECT_EQ(got.cas_count, ops);
  EXPECT_EQ(got.or_bits, 0xffffffffu);
  EXPECT_EQ(got.and_bits, 0x80000000u);  // every bit id % 31 (0..30) was cleared
  EXPECT_EQ(got.xor_bits, 0u);           // each bit it % 32 toggled an even number of times
  EXPECT_EQ(got.inc_wrap, static_cast<unsigned>(ops % 10));
  unsigned long long written = 0;
  for (long long id = 0; id < total_threads; ++id) {
    for (int it = 0; it < iterations; ++it)
      written += id * 16 + it + 1;
  }
  EXPECT_EQ(got.exch_returned_sum + got.exch_slot, written);
}

TEST_P(ProbeTest, BuiltInCoordinates) {
  struct Shape {
    int gx, gy, gz, bx, by, bz;
  };
  for (const Shape& s : {Shape{3, 2, 2, 4, 3, 2}, Shape{5, 1, 1, 33, 1, 1}}) {
    const int per_block = s.bx * s.by * s.bz, blocks = s.gx * s.gy * s.gz;
    std::vector<unsigned> out(4 * per_block * blocks, 0xffffffffu);
    probes().coordinates(out.data(), s.gx, s.gy, s.gz, s.bx, s.by, s.bz);
    for (int g = 0; g < per_block * blocks; ++g) {
      EXPECT_EQ(out[4 * g + 0], static_cast<unsigned>(g / per_block));
      EXPECT_EQ(out[4 * g + 1], static_cast<unsigned>(g % per_block));
      EXPECT_EQ(out[4 * g + 2], static_cast<unsigned>(per_block));
      EXPECT_EQ(out[4 * g + 3], static_cast<unsigned>(blocks));
    }
  }
}

TEST_P(ProbeTest, LaunchLimitsAreErrorsNamingTheKernel) {
  probes().trivial_launch(1024, 1, 1, 1, 1, 0, 0);  // the largest block is fine
  probes().trivial_launch(8, 8, 16, 2, 3, 48 * 1024, 0);
  std::vector<std::string> too_many = {"probe_trivial_kernel"};
  if (emulated()) too_many.push_back("1025 threads");
  expect_error_mentioning([&] { probes().trivial_launch(1025, 1, 1, 1, 1, 0, 0); }, too_many);
  expect_error_mentioning([&] { probes().trivial_launch(1, 1, 65, 1, 1, 0, 0); },
                          {"probe_trivial_kernel"});
  expect_error_mentioning([&] { probes().trivial_launch(32, 1, 1, 1, 65536, 0, 0); },
                          {"probe_trivial_kernel"});
  // More than 48 KiB of dynamic shared memory needs the opt-in, up to the device's ceiling
  // (227 KiB on the H100 the emulator models).
  expect_error_mentioning([&] { probes().trivial_launch(32, 1, 1, 1, 1, 64 * 1024, 0); },
                          {"probe_trivial_kernel"});
  probes().trivial_launch(32, 1, 1, 1, 1, 64 * 1024, 64 * 1024);
  const int64_t ceiling = probes().max_dynamic_shared_optin();
  if (emulated()) {
    EXPECT_EQ(ceiling, 227 * 1024);
  }
  probes().trivial_launch(32, 1, 1, 1, 1, ceiling, ceiling);
  expect_error_mentioning([&] { probes().trivial_launch(32, 1, 1, 1, 1, 0, ceiling + 1024); },
                          {"cudaFuncSetAttribute"});
}

TEST_P(ProbeTest, HalfAndBfloat16) {
  // Values exact in both formats, so out = 2x + (x + 1) exactly.
  const std::vector<float> in = {0.5f, 1.0f, -2.25f, 3.75f, 100.0f, 0.0f};
  std::vector<float> out(in.size(), -1.0f);
  probes().half_math(in.data(), out.data(), static_cast<int>(in.size()));
  for (size_t i = 0; i < in.size(); ++i)
    EXPECT_EQ(out[i], 3.0f * in[i] + 1.0f) << in[i];
}

TEST_P(ProbeTest, StreamsAndEventsRunInOrder) {
  std::vector<float> in(100), out(100, -1.0f);
  for (int i = 0; i < 100; ++i)
    in[i] = static_cast<float>(i) - 50.0f;
  const float ms = probes().stream_roundtrip(in.data(), out.data(), 100);
  EXPECT_GE(ms, 0.0f);
  for (int i = 0; i < 100; ++i)
    EXPECT_EQ(out[i], 2.0f * in[i]);
}

// Tensor cores: d = a b + c through wmma fragments, on small integers (exact in tf32, bf16, half,
// every partial sum exact in fp32), so the result equals the plain product exactly whatever the
// summation order, for every combination of operand and accumulator layouts.
TEST_P(ProbeTest, WmmaMatchesPlainProductOnSmallIntegers) {
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> small(-8, 8);
  const MatrixLayout layouts[] = {MatrixLayout::kRowMajor, MatrixLayout::kColMajor};
  for (WmmaType type : {WmmaType::kTf32, WmmaType::kBf16, WmmaType::kHalf}) {
    const char* type_name = type == WmmaType::kTf32   ? "tf32"
                            : type == WmmaType::kBf16 ? "bf16"
                                                      : "half";
    const int k = type == WmmaType::kTf32 ? 8 : 16;
    for (MatrixLayout la : layouts) {
      for (MatrixLayout lb : layouts) {
        for (MatrixLayout lc : layouts) {
          SCOPED_TRACE(::testing::Message()
                       << type_name << " a " << static_cast<int>(la) << " b "
                       << static_cast<int>(lb) << " c " << static_cast<int>(lc));
          std::vector<float> a(16 * k), b(k * 16), c(256), d(256, -1.0f);
          for (float& v : a)
            v = static_cast<float>(small(rng));
          for (float& v : b)
            v = static_cast<float>(small(rng));
          for (float& v : c)
            v = static_cast<float>(small(rng) * 16);
          probes().wmma_gemm(type, la, lb, lc, a.data(), b.data(), c.data(), d.data());
          for (int r = 0; r < 16; ++r) {
            for (int col = 0; col < 16; ++col) {
              float want = c[r * 16 + col];
              for (int kk = 0; kk < k; ++kk)
                want += a[r * k + kk] * b[kk * 16 + col];
              ASSERT_EQ(d[r * 16 + col], want) << "row " << r << " column " << col;
            }
          }
        }
      }
    }
  }
}

// __float_to_tf32 keeps 10 mantissa bits, rounding to nearest with ties away from zero (PTX
// cvt.rna.tf32.f32); infinities and NaN pass through.
TEST_P(ProbeTest, Tf32RoundsTheMantissaToTenBits) {
  const float ulp = std::ldexp(1.0f, -10);  // one tf32 ulp at 1
  const std::vector<float> in = {1.0f,
                                 1.0f + ulp,
                                 1.0f + ulp / 4,               // below half: down
                                 1.0f + ulp / 2,               // a tie: away from zero
                                 -(1.0f + ulp / 2),            // a tie, negative: away from zero
                                 1.0f + ulp / 2 + ulp / 1024,  // above half: up
                                 1.0f + 3 * ulp / 2,           // a tie from an odd mantissa: up
                                 3.0e-39f,                     // subnormal
                                 INFINITY};
  const std::vector<float> want = {
      1.0f,          1.0f + ulp, 1.0f,           1.0f + ulp,
      -(1.0f + ulp), 1.0f + ulp, 1.0f + 2 * ulp, -1.0f /* checked below */,
      INFINITY};
  std::vector<float> out(in.size(), 0.0f);
  probes().tf32_round(in.data(), out.data(), static_cast<int>(in.size()));
  for (size_t i = 0; i < in.size(); ++i) {
    if (i == 7) continue;
    EXPECT_EQ(out[i], want[i]) << "input " << in[i];
  }
  // A subnormal keeps its top 10 stored mantissa bits after rounding: the low 13 bits are zero.
  uint32_t bits;
  std::memcpy(&bits, &out[7], sizeof bits);
  EXPECT_EQ(bits & 0x1fffu, 0u);
  EXPECT_NEAR(out[7], in[7], std::ldexp(1.0f, -136));
  const float nan_in = NAN;
  float nan_out = 0.0f;
  probes().tf32_round(&nan_in, &nan_out, 1);
  EXPECT_TRUE(std::isnan(nan_out));
}

INSTANTIATE_TEST_SUITE_P(Backends, ProbeTest, ::testing::Values(Backend::kSimt, Backend::kCuda),
                         backend_param_name);

// ---- What only the emulator promises ------------------------------------------------------------

TEST(SimtEmulator, ThreadExitingBeforeSyncthreadsIsAnError) {
  expect_error_mentioning(
      [] { probes::simt::divergent(probes::Divergence::kExitBeforeSyncthreads); },
      {"probe_divergent_kernel", "__syncthreads", "exited"});
}

TEST(SimtEmulator, ShuffleMissingAnExitedLaneIsAnError) {
  expect_error_mentioning([] { probes::simt::divergent(probes::Divergence::kExitBeforeShuffle); },
                          {"probe_divergent_kernel", "__shfl_sync", "exited"});
}

TEST(SimtEmulator, MixedBarriersAreReportedAsDeadlock) {
  expect_error_mentioning([] { probes::simt::divergent(probes::Divergence::kMixedBarriers); },
                          {"probe_divergent_kernel", "deadlock", "__shfl_xor_sync"});
}

TEST(SimtEmulator, MaskWithoutTheCallerIsAnError) {
  expect_error_mentioning([] { probes::simt::divergent(probes::Divergence::kMaskWithoutSelf); },
                          {"probe_divergent_kernel", "does not name the calling lane"});
}

TEST(SimtEmulator, TrapIsAnError) {
  expect_error_mentioning([] { probes::simt::divergent(probes::Divergence::kTrap); },
                          {"probe_divergent_kernel", "__trap"});
}

TEST(SimtEmulator, WmmaMissingAnExitedLaneIsAnError) {
  expect_error_mentioning([] { probes::simt::divergent(probes::Divergence::kWmmaLaneExited); },
                          {"probe_divergent_kernel", "load_matrix_sync", "exited"});
}

TEST(SimtEmulator, WmmaInAPartialWarpIsAnError) {
  expect_error_mentioning([] { probes::simt::divergent(probes::Divergence::kWmmaPartialWarp); },
                          {"probe_divergent_kernel", "load_matrix_sync", "all 32 lanes"});
}

TEST(SimtEmulator, FailedLaunchDoesNotAffectTheNext) {
  EXPECT_THROW(probes::simt::divergent(probes::Divergence::kExitBeforeSyncthreads), mmfl::Error);
  const std::vector<int> in(300, 2);
  std::vector<long long> sums(3);
  probes::simt::block_sums(in.data(), 300, sums.data(), 128, SharedKind::kStatic);
  EXPECT_EQ(sums, (std::vector<long long>{256, 256, 88}));
}

// A partial last warp: lanes that do not exist are left out of the vote (treated as exited).
TEST(SimtEmulator, PartialWarpVotesCountExistingLanes) {
  const int threads = 48;
  std::vector<int> pred(threads, 1);
  std::vector<unsigned> out(threads);
  probes::simt::vote(VoteMode::kBallot, pred.data(), out.data(), 0xffffffffu, threads);
  EXPECT_EQ(out[0], 0xffffffffu);
  EXPECT_EQ(out[40], 0x0000ffffu);
  probes::simt::vote(VoteMode::kAll, pred.data(), out.data(), 0xffffffffu, threads);
  EXPECT_EQ(out[40], 1u);
}

TEST(SimtEmulator, RuntimeChecksDeviceRanges) {
  float* p = static_cast<float*>(simt::device_alloc(8 * sizeof(float)));
  std::vector<float> host(16, 1.0f);
  EXPECT_TRUE(simt::is_device_range(p, 8 * sizeof(float)));
  EXPECT_FALSE(simt::is_device_range(p, 9 * sizeof(float)));
  EXPECT_FALSE(simt::is_device_range(host.data(), sizeof(float)));
  simt::copy_to_device(p, host.data(), 8 * sizeof(float));
  expect_error_mentioning([&] { simt::copy_to_device(p, host.data(), 9 * sizeof(float)); },
                          {"destination"});
  expect_error_mentioning([&] { simt::copy_to_device(host.data(), p, sizeof(float)); },
                          {"destination"});
  expect_error_mentioning([&] { simt::copy_to_host(host.data(), p + 4, 5 * sizeof(float)); },
                          {"source"});
  expect_error_mentioning([&] { simt::device_free(host.data()); }, {"device_free"});
  simt::device_free(p);
  EXPECT_FALSE(simt::is_device_range(p, sizeof(float)));
  // The failures above were reported as exceptions and left no last error behind for the next
  // launch check to misreport.
  const std::vector<int> in(64, 1);
  std::vector<long long> sums(1);
  probes::simt::block_sums(in.data(), 64, sums.data(), 64, SharedKind::kStatic);
  EXPECT_EQ(sums[0], 64);
}

// Host threads may launch concurrently; the emulator runs one launch at a time.
TEST(SimtEmulator, ConcurrentHostThreadsLaunchSafely) {
  std::vector<std::thread> threads;
  std::vector<std::vector<long long>> results(4, std::vector<long long>(4));
  for (int h = 0; h < 4; ++h) {
    threads.emplace_back([h, &results] {
      const std::vector<int> in(256, h + 1);
      probes::simt::block_sums(in.data(), 256, results[h].data(), 64, SharedKind::kDynamic);
    });
  }
  for (std::thread& t : threads)
    t.join();
  for (int h = 0; h < 4; ++h) {
    EXPECT_EQ(results[h], std::vector<long long>(4, 64LL * (h + 1))) << "host thread " << h;
  }
}

}  // namespace
}  // namespace mmfl::test
