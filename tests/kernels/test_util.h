// Helpers shared by the kernel tests: the per-run random seed (printed with every failure,
// settable through MMFL_TEST_SEED to replay one), random inputs, and element-wise comparison with
// a stated tolerance.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <exception>
#include <random>
#include <string>
#include <vector>

#include "mmfl/error.h"

namespace mmfl::test {

// Fresh each run unless MMFL_TEST_SEED is set; tests put it in a SCOPED_TRACE.
uint64_t test_seed();
std::string seed_trace(uint64_t seed);  // "seed=N (replay with MMFL_TEST_SEED=N)"

// Integers uniform in [lo, hi], as floats: exactly representable, so sums are exact.
std::vector<float> random_small_ints(std::mt19937_64& rng, std::size_t count, int lo, int hi);
// Normal(0, stddev) values.
std::vector<float> random_normal(std::mt19937_64& rng, std::size_t count, float stddev);

// Per element: |actual - expected| <= atol + rtol * |expected|.
struct Tolerance {
  double atol;
  double rtol;
};

// Compares every element; the failure lists the number of mismatches and the first few (index,
// actual, expected, allowed). NaN in `actual` always fails.
::testing::AssertionResult all_close(const std::vector<float>& actual,
                                     const std::vector<double>& expected, Tolerance tol,
                                     const std::string& what);

// Bitwise-exact comparison for tests whose inputs make every sum exact.
::testing::AssertionResult all_equal(const std::vector<float>& actual,
                                     const std::vector<float>& expected, const std::string& what);

// Runs `f`, which must throw mmfl::Error whose message contains every one of `needles`.
template <typename F>
void expect_error_mentioning(F&& f, const std::vector<std::string>& needles) {
  try {
    f();
    ADD_FAILURE() << "expected an mmfl::Error mentioning '" << needles.front() << "'";
  } catch (const mmfl::Error& e) {
    const std::string what = e.what();
    for (const std::string& needle : needles) {
      EXPECT_NE(what.find(needle), std::string::npos) << "'" << needle << "' not in: " << what;
    }
  }
}

}  // namespace mmfl::test
