// Seeds, random inputs and tolerance checks for the kernel tests (see test_util.h).
#include "test_util.h"

#include <cmath>
#include <cstdlib>
#include <sstream>

namespace mmfl::test {

uint64_t test_seed() {
  if (const char* env = std::getenv("MMFL_TEST_SEED")) return std::strtoull(env, nullptr, 10);
  std::random_device device;
  return (static_cast<uint64_t>(device()) << 32) ^ device();
}

std::string seed_trace(uint64_t seed) {
  std::ostringstream os;
  os << "seed=" << seed << " (replay with MMFL_TEST_SEED=" << seed << ")";
  return os.str();
}

std::vector<float> random_small_ints(std::mt19937_64& rng, std::size_t count, int lo, int hi) {
  std::uniform_int_distribution<int> dist(lo, hi);
  std::vector<float> v(count);
  for (float& x : v)
    x = static_cast<float>(dist(rng));
  return v;
}

std::vector<float> random_normal(std::mt19937_64& rng, std::size_t count, float stddev) {
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(count);
  for (float& x : v)
    x = dist(rng);
  return v;
}

::testing::AssertionResult all_close(const std::vector<float>& actual,
                                     const std::vector<double>& expected, Tolerance tol,
                                     const std::string& what) {
  if (actual.size() != expected.size()) {
    return ::testing::AssertionFailure()
           << what << ": size " << actual.size() << ", expected " << expected.size();
  }
  std::ostringstream details;
  std::size_t bad = 0;
  double worst = 0;
  for (std::size_t i = 0; i < actual.size(); ++i) {
    const double allowed = tol.atol + tol.rtol * std::fabs(expected[i]);
    const double err = std::fabs(static_cast<double>(actual[i]) - expected[i]);
    if (!(err <= allowed)) {  // also catches NaN
      if (bad < 5) {
        details << "\n  [" << i << "] actual " << actual[i] << ", expected " << expected[i]
                << ", |error| " << err << " > " << allowed;
      }
      ++bad;
    }
    if (err > worst || std::isnan(err)) worst = err;
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << what << ": " << bad << " of " << actual.size() << " elements outside atol " << tol.atol
         << " + rtol " << tol.rtol << " * |expected| (worst |error| " << worst << ")"
         << details.str();
}

::testing::AssertionResult all_equal(const std::vector<float>& actual,
                                     const std::vector<float>& expected, const std::string& what) {
  if (actual.size() != expected.size()) {
    return ::testing::AssertionFailure()
           << what << ": size " << actual.size() << ", expected " << expected.size();
  }
  std::ostringstream details;
  std::size_t bad = 0;
  for (std::size_t i = 0; i < actual.size(); ++i) {
    if (!(actual[i] == expected[i])) {
      if (bad < 5) {
        details << "\n  [" << i << "] actual " << actual[i] << ", expected " << expected[i];
      }
      ++bad;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << what << ": " << bad << " of " << actual.size() << " elements differ" << details.str();
}

}  // namespace mmfl::test
