// Internal to kernels/: the argument checks of the MoE kernels that the host implementations (ref
// and cpu) share, so both reject the same inputs with the same messages. `fn` names the caller.
#pragma once

#include <cstdint>

#include "mmfl/error.h"
#include "mmfl/kernels/moe.h"

namespace mmfl::kernels::checks {

inline void check_router_args(const char* fn, const float* logits, int64_t tokens, int64_t experts,
                              int64_t k, const char* k_name, int64_t k_max,
                              const char* k_max_name) {
  MMFL_CHECK(tokens >= 1, fn, ": tokens must be >= 1, got ", tokens);
  MMFL_CHECK(experts >= 1, fn, ": experts must be >= 1, got ", experts);
  MMFL_CHECK(k >= 1 && k <= k_max, fn, ": ", k_name, " must be in 1 .. ", k_max_name, " = ", k_max,
             ", got ", k);
  MMFL_CHECK(logits != nullptr, fn, ": logits is null");
}

inline void check_moe_shape(const char* fn, const MoeShape& s) {
  MMFL_CHECK(s.tokens >= 0, fn, ": tokens must be >= 0, got ", s.tokens);
  MMFL_CHECK(s.experts >= 1, fn, ": experts must be >= 1, got ", s.experts);
  MMFL_CHECK(s.slots >= 0, fn, ": slots must be >= 0, got ", s.slots);
  MMFL_CHECK(s.model >= 1 && s.hidden >= 1, fn, ": model and hidden widths must be >= 1, got ",
             "model ", s.model, ", hidden ", s.hidden);
}

// The experts' slot offsets, in host memory: offsets[e] .. offsets[e+1]-1 are expert e's slots.
inline void check_moe_offsets(const char* fn, const int64_t* offsets, const MoeShape& s) {
  MMFL_CHECK(offsets != nullptr, fn, ": offsets is null");
  MMFL_CHECK(offsets[0] == 0, fn, ": offsets[0] must be 0, got ", offsets[0]);
  for (int64_t e = 0; e < s.experts; ++e)
    MMFL_CHECK(offsets[e + 1] >= offsets[e], fn, ": offsets must not decrease, but offsets[", e + 1,
               "] = ", offsets[e + 1], " < offsets[", e, "] = ", offsets[e], " (expert ", e, ")");
  MMFL_CHECK(offsets[s.experts] == s.slots, fn, ": offsets[experts] = offsets[", s.experts,
             "] must equal slots = ", s.slots, ", got ", offsets[s.experts]);
}

// Every slot names a token of x.
inline void check_moe_order(const char* fn, const int64_t* order, int64_t slots, int64_t tokens) {
  MMFL_CHECK(slots == 0 || order != nullptr, fn, ": order is null");
  for (int64_t s = 0; s < slots; ++s)
    MMFL_CHECK(order[s] >= 0 && order[s] < tokens, fn, ": order[", s, "] = ", order[s],
               " is not a token in 0 .. ", tokens - 1);
}

}  // namespace mmfl::kernels::checks
