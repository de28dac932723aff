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

#include "fusion/ops/cpu_context.h"
#include "fusion/ops/device.h"
#include "mmfl/error.h"
#include "mmfl/kernels/moe.h"

namespace mmfl::fusion::ops {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

const int64_t* i64(const torch::Tensor& t) {
  return t.data_ptr<int64_t>();
}
int64_t* i64(torch::Tensor& t) {
  return t.data_ptr<int64_t>();
}
const float* f32(const torch::Tensor& t) {
  return t.data_ptr<float>();
}
float* f32(torch::Tensor& t) {
  return t.data_ptr<float>();
}
// An optional output: null when undefined.
float* f32_or_null(torch::Tensor& t) {
  return t.defined() ? t.data_ptr<float>() : nullptr;
}

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

kernels::MoeShape shape_of(const torch::Tensor& x, const torch::Tensor& order,
                           const torch::Tensor& w1) {
  return {x.size(0), w1.size(0), order.size(0), x.size(1), w1.size(1)};
}

// The expert FFN and its combine as one autograd node: the forward keeps the gathered inputs, the
// pre-activations, activations and expert outputs (the backward's inputs) and the token -> slots
// map; the backward runs the experts' backward and combines the slot gradients of x.
class MoeFfn : public torch::autograd::Function<MoeFfn> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x_in,
                               const torch::Tensor& gate_in, const torch::Tensor& w1_in,
                               const torch::Tensor& b1_in, const torch::Tensor& w2_in,
                               const torch::Tensor& b2_in, const torch::Tensor& order_in,
                               const torch::Tensor& offsets_host) {
    const auto x = x_in.contiguous(), gate = gate_in.contiguous(), w1 = w1_in.contiguous(),
               b1 = b1_in.contiguous(), w2 = w2_in.contiguous(), b2 = b2_in.contiguous(),
               order = order_in.contiguous();
    const kernels::MoeShape s = shape_of(x, order, w1);
    const auto fo = x.options();
    auto x_slots = torch::empty({s.slots, s.model}, fo),
         pre = torch::empty({s.slots, s.hidden}, fo), act = torch::empty({s.slots, s.hidden}, fo),
         out = torch::empty({s.slots, s.model}, fo);
    auto token_offsets = torch::empty({s.tokens + 1}, order.options()),
         token_slots = torch::empty({s.slots}, order.options());
    auto y = torch::empty({s.tokens, s.model}, fo);
    torch::Tensor offsets;
    if (x.is_cpu()) {
      offsets = offsets_host;
      const auto c = cpu_context();
      kernels::cpu::moe_token_slots(i64(order), s.slots, s.tokens, i64(token_offsets),
                                    i64(token_slots), c);
      kernels::cpu::moe_experts_forward(f32(x), i64(order), i64(offsets), f32(w1), f32(b1), f32(w2),
                                        f32(b2), s, f32(x_slots), f32(pre), f32(act), f32(out), c);
      kernels::cpu::moe_combine(f32(out), f32(gate), i64(token_offsets), i64(token_slots), s,
                                f32(y), c);
    } else {
#ifdef MMFL_HAVE_CUDA
      const c10::cuda::CUDAGuard guard(x.device());
      const cudaStream_t st = stream_of(x);
      offsets = offsets_host.to(x.device());
      kernels::cuda::moe_token_slots(i64(order), s.slots, s.tokens, i64(token_offsets),
                                     i64(token_slots), st);
      kernels::cuda::moe_experts_forward(f32(x), i64(order), i64(offsets), f32(w1), f32(b1),
                                         f32(w2), f32(b2), s, f32(x_slots), f32(pre), f32(act),
                                         f32(out), st);
      kernels::cuda::moe_combine(f32(out), f32(gate), i64(token_offsets), i64(token_slots), s,
                                 f32(y), st);
#else
      no_cuda("moe_ffn");
#endif
    }
    ctx->save_for_backward(
        {gate, w1, w2, order, offsets, token_offsets, token_slots, x_slots, pre, act, out});
    ctx->saved_data["tokens"] = s.tokens;
    return y;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grad_out) {
    const auto v = ctx->get_saved_variables();
    const auto &gate = v[0], &w1 = v[1], &w2 = v[2], &order = v[3], &offsets = v[4],
               &token_offsets = v[5], &token_slots = v[6], &x_slots = v[7], &pre = v[8],
               &act = v[9], &out = v[10];
    const kernels::MoeShape s{ctx->saved_data["tokens"].toInt(), w1.size(0), order.size(0),
                              w1.size(2), w1.size(1)};
    const auto gy = grad_out[0].contiguous();
    const auto fo = gy.options();
    auto grad_gate = torch::empty({s.slots}, fo), g_out = torch::empty({s.slots, s.model}, fo),
         grad_pre = torch::empty({s.slots, s.hidden}, fo);
    auto gw1 = torch::empty_like(w1), gb1 = torch::empty({s.experts, s.hidden}, fo),
         gw2 = torch::empty_like(w2), gb2 = torch::empty({s.experts, s.model}, fo);
    torch::Tensor grad_x_slots, gx;
    if (ctx->needs_input_grad(0)) {
      grad_x_slots = torch::empty({s.slots, s.model}, fo);
      gx = torch::empty({s.tokens, s.model}, fo);
    }
    if (gy.is_cpu()) {
      const auto c = cpu_context();
      kernels::cpu::moe_experts_backward(
          i64(order), i64(offsets), f32(gate), f32(w1), f32(w2), s, f32(x_slots), f32(pre),
          f32(act), f32(out), f32(gy), f32(grad_gate), f32(g_out), f32(grad_pre),
          f32_or_null(grad_x_slots), f32(gw1), f32(gb1), f32(gw2), f32(gb2), c);
      if (gx.defined())
        kernels::cpu::moe_combine(f32(grad_x_slots), nullptr, i64(token_offsets), i64(token_slots),
                                  s, f32(gx), c);
    } else {
#ifdef MMFL_HAVE_CUDA
      const c10::cuda::CUDAGuard guard(gy.device());
      const cudaStream_t st = stream_of(gy);
      kernels::cuda::moe_experts_backward(
          i64(order), i64(offsets), f32(gate), f32(w1), f32(w2), s, f32(x_slots), f32(pre),
          f32(act), f32(out), f32(gy), f32(grad_gate), f32(g_out), f32(grad_pre),
          f32_or_null(grad_x_slots), f32(gw1), f32(gb1), f32(gw2), f32(gb2), st);
      if (gx.defined())
        kernels::cuda::moe_combine(f32(grad_x_slots), nullptr, i64(token_offsets), i64(token_slots),
                                   s, f32(gx), st);
#else
      no_cuda("moe_ffn");
#endif
    }
    return {gx, grad_gate, gw1, gb1, gw2, gb2, torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

MoeRouting route_expert_choice(const torch::Tensor& logits, int64_t capacity) {
  check_logits("route_expert_choice", logits);
  const int64_t tokens = logits.size(0), experts = logits.size(1);
  MMFL_CHECK(capacity >= 1 && capacity <= tokens,
             "route_expert_choice: capacity must be in 1 .. tokens = ", tokens, ", got ", capacity);
  const auto l = logits.detach().contiguous();
  const auto opts = l.options().dtype(torch::kInt64);
  MoeRouting r;
  r.order = torch::empty({experts * capacity}, opts);
  auto gate_index = torch::empty({experts * capacity}, opts);
  if (l.is_cpu()) {
    kernels::cpu::moe_route_expert_choice(f32(l), tokens, experts, capacity, i64(r.order),
                                          i64(gate_index), cpu_context());
  } else {
#ifdef MMFL_HAVE_CUDA
    const c10::cuda::CUDAGuard guard(l.device());
    kernels::cuda::moe_route_expert_choice(f32(l), tokens, experts, capacity, i64(r.order),
                                           i64(gate_index), stream_of(l));
#else
    no_cuda("route_expert_choice");
#endif
  }
  // MoMa's sigmoid gate of the chosen (token, expert) pairs; autograd carries dL/dgate to logits.
  r.gate = at::sigmoid(logits.reshape({-1}).index_select(0, gate_index));
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
  const auto l = logits.detach().contiguous();
  const auto opts = l.options().dtype(torch::kInt64);
  MoeRouting r;
  r.order = torch::empty({tokens * k}, opts);
  auto gate_index = torch::empty({tokens * k}, opts);
  auto offsets = torch::empty({experts + 1}, opts);
  if (tokens > 0) {
    if (l.is_cpu()) {
      kernels::cpu::moe_route_token_choice(f32(l), tokens, experts, k, i64(r.order),
                                           i64(gate_index), i64(offsets), cpu_context());
    } else {
#ifdef MMFL_HAVE_CUDA
      const c10::cuda::CUDAGuard guard(l.device());
      kernels::cuda::moe_route_token_choice(f32(l), tokens, experts, k, i64(r.order),
                                            i64(gate_index), i64(offsets), stream_of(l));
#else
      no_cuda("route_token_choice");
#endif
    }
  } else {
    offsets.zero_();
  }
  // gate = softmax(logits[t])[e], not renormalized over the chosen k.
  r.gate = at::softmax(logits, 1).reshape({-1}).index_select(0, gate_index);
  const auto host = offsets.cpu();
  r.offsets.assign(host.data_ptr<int64_t>(), host.data_ptr<int64_t>() + experts + 1);
  return r;
}

MoeRouting concat_routings(const std::vector<MoeRouting>& parts,
                           const std::vector<torch::Tensor>& token_maps) {
  MMFL_CHECK(!parts.empty(), "concat_routings: no routings given");
  MMFL_CHECK(token_maps.size() == parts.size(), "concat_routings: ", parts.size(), " routings but ",
             token_maps.size(), " token maps (one per routing, or undefined)");
  std::vector<torch::Tensor> orders, gates;
  MoeRouting r;
  r.offsets.push_back(0);
  for (size_t i = 0; i < parts.size(); ++i) {
    const MoeRouting& p = parts[i];
    MMFL_CHECK(p.offsets.size() >= 2 && p.order.defined() && p.gate.defined() &&
                   p.order.numel() == p.offsets.back() && p.gate.numel() == p.offsets.back(),
               "concat_routings: routing ", i,
               " is malformed (offsets must hold experts + 1 >= 2 "
               "entries ending at the number of slots, order and gate one entry per slot)");
    auto order = p.order;
    if (token_maps[i].defined()) {
      const auto& m = token_maps[i];
      MMFL_CHECK(m.scalar_type() == torch::kInt64 && m.dim() == 1 && m.device() == order.device(),
                 "concat_routings: token_maps[", i, "] must be int64 [tokens] on ", order.device(),
                 ", got ", m.scalar_type(), " ", m.sizes(), " on ", m.device());
      order = m.index_select(0, order);
    }
    orders.push_back(order);
    gates.push_back(p.gate);
    const int64_t base = r.offsets.back();
    for (size_t e = 1; e < p.offsets.size(); ++e)
      r.offsets.push_back(base + p.offsets[e]);
  }
  r.order = torch::cat(orders);
  r.gate = torch::cat(gates);
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
  check_ffn_args(x, r, w1, b1, w2, b2);
  const auto offsets_host = torch::tensor(r.offsets, torch::dtype(torch::kInt64));
  return MoeFfn::apply(x, r.gate, w1, b1, w2, b2, r.order, offsets_host);
}

}  // namespace mmfl::fusion::ops
