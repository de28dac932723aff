// Internal to kernels/: the argument checks the host-side implementations (ref and cpu) share, so
// both reject the same inputs with the same messages. `fn` names the caller
// ("cpu::infonce_forward").
#pragma once

#include <cmath>
#include <cstdint>

#include "mmfl/error.h"
#include "mmfl/kernels/aggregate.h"
#include "mmfl/kernels/multi_lora.h"

namespace mmfl::kernels::checks {

inline void check_tau(const char* fn, const float* tau) {
  MMFL_CHECK(tau != nullptr, fn, ": tau is null");
  MMFL_CHECK(std::isfinite(*tau) && *tau > 0.0f, fn, ": tau must be finite and > 0, got ", *tau);
}

inline void check_infonce_args(const char* fn, const float* img, const float* txt, int64_t n,
                               int64_t d, const float* tau) {
  MMFL_CHECK(n >= 1, fn, ": n (number of pairs) must be >= 1, got ", n);
  MMFL_CHECK(d >= 1, fn, ": d (feature size) must be >= 1, got ", d);
  MMFL_CHECK(img != nullptr, fn, ": img is null");
  MMFL_CHECK(txt != nullptr, fn, ": txt is null");
  check_tau(fn, tau);
}

inline void check_bank_sizes(const char* fn, int64_t b, int64_t n, int64_t d, const float* tau) {
  MMFL_CHECK(b >= 1, fn, ": b (queries) must be >= 1, got ", b);
  MMFL_CHECK(n >= 1, fn, ": n (bank rows) must be >= 1, got ", n);
  MMFL_CHECK(d >= 1, fn, ": d (feature size) must be >= 1, got ", d);
  check_tau(fn, tau);
}

inline void check_targets(const char* fn, const int64_t* target, int64_t b, int64_t n) {
  MMFL_CHECK(target != nullptr, fn, ": target is null");
  for (int64_t i = 0; i < b; ++i)
    MMFL_CHECK(target[i] >= 0 && target[i] < n, fn, ": target[", i, "] = ", target[i],
               " is outside [0, ", n, ")");
}

inline void check_aggregate_args(const char* fn, const float* updates, const float* weights,
                                 int64_t num_clients, int64_t n, const float* out,
                                 Accumulator acc) {
  MMFL_CHECK(num_clients >= 1, fn, ": num_clients must be >= 1, got ", num_clients);
  MMFL_CHECK(n >= 0, fn, ": n (values per client) must be >= 0, got ", n);
  MMFL_CHECK(weights != nullptr, fn, ": weights is null");
  MMFL_CHECK(n == 0 || updates != nullptr, fn, ": updates is null");
  MMFL_CHECK(n == 0 || out != nullptr, fn, ": out is null");
  MMFL_CHECK(acc == Accumulator::kFloat32 || acc == Accumulator::kFloat64, fn,
             ": acc must be Accumulator::kFloat32 or kFloat64, got ", static_cast<int>(acc));
}

// The sizes of a multi-adapter call (every backend, the device ones included).
inline void check_multi_lora_shape(const char* fn, const MultiLoraShape& s) {
  MMFL_CHECK(s.clients >= 1, fn, ": clients must be >= 1, got ", s.clients);
  MMFL_CHECK(s.rows >= 0, fn, ": rows must be >= 0, got ", s.rows);
  MMFL_CHECK(s.in >= 1 && s.out >= 1, fn, ": in and out features must be >= 1, got in ", s.in,
             ", out ", s.out);
  MMFL_CHECK(s.rank >= 1, fn, ": rank must be >= 1, got ", s.rank);
}

// The row offsets of a multi-adapter call, in host memory: offsets[c] .. offsets[c+1]-1 are client
// c's rows.
inline void check_multi_lora_offsets(const char* fn, const int64_t* offsets,
                                     const MultiLoraShape& s) {
  MMFL_CHECK(offsets != nullptr, fn, ": offsets is null");
  MMFL_CHECK(offsets[0] == 0, fn, ": offsets[0] must be 0, got ", offsets[0]);
  for (int64_t c = 0; c < s.clients; ++c)
    MMFL_CHECK(offsets[c + 1] >= offsets[c], fn, ": offsets must not decrease, but offsets[", c + 1,
               "] = ", offsets[c + 1], " < offsets[", c, "] = ", offsets[c], " (client ", c, ")");
  MMFL_CHECK(offsets[s.clients] == s.rows, fn, ": offsets[clients] = offsets[", s.clients,
             "] must equal rows = ", s.rows, ", got ", offsets[s.clients]);
}

}  // namespace mmfl::kernels::checks
