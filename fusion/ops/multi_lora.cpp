#include "fusion/ops/multi_lora.h"

#include <ATen/ops/addmm.h>
#include <ATen/ops/mm.h>
#include <torch/autograd.h>

#include <cmath>

#include "fusion/ops/cpu_context.h"
#include "fusion/ops/device.h"
#include "mmfl/error.h"
#include "mmfl/kernels/multi_lora.h"

namespace mmfl::fusion::ops {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

kernels::MultiLoraShape shape_of(const torch::Tensor& x, const torch::Tensor& A,
                                 const torch::Tensor& B) {
  return {A.size(0), x.size(0), x.size(1), B.size(1), A.size(1)};
}

// The base product x W^T (+ b), contiguous: the kernels add the adapters into it.
torch::Tensor base_product(const torch::Tensor& x, const torch::Tensor& weight,
                           const torch::Tensor& bias) {
  return bias.defined() ? at::addmm(bias, x, weight.t()) : at::mm(x, weight.t());
}

class MultiLora : public torch::autograd::Function<MultiLora> {
 public:
  // offsets: the host offsets as a CPU int64 tensor (the CUDA path copies them to the device).
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x_in,
                               const torch::Tensor& weight, const torch::Tensor& bias,
                               const torch::Tensor& A_in, const torch::Tensor& B_in,
                               const torch::Tensor& offsets_host, double scale) {
    const auto x = x_in.contiguous(), A = A_in.contiguous(), B = B_in.contiguous();
    const kernels::MultiLoraShape s = shape_of(x, A, B);
    // An empty bias stands for none (a real one has out >= 1 values).
    auto y = base_product(x, weight, bias.numel() > 0 ? bias : torch::Tensor()).contiguous();
    auto h = torch::empty({s.rows, s.rank}, x.options());
    torch::Tensor offsets;
    if (x.is_cpu()) {
      offsets = offsets_host;
      kernels::cpu::multi_lora_forward(x.data_ptr<float>(), A.data_ptr<float>(),
                                       B.data_ptr<float>(), offsets.data_ptr<int64_t>(), s,
                                       static_cast<float>(scale), h.data_ptr<float>(),
                                       y.data_ptr<float>(), cpu_context());
    } else {
#ifdef MMFL_HAVE_CUDA
      const c10::cuda::CUDAGuard guard(x.device());
      offsets = offsets_host.to(x.device());
      kernels::cuda::multi_lora_forward(x.data_ptr<float>(), A.data_ptr<float>(),
                                        B.data_ptr<float>(), offsets.data_ptr<int64_t>(), s,
                                        static_cast<float>(scale), h.data_ptr<float>(),
                                        y.data_ptr<float>(), stream_of(x));
#else
      no_cuda("multi_lora_linear");
#endif
    }
    ctx->save_for_backward({x, weight, A, B, h, offsets});
    ctx->saved_data["scale"] = scale;
    return y;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &weight = saved[1], &A = saved[2], &B = saved[3], &h = saved[4],
               &offsets = saved[5];
    const float scale = static_cast<float>(ctx->saved_data["scale"].toDouble());
    const kernels::MultiLoraShape s = shape_of(x, A, B);
    const auto gy = grad_out[0].contiguous();
    // gx starts as the base's gy W; the kernels add g A_c.
    torch::Tensor gx;
    if (ctx->needs_input_grad(0)) gx = at::mm(gy, weight).contiguous();
    auto g = torch::empty({s.rows, s.rank}, x.options());
    auto gA = torch::empty_like(A), gB = torch::empty_like(B);
    float* gx_ptr = gx.defined() ? gx.data_ptr<float>() : nullptr;
    if (x.is_cpu()) {
      kernels::cpu::multi_lora_backward(
          x.data_ptr<float>(), A.data_ptr<float>(), B.data_ptr<float>(),
          offsets.data_ptr<int64_t>(), s, scale, h.data_ptr<float>(), gy.data_ptr<float>(),
          g.data_ptr<float>(), gx_ptr, gA.data_ptr<float>(), gB.data_ptr<float>(), cpu_context());
    } else {
#ifdef MMFL_HAVE_CUDA
      const c10::cuda::CUDAGuard guard(x.device());
      kernels::cuda::multi_lora_backward(
          x.data_ptr<float>(), A.data_ptr<float>(), B.data_ptr<float>(),
          offsets.data_ptr<int64_t>(), s, scale, h.data_ptr<float>(), gy.data_ptr<float>(),
          g.data_ptr<float>(), gx_ptr, gA.data_ptr<float>(), gB.data_ptr<float>(), stream_of(x));
#else
      no_cuda("multi_lora_linear");
#endif
    }
    return {gx, torch::Tensor(), torch::Tensor(), gA, gB, torch::Tensor(), torch::Tensor()};
  }
};

void check_float_on(const char* name, const torch::Tensor& t, const torch::Tensor& x) {
  MMFL_CHECK(t.scalar_type() == torch::kFloat32, "multi_lora_linear: ", name,
             " must be float32, got ", t.scalar_type());
  MMFL_CHECK(t.device() == x.device(), "multi_lora_linear: ", name, " must be on x's device ",
             x.device(), ", got ", t.device());
}

}  // namespace

torch::Tensor multi_lora_linear(const torch::Tensor& x, const torch::Tensor& weight,
                                const torch::Tensor& bias, const torch::Tensor& A,
                                const torch::Tensor& B, const std::vector<int64_t>& offsets,
                                double scale) {
  MMFL_CHECK(x.defined() && weight.defined() && A.defined() && B.defined(),
             "multi_lora_linear: x, weight, A and B must be defined tensors");
  MMFL_CHECK(x.dim() == 2, "multi_lora_linear: x must be 2-D [rows, in] (flatten leading dims), ",
             "got shape ", x.sizes());
  MMFL_CHECK(x.is_cpu() || x.is_cuda(), "multi_lora_linear: unsupported device ", x.device());
  check_float_on("x", x, x);
  check_float_on("weight", weight, x);
  check_float_on("A", A, x);
  check_float_on("B", B, x);
  const int64_t rows = x.size(0), in = x.size(1);
  MMFL_CHECK(in >= 1, "multi_lora_linear: x has no features (shape ", x.sizes(), ")");
  MMFL_CHECK(weight.dim() == 2 && weight.size(1) == in && weight.size(0) >= 1,
             "multi_lora_linear: weight must be [out, in] with in = ", in, " (x's last dim), got ",
             weight.sizes());
  const int64_t out = weight.size(0);
  if (bias.defined()) {
    check_float_on("bias", bias, x);
    MMFL_CHECK(bias.dim() == 1 && bias.size(0) == out, "multi_lora_linear: bias must be [", out,
               "] (weight's out), got ", bias.sizes());
  }
  MMFL_CHECK(A.dim() == 3 && A.size(0) >= 1 && A.size(1) >= 1 && A.size(2) == in,
             "multi_lora_linear: A must be [clients, rank, ", in, "] with clients, rank >= 1, got ",
             A.sizes());
  const int64_t clients = A.size(0), rank = A.size(1);
  MMFL_CHECK(B.dim() == 3 && B.size(0) == clients && B.size(1) == out && B.size(2) == rank,
             "multi_lora_linear: B must be [clients, out, rank] = [", clients, ", ", out, ", ",
             rank, "] to match A ", A.sizes(), " and weight ", weight.sizes(), ", got ", B.sizes());
  MMFL_CHECK(static_cast<int64_t>(offsets.size()) == clients + 1,
             "multi_lora_linear: offsets must hold clients + 1 = ", clients + 1,
             " row offsets (A has ", clients, " clients), got ", offsets.size());
  MMFL_CHECK(offsets[0] == 0, "multi_lora_linear: offsets[0] must be 0, got ", offsets[0]);
  for (int64_t c = 0; c < clients; ++c)
    MMFL_CHECK(offsets[c + 1] >= offsets[c],
               "multi_lora_linear: offsets must not decrease: client ", c, " has offsets[", c,
               "] = ", offsets[c], " > offsets[", c + 1, "] = ", offsets[c + 1]);
  MMFL_CHECK(offsets[clients] == rows, "multi_lora_linear: offsets[", clients,
             "] must equal x's rows ", rows, ", got ", offsets[clients]);
  MMFL_CHECK(std::isfinite(scale), "multi_lora_linear: scale must be finite, got ", scale);
  MMFL_CHECK(!(torch::GradMode::is_enabled() &&
               (weight.requires_grad() || (bias.defined() && bias.requires_grad()))),
             "multi_lora_linear: weight and bias are the frozen base and get no gradient, but "
             "one requires grad; freeze it (requires_grad(false)) or detach it");
  const auto offsets_host = torch::tensor(offsets, torch::dtype(torch::kInt64));
  // Function::apply takes defined tensors only: no bias travels as an empty one.
  return MultiLora::apply(x, weight.detach(),
                          bias.defined() ? bias.detach() : torch::empty({0}, x.options()), A, B,
                          offsets_host, scale);
}

}  // namespace mmfl::fusion::ops
