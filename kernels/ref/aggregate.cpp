// CPU reference of the weighted aggregation (FedAvg's reduction): plain loops, accumulators of the
// requested width, clients visited in order. The oracle of every other backend (tests only).
#include "mmfl/kernels/aggregate.h"

#include <cmath>
#include <vector>

#include "../common/host_checks.h"
#include "mmfl/error.h"

namespace mmfl::kernels::ref {
namespace {

// out[j] = scale * sum over clients k not marked in `bad` (nullable) of weights[k] * updates[k][j].
template <typename Acc>
void accumulate(const float* updates,  // [num_clients, n]
                const float* weights,  // [num_clients]
                const uint8_t* bad,    // [num_clients] or null
                int64_t num_clients, int64_t n, Acc scale,
                float* out) {  // [n]
  std::vector<Acc> sum(static_cast<size_t>(n), Acc(0));
  for (int64_t k = 0; k < num_clients; ++k) {
    if (bad != nullptr && bad[k] != 0) continue;
    const Acc w = static_cast<Acc>(weights[k]);
    const float* row = updates + k * n;
    for (int64_t j = 0; j < n; ++j)
      sum[j] += w * static_cast<Acc>(row[j]);
  }
  for (int64_t j = 0; j < n; ++j)
    out[j] = static_cast<float>(sum[j] * scale);
}

template <typename Acc>
int64_t finite_sum(const float* updates, const float* weights, int64_t num_clients, int64_t n,
                   float* out, uint8_t* bad) {
  int64_t skipped = 0;
  Acc all = 0;
  Acc good = 0;
  for (int64_t k = 0; k < num_clients; ++k) {
    const float* row = updates + k * n;
    bool finite = true;
    for (int64_t j = 0; j < n && finite; ++j)
      finite = std::isfinite(row[j]);
    bad[k] = finite ? 0 : 1;
    skipped += finite ? 0 : 1;
    all += static_cast<Acc>(weights[k]);
    if (finite) good += static_cast<Acc>(weights[k]);
  }
  // Rescale so the remaining weights sum to the total (nothing to rescale when they sum to 0).
  const Acc scale = (skipped == 0 || good == Acc(0)) ? Acc(1) : all / good;
  if (n > 0) accumulate<Acc>(updates, weights, bad, num_clients, n, scale, out);
  return skipped;
}

}  // namespace

void weighted_sum(const float* updates, const float* weights, int64_t num_clients, int64_t n,
                  float* out, Accumulator acc) {
  checks::check_aggregate_args("ref::weighted_sum", updates, weights, num_clients, n, out, acc);
  if (n == 0) return;
  switch (acc) {
    case Accumulator::kFloat32:
      accumulate<float>(updates, weights, nullptr, num_clients, n, 1.0f, out);
      break;
    case Accumulator::kFloat64:
      accumulate<double>(updates, weights, nullptr, num_clients, n, 1.0, out);
      break;
    default:
      MMFL_FAIL("ref::weighted_sum: unknown Accumulator ", static_cast<int>(acc));
  }
}

int64_t weighted_sum_finite(const float* updates, const float* weights, int64_t num_clients,
                            int64_t n, float* out, uint8_t* bad, Accumulator acc) {
  checks::check_aggregate_args("ref::weighted_sum_finite", updates, weights, num_clients, n, out,
                               acc);
  MMFL_CHECK(bad != nullptr, "ref::weighted_sum_finite: bad is null");
  switch (acc) {
    case Accumulator::kFloat32:
      return finite_sum<float>(updates, weights, num_clients, n, out, bad);
    case Accumulator::kFloat64:
      return finite_sum<double>(updates, weights, num_clients, n, out, bad);
    default:
      MMFL_FAIL("ref::weighted_sum_finite: unknown Accumulator ", static_cast<int>(acc));
  }
}

}  // namespace mmfl::kernels::ref
