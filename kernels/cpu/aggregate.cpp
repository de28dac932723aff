// Fast CPU weighted aggregation: the n values are cut into chunks of kChunk, one task per chunk,
// clients added in order, so every output is written by one task in a fixed order: the same bits
// for any number of threads, and the same bits as the single-threaded fp32 loop.
#include <algorithm>
#include <vector>

#include "../common/host_checks.h"
#include "mmfl/kernels/aggregate.h"
#include "simd.h"

namespace mmfl::kernels::cpu {
namespace {

// A chunk's running sums stay in L1 / L2 (32 KiB in fp32, 64 KiB in fp64) while four clients'
// slices stream past at a time: four read streams and one pass over the sums per four clients.
constexpr int64_t kChunk = 65536;

// out[j] = scale * sum over clients k not marked in `bad` (nullable) of weights[k] * rows[k][j];
// with out64 set (and acc fp64), the fp64 sums themselves, unscaled and unrounded, go there.
void accumulate(const float* const* rows, const float* weights, const uint8_t* bad,
                int64_t num_clients, int64_t n, double scale, Accumulator acc, float* out,
                double* out64, const Context& ctx) {
  std::vector<int64_t> clients;  // the ones that count, in order
  for (int64_t k = 0; k < num_clients; ++k)
    if (bad == nullptr || bad[k] == 0) clients.push_back(k);
  const int64_t count = static_cast<int64_t>(clients.size());
  detail::run_tasks(ctx, detail::ceil_div(n, kChunk), [&](int64_t chunk) {
    const int64_t j0 = chunk * kChunk, len = std::min(kChunk, n - j0);
    const float* x[4];
    if (acc == Accumulator::kFloat32) {
      thread_local std::vector<float> sum;
      sum.assign(len, 0.0f);
      int64_t c = 0;
      for (; c + 4 <= count; c += 4) {
        float w[4];
        for (int i = 0; i < 4; ++i) {
          x[i] = rows[clients[c + i]] + j0;
          w[i] = weights[clients[c + i]];
        }
        detail::axpy4_f32(sum.data(), x, w, len);
      }
      for (; c < count; ++c)
        detail::axpy_f32(sum.data(), rows[clients[c]] + j0, weights[clients[c]], len);
      const float s = static_cast<float>(scale);
      for (int64_t j = 0; j < len; ++j)
        out[j0 + j] = sum[j] * s;
    } else {
      thread_local std::vector<double> sum;
      sum.assign(len, 0.0);
      int64_t c = 0;
      for (; c + 4 <= count; c += 4) {
        double w[4];
        for (int i = 0; i < 4; ++i) {
          x[i] = rows[clients[c + i]] + j0;
          w[i] = weights[clients[c + i]];
        }
        detail::axpy4_f64(sum.data(), x, w, len);
      }
      for (; c < count; ++c)
        detail::axpy_f64(sum.data(), rows[clients[c]] + j0, weights[clients[c]], len);
      if (out64 != nullptr) {
        std::copy(sum.begin(), sum.end(), out64 + j0);
        return;
      }
      for (int64_t j = 0; j < len; ++j)
        out[j0 + j] = static_cast<float>(sum[j] * scale);
    }
  });
}

std::vector<const float*> row_pointers(const float* updates, int64_t num_clients, int64_t n) {
  std::vector<const float*> rows(static_cast<size_t>(num_clients));
  for (int64_t k = 0; k < num_clients; ++k)
    rows[size_t(k)] = updates + k * n;
  return rows;
}

void check_rows(const char* op, const float* const* rows, const float* weights, int64_t num_clients,
                int64_t n) {
  MMFL_CHECK(rows != nullptr && weights != nullptr, op, ": rows or weights is null");
  MMFL_CHECK(num_clients >= 1 && n >= 0, op, ": need num_clients >= 1 and n >= 0, got ",
             num_clients, " and ", n);
  for (int64_t k = 0; k < num_clients; ++k)
    MMFL_CHECK(n == 0 || rows[k] != nullptr, op, ": row ", k, " is null");
}

}  // namespace

void weighted_sum_rows(const float* const* rows, const float* weights, int64_t num_clients,
                       int64_t n, float* out, Accumulator acc, const Context& ctx) {
  check_rows("cpu::weighted_sum_rows", rows, weights, num_clients, n);
  MMFL_CHECK(out != nullptr || n == 0, "cpu::weighted_sum_rows: out is null");
  if (n == 0) return;
  accumulate(rows, weights, nullptr, num_clients, n, 1.0, acc, out, nullptr, ctx);
}

void weighted_sum_rows_f64(const float* const* rows, const float* weights, int64_t num_clients,
                           int64_t n, double* out, const Context& ctx) {
  check_rows("cpu::weighted_sum_rows_f64", rows, weights, num_clients, n);
  MMFL_CHECK(out != nullptr || n == 0, "cpu::weighted_sum_rows_f64: out is null");
  if (n == 0) return;
  accumulate(rows, weights, nullptr, num_clients, n, 1.0, Accumulator::kFloat64, nullptr, out, ctx);
}

bool all_finite(const float* x, int64_t n) {
  MMFL_CHECK(x != nullptr || n == 0, "cpu::all_finite: x is null");
  return detail::all_finite(x, n);
}

void weighted_sum(const float* updates, const float* weights, int64_t num_clients, int64_t n,
                  float* out, Accumulator acc, const Context& ctx) {
  checks::check_aggregate_args("cpu::weighted_sum", updates, weights, num_clients, n, out, acc);
  if (n == 0) return;
  accumulate(row_pointers(updates, num_clients, n).data(), weights, nullptr, num_clients, n, 1.0,
             acc, out, nullptr, ctx);
}

int64_t weighted_sum_finite(const float* updates, const float* weights, int64_t num_clients,
                            int64_t n, float* out, uint8_t* bad, Accumulator acc,
                            const Context& ctx) {
  checks::check_aggregate_args("cpu::weighted_sum_finite", updates, weights, num_clients, n, out,
                               acc);
  MMFL_CHECK(bad != nullptr, "cpu::weighted_sum_finite: bad is null");
  // Which clients hold a NaN or Inf: per (chunk, client) flags, so chunks check in parallel.
  const int64_t chunks = detail::ceil_div(n, kChunk);
  std::vector<uint8_t> finite(chunks * num_clients);
  detail::run_tasks(ctx, chunks, [&](int64_t chunk) {
    const int64_t j0 = chunk * kChunk, len = std::min(kChunk, n - j0);
    for (int64_t k = 0; k < num_clients; ++k)
      finite[chunk * num_clients + k] = detail::all_finite(updates + k * n + j0, len) ? 1 : 0;
  });
  int64_t skipped = 0;
  double all = 0, good = 0;
  float all_f = 0, good_f = 0;
  for (int64_t k = 0; k < num_clients; ++k) {
    bool ok = true;
    for (int64_t chunk = 0; chunk < chunks; ++chunk)
      ok = ok && finite[chunk * num_clients + k] != 0;
    bad[k] = ok ? 0 : 1;
    skipped += ok ? 0 : 1;
    all += weights[k];
    all_f += weights[k];
    if (ok) good += weights[k], good_f += weights[k];
  }
  // Rescale so the remaining weights sum to the total (nothing to rescale when they sum to 0);
  // computed in the accumulator's width, as the reference does.
  double scale = 1.0;
  if (skipped != 0) {
    if (acc == Accumulator::kFloat32) {
      if (good_f != 0.0f) scale = all_f / good_f;
    } else if (good != 0.0) {
      scale = all / good;
    }
  }
  if (n > 0)
    accumulate(row_pointers(updates, num_clients, n).data(), weights, bad, num_clients, n, scale,
               acc, out, nullptr, ctx);
  return skipped;
}

}  // namespace mmfl::kernels::cpu
