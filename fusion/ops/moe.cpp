#include "fusion/ops/moe.h"

#include <ATen/ops/aminmax.h>
#include <ATen/ops/bincount.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/index_add.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>
#include <torch/autograd.h>

#include <tuple>

#include "mmfl/error.h"

namespace mmfl::fusion::ops {

namespace {

void check_logits(const char* op, const torch::Tensor& logits) {
  MMFL_CHECK(logits.defined(), op, ": logits must be a defined tensor");
  MMFL_CHECK(logits.dim() == 2, op, ": logits must be 2-D [tokens, experts], got shape ",
             logits.sizes());
  MMFL_CHECK(logits.scalar_type() == torch::kFloat32, op, ": logits must be float32, got ",
             logits.scalar_type());
  MMFL_CHECK(logits.is_cpu() || logits.is_cuda(), op, ": unsupported device ", logits.device());
  MMFL_CHECK(logits.size(1) >= 1, op, ": logits need at least one expert (column), got shape ",
             logits.sizes());
  MMFL_CHECK(logits.numel() == 0 || at::isfinite(logits).all().item<bool>(), op,
             ": the router logits hold NaN or infinity (a diverged router; lower the learning "
             "rate or check the inputs)");
}

// gate[s] = probs[order[s], expert[s]] through a gather, so autograd carries dL/dgate back to the
// router's logits.
torch::Tensor gather_gate(const torch::Tensor& probs, const torch::Tensor& order,
                          const torch::Tensor& expert) {
  return probs.reshape({-1}).index_select(0, order * probs.size(1) + expert);
}

void check_float_on(const char* name, const torch::Tensor& t, const torch::Tensor& x) {
  MMFL_CHECK(t.defined(), "moe_ffn: ", name, " must be a defined tensor");
  MMFL_CHECK(t.scalar_type() == torch::kFloat32, "moe_ffn: ", name, " must be float32, got ",
             t.scalar_type());
  MMFL_CHECK(t.device() == x.device(), "moe_ffn: ", name, " must be on x's device ", x.device(),
             ", got ", t.device());
}

// Checks x, the routing and the expert weights against each other; returns the number of experts.
int64_t check_ffn_args(const torch::Tensor& x, const MoeRouting& r, const torch::Tensor& w1,
                       const torch::Tensor& b1, const torch::Tensor& w2, const torch::Tensor& b2) {
  check_float_on("x", x, x);
  MMFL_CHECK(x.dim() == 2 && x.size(1) >= 1,
             "moe_ffn: x must be 2-D [tokens, d_model] with d_model >= 1, got shape ", x.sizes());
  MMFL_CHECK(x.is_cpu() || x.is_cuda(), "moe_ffn: unsupported device ", x.device());
  check_float_on("w1", w1, x);
  check_float_on("b1", b1, x);
  check_float_on("w2", w2, x);
  check_float_on("b2", b2, x);
  const int64_t tokens = x.size(0), d = x.size(1);
  MMFL_CHECK(w1.dim() == 3 && w1.size(0) >= 1 && w1.size(1) >= 1 && w1.size(2) == d,
             "moe_ffn: w1 must be [experts, d_ff, ", d,
             "] (d_model from x) with experts, d_ff >= 1, "
             "got ",
             w1.sizes());
  const int64_t experts = w1.size(0), f = w1.size(1);
  MMFL_CHECK(b1.dim() == 2 && b1.size(0) == experts && b1.size(1) == f,
             "moe_ffn: b1 must be [experts, d_ff] = [", experts, ", ", f, "], got ", b1.sizes());
  MMFL_CHECK(w2.dim() == 3 && w2.size(0) == experts && w2.size(1) == d && w2.size(2) == f,
             "moe_ffn: w2 must be [experts, d_model, d_ff] = [", experts, ", ", d, ", ", f,
             "], got ", w2.sizes());
  MMFL_CHECK(b2.dim() == 2 && b2.size(0) == experts && b2.size(1) == d,
             "moe_ffn: b2 must be [experts, d_model] = [", experts, ", ", d, "], got ", b2.sizes());
  MMFL_CHECK(static_cast<int64_t>(r.offsets.size()) == experts + 1,
             "moe_ffn: routing.offsets must hold experts + 1 = ", experts + 1,
             " slot offsets (w1 has ", experts, " experts), got ", r.offsets.size());
  MMFL_CHECK(r.offsets[0] == 0, "moe_ffn: routing.offsets[0] must be 0, got ", r.offsets[0]);
  for (int64_t e = 0; e < experts; ++e)
    MMFL_CHECK(r.offsets[e + 1] >= r.offsets[e],
               "moe_ffn: routing.offsets must not decrease: expert ", e, " has offsets[", e,
               "] = ", r.offsets[e], " > offsets[", e + 1, "] = ", r.offsets[e + 1]);
  const int64_t slots = r.offsets[experts];
  MMFL_CHECK(r.order.defined() && r.order.scalar_type() == torch::kInt64 && r.order.dim() == 1 &&
                 r.order.size(0) == slots,
             "moe_ffn: routing.order must be int64 [slots] with slots = offsets[", experts,
             "] = ", slots, ", got ",
             r.order.defined() ? c10::toString(r.order.scalar_type()) : "undefined", " ",
             r.order.defined() ? r.order.sizes() : c10::IntArrayRef{});
  MMFL_CHECK(r.order.device() == x.device(), "moe_ffn: routing.order must be on x's device ",
             x.device(), ", got ", r.order.device());
  check_float_on("routing.gate", r.gate, x);
  MMFL_CHECK(r.gate.dim() == 1 && r.gate.size(0) == slots, "moe_ffn: routing.gate must be [", slots,
             "] (one weight per slot), got ", r.gate.sizes());
  if (slots > 0) {
    const auto [lo, hi] = at::aminmax(r.order);
    const int64_t min = lo.item<int64_t>(), max = hi.item<int64_t>();
    MMFL_CHECK(min >= 0 && max < tokens, "moe_ffn: routing.order names tokens ", min, " .. ", max,
               " but x has ", tokens, " tokens (rows)");
  }
  return experts;
}

}  // namespace

MoeRouting route_expert_choice(const torch::Tensor& logits, int64_t capacity) {
  check_logits("route_expert_choice", logits);
  const int64_t tokens = logits.size(0), experts = logits.size(1);
  MMFL_CHECK(capacity >= 1 && capacity <= tokens,
             "route_expert_choice: capacity must be in 1 .. tokens = ", tokens, ", got ", capacity);
  // A stable descending sort of each column keeps equal logits in token order, so the first
  // `capacity` rows are the top with ties to the lower token; then back to increasing token order.
  const auto ranked =
      std::get<1>(logits.detach().sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  const auto chosen = std::get<0>(ranked.slice(0, 0, capacity).sort(/*dim=*/0));  // [cap, E]
  MoeRouting r;
  r.order = chosen.t().contiguous().reshape({-1});
  const auto expert = torch::arange(experts, r.order.options()).repeat_interleave(capacity);
  r.gate = gather_gate(at::sigmoid(logits), r.order, expert);
  r.offsets.resize(experts + 1);
  for (int64_t e = 0; e <= experts; ++e)
    r.offsets[e] = e * capacity;
  return r;
}

MoeRouting route_token_choice(const torch::Tensor& logits, int64_t k) {
  check_logits("route_token_choice", logits);
  const int64_t tokens = logits.size(0), experts = logits.size(1);
  MMFL_CHECK(k >= 1 && k <= experts, "route_token_choice: k must be in 1 .. experts = ", experts,
             ", got ", k);
  const auto ranked =
      std::get<1>(logits.detach().sort(/*stable=*/true, /*dim=*/1, /*descending=*/true));
  const auto expert_of = ranked.slice(1, 0, k).reshape({-1});  // token-major: slot t k + j
  const auto token_of = torch::arange(tokens, expert_of.options()).repeat_interleave(k);
  // A stable sort by expert keeps each expert's slots in token order.
  const auto by_expert =
      std::get<1>(expert_of.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
  MoeRouting r;
  r.order = token_of.index_select(0, by_expert);
  const auto expert = expert_of.index_select(0, by_expert);
  r.gate = gather_gate(at::softmax(logits, 1), r.order, expert);
  const auto counts = at::bincount(expert, {}, experts).cpu();
  r.offsets.assign(experts + 1, 0);
  for (int64_t e = 0; e < experts; ++e)
    r.offsets[e + 1] = r.offsets[e] + counts[e].item<int64_t>();
  return r;
}

torch::Tensor moe_ffn_loop(const torch::Tensor& x, const MoeRouting& r, const torch::Tensor& w1,
                           const torch::Tensor& b1, const torch::Tensor& w2,
                           const torch::Tensor& b2) {
  const int64_t experts = check_ffn_args(x, r, w1, b1, w2, b2);
  auto y = at::zeros_like(x);
  for (int64_t e = 0; e < experts; ++e) {
    const int64_t begin = r.offsets[e], n = r.offsets[e + 1] - begin;
    if (n == 0) continue;
    const auto tokens = r.order.narrow(0, begin, n);
    const auto h = at::gelu(at::linear(x.index_select(0, tokens), w1[e], b1[e]));
    const auto out = at::linear(h, w2[e], b2[e]) * r.gate.narrow(0, begin, n).unsqueeze(1);
    y = at::index_add(y, 0, tokens, out);
  }
  return y;
}

torch::Tensor moe_ffn(const torch::Tensor& x, const MoeRouting& r, const torch::Tensor& w1,
                      const torch::Tensor& b1, const torch::Tensor& w2, const torch::Tensor& b2) {
  return moe_ffn_loop(x, r, w1, b1, w2, b2);
}

}  // namespace mmfl::fusion::ops
