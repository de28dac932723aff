// CPU reference of the MoE kernels: stable sorts for the routers, plain loops with double
// accumulators for the experts' FFNs and the combine; the oracle of every other backend.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "../common/moe_checks.h"
#include "mmfl/kernels/moe.h"

namespace mmfl::kernels::ref {
namespace {

// The exact GELU and its derivative: x Phi(x), Phi(x) + x phi(x).
double gelu(double x) {
  return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
}
double gelu_grad(double x) {
  const double pdf = std::exp(-0.5 * x * x) / std::sqrt(2.0 * M_PI);
  return 0.5 * (1.0 + std::erf(x / std::sqrt(2.0))) + x * pdf;
}

void check_ffn(const char* fn, const int64_t* order, const int64_t* offsets, const MoeShape& s) {
  checks::check_moe_shape(fn, s);
  checks::check_moe_offsets(fn, offsets, s);
  checks::check_moe_order(fn, order, s.slots, s.tokens);
}

}  // namespace

void moe_route_expert_choice(const float* logits, int64_t tokens, int64_t experts, int64_t capacity,
                             int64_t* order, int64_t* gate_index) {
  checks::check_router_args("ref::moe_route_expert_choice", logits, tokens, experts, capacity,
                            "capacity", tokens, "tokens");
  std::vector<int64_t> idx(static_cast<size_t>(tokens));
  for (int64_t e = 0; e < experts; ++e) {
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) {
      return logits[a * experts + e] > logits[b * experts + e];
    });
    std::sort(idx.begin(), idx.begin() + capacity);
    for (int64_t j = 0; j < capacity; ++j) {
      order[e * capacity + j] = idx[j];
      gate_index[e * capacity + j] = idx[j] * experts + e;
    }
  }
}

void moe_route_token_choice(const float* logits, int64_t tokens, int64_t experts, int64_t k,
                            int64_t* order, int64_t* gate_index, int64_t* offsets) {
  checks::check_router_args("ref::moe_route_token_choice", logits, tokens, experts, k, "k", experts,
                            "experts");
  // chosen[e]: the tokens that picked expert e, in increasing token order.
  std::vector<std::vector<int64_t>> chosen(static_cast<size_t>(experts));
  std::vector<int64_t> idx(static_cast<size_t>(experts));
  for (int64_t t = 0; t < tokens; ++t) {
    const float* row = logits + t * experts;
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return row[a] > row[b]; });
    for (int64_t j = 0; j < k; ++j)
      chosen[idx[j]].push_back(t);
  }
  offsets[0] = 0;
  for (int64_t e = 0; e < experts; ++e) {
    int64_t s = offsets[e];
    for (int64_t t : chosen[e]) {
      order[s] = t;
      gate_index[s] = t * experts + e;
      ++s;
    }
    offsets[e + 1] = s;
  }
}

void moe_token_slots(const int64_t* order, int64_t slots, int64_t tokens, int64_t* token_offsets,
                     int64_t* token_slots) {
  MMFL_CHECK(tokens >= 0 && slots >= 0, "ref::moe_token_slots: tokens and slots must be >= 0, got ",
             tokens, " and ", slots);
  checks::check_moe_order("ref::moe_token_slots", order, slots, tokens);
  std::vector<std::vector<int64_t>> of(static_cast<size_t>(tokens));
  for (int64_t s = 0; s < slots; ++s)
    of[order[s]].push_back(s);
  token_offsets[0] = 0;
  for (int64_t t = 0; t < tokens; ++t) {
    std::copy(of[t].begin(), of[t].end(), token_slots + token_offsets[t]);
    token_offsets[t + 1] = token_offsets[t] + static_cast<int64_t>(of[t].size());
  }
}

void moe_experts_forward(const float* x, const int64_t* order, const int64_t* offsets,
                         const float* w1, const float* b1, const float* w2, const float* b2,
                         const MoeShape& s, float* x_slots, float* pre, float* act, float* out) {
  check_ffn("ref::moe_experts_forward", order, offsets, s);
  const int64_t d = s.model, f = s.hidden;
  std::vector<double> a(static_cast<size_t>(f));
  for (int64_t e = 0; e < s.experts; ++e) {
    for (int64_t slot = offsets[e]; slot < offsets[e + 1]; ++slot) {
      const float* xt = x + order[slot] * d;
      std::copy(xt, xt + d, x_slots + slot * d);
      for (int64_t h = 0; h < f; ++h) {
        double acc = b1[e * f + h];
        for (int64_t j = 0; j < d; ++j)
          acc += double(w1[(e * f + h) * d + j]) * double(xt[j]);
        pre[slot * f + h] = static_cast<float>(acc);
        a[h] = gelu(acc);
        act[slot * f + h] = static_cast<float>(a[h]);
      }
      for (int64_t j = 0; j < d; ++j) {
        double acc = b2[e * d + j];
        for (int64_t h = 0; h < f; ++h)
          acc += double(w2[(e * d + j) * f + h]) * a[h];
        out[slot * d + j] = static_cast<float>(acc);
      }
    }
  }
}

void moe_combine(const float* src, const float* weight, const int64_t* token_offsets,
                 const int64_t* token_slots, const MoeShape& s, float* y) {
  checks::check_moe_shape("ref::moe_combine", s);
  std::vector<double> acc(static_cast<size_t>(s.model));
  for (int64_t t = 0; t < s.tokens; ++t) {
    std::fill(acc.begin(), acc.end(), 0.0);
    for (int64_t i = token_offsets[t]; i < token_offsets[t + 1]; ++i) {
      const int64_t slot = token_slots[i];
      const double w = weight != nullptr ? weight[slot] : 1.0;
      for (int64_t j = 0; j < s.model; ++j)
        acc[j] += w * src[slot * s.model + j];
    }
    for (int64_t j = 0; j < s.model; ++j)
      y[t * s.model + j] = static_cast<float>(acc[j]);
  }
}

void moe_experts_backward(const int64_t* order, const int64_t* offsets, const float* gate,
                          const float* w1, const float* w2, const MoeShape& s, const float* x_slots,
                          const float* pre, const float* act, const float* out, const float* gy,
                          float* grad_gate, float* grad_out, float* grad_pre, float* grad_x_slots,
                          float* gw1, float* gb1, float* gw2, float* gb2) {
  check_ffn("ref::moe_experts_backward", order, offsets, s);
  const int64_t d = s.model, f = s.hidden;
  for (int64_t slot = 0; slot < s.slots; ++slot) {
    const float* g = gy + order[slot] * d;
    double dot = 0;
    for (int64_t j = 0; j < d; ++j) {
      dot += double(g[j]) * double(out[slot * d + j]);
      grad_out[slot * d + j] = gate[slot] * g[j];  // one product: exact in fp32
    }
    grad_gate[slot] = static_cast<float>(dot);
  }
  for (int64_t e = 0; e < s.experts; ++e) {
    for (int64_t slot = offsets[e]; slot < offsets[e + 1]; ++slot) {
      const float* go = grad_out + slot * d;
      for (int64_t h = 0; h < f; ++h) {
        double acc = 0;
        for (int64_t j = 0; j < d; ++j)
          acc += double(w2[(e * d + j) * f + h]) * double(go[j]);
        grad_pre[slot * f + h] = static_cast<float>(acc * gelu_grad(pre[slot * f + h]));
      }
      if (grad_x_slots != nullptr)
        for (int64_t j = 0; j < d; ++j) {
          double acc = 0;
          for (int64_t h = 0; h < f; ++h)
            acc += double(w1[(e * f + h) * d + j]) * double(grad_pre[slot * f + h]);
          grad_x_slots[slot * d + j] = static_cast<float>(acc);
        }
    }
    for (int64_t j = 0; j < d; ++j) {
      double bsum = 0;
      for (int64_t slot = offsets[e]; slot < offsets[e + 1]; ++slot)
        bsum += grad_out[slot * d + j];
      gb2[e * d + j] = static_cast<float>(bsum);
      for (int64_t h = 0; h < f; ++h) {
        double acc = 0;
        for (int64_t slot = offsets[e]; slot < offsets[e + 1]; ++slot)
          acc += double(grad_out[slot * d + j]) * double(act[slot * f + h]);
        gw2[(e * d + j) * f + h] = static_cast<float>(acc);
      }
    }
    for (int64_t h = 0; h < f; ++h) {
      double bsum = 0;
      for (int64_t slot = offsets[e]; slot < offsets[e + 1]; ++slot)
        bsum += grad_pre[slot * f + h];
      gb1[e * f + h] = static_cast<float>(bsum);
      for (int64_t j = 0; j < d; ++j) {
        double acc = 0;
        for (int64_t slot = offsets[e]; slot < offsets[e + 1]; ++slot)
          acc += double(grad_pre[slot * f + h]) * double(x_slots[slot * d + j]);
        gw1[(e * f + h) * d + j] = static_cast<float>(acc);
      }
    }
  }
}

}  // namespace mmfl::kernels::ref
