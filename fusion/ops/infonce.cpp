#include "fusion/ops/infonce.h"

#include <torch/autograd.h>

#include "fusion/ops/cpu_context.h"
#include "fusion/ops/device.h"
#include "mmfl/error.h"
#include "mmfl/kernels/infonce.h"

namespace mmfl::fusion::ops {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

class InfoNce : public torch::autograd::Function<InfoNce> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& img_in,
                               const torch::Tensor& txt_in, const torch::Tensor& tau_in,
                               int64_t precision_value) {
    const auto precision = static_cast<kernels::Precision>(precision_value);
    const auto img = img_in.contiguous(), txt = txt_in.contiguous();
    const auto tau = tau_in.reshape({1}).contiguous();
    const int64_t n = img.size(0), d = img.size(1);
    auto loss = torch::empty({1}, img.options());
    auto lse_img = torch::empty({n}, img.options());
    auto lse_txt = torch::empty({n}, img.options());
    if (img.is_cpu()) {
      kernels::cpu::infonce_forward(img.data_ptr<float>(), txt.data_ptr<float>(), n, d,
                                    tau.data_ptr<float>(), loss.data_ptr<float>(),
                                    lse_img.data_ptr<float>(), lse_txt.data_ptr<float>(),
                                    cpu_context());
    } else {
#ifdef MMFL_HAVE_CUDA
      const c10::cuda::CUDAGuard guard(img.device());
      kernels::cuda::infonce_forward(img.data_ptr<float>(), txt.data_ptr<float>(), n, d,
                                     tau.data_ptr<float>(), loss.data_ptr<float>(),
                                     lse_img.data_ptr<float>(), lse_txt.data_ptr<float>(),
                                     precision, stream_of(img));
#else
      no_cuda("infonce");
#endif
    }
    ctx->save_for_backward({img, txt, tau, lse_img, lse_txt});
    ctx->saved_data["tau_shape"] = tau_in.sizes().vec();
    ctx->saved_data["precision"] = precision_value;
    return loss.reshape({});
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const auto &img = saved[0], &txt = saved[1], &tau = saved[2], &lse_img = saved[3],
               &lse_txt = saved[4];
    const int64_t n = img.size(0), d = img.size(1);
    const auto grad_loss = grad_out[0].reshape({1}).to(torch::kFloat32).contiguous();
    auto grad_img = torch::empty_like(img), grad_txt = torch::empty_like(txt);
    auto grad_tau = torch::empty({1}, img.options());
    if (img.is_cpu()) {
      kernels::cpu::infonce_backward(img.data_ptr<float>(), txt.data_ptr<float>(), n, d,
                                     tau.data_ptr<float>(), lse_img.data_ptr<float>(),
                                     lse_txt.data_ptr<float>(), grad_loss.data_ptr<float>(),
                                     grad_img.data_ptr<float>(), grad_txt.data_ptr<float>(),
                                     grad_tau.data_ptr<float>(), cpu_context());
    } else {
#ifdef MMFL_HAVE_CUDA
      const c10::cuda::CUDAGuard guard(img.device());
      kernels::cuda::infonce_backward(
          img.data_ptr<float>(), txt.data_ptr<float>(), n, d, tau.data_ptr<float>(),
          lse_img.data_ptr<float>(), lse_txt.data_ptr<float>(), grad_loss.data_ptr<float>(),
          grad_img.data_ptr<float>(), grad_txt.data_ptr<float>(), grad_tau.data_ptr<float>(),
          static_cast<kernels::Precision>(ctx->saved_data["precision"].toInt()), stream_of(img));
#else
      no_cuda("infonce");
#endif
    }
    const auto tau_shape = ctx->saved_data["tau_shape"].toIntVector();
    return {grad_img, grad_txt, grad_tau.reshape(tau_shape), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor infonce(const torch::Tensor& img, const torch::Tensor& txt, const torch::Tensor& tau,
                      kernels::Precision precision) {
  MMFL_CHECK(img.dim() == 2 && img.size(0) >= 1 && img.size(1) >= 1,
             "infonce: img must be [N, D] with N, D >= 1, got shape ", img.sizes());
  MMFL_CHECK(txt.sizes() == img.sizes(), "infonce: txt must have img's shape ", img.sizes(),
             ", got ", txt.sizes());
  MMFL_CHECK(tau.numel() == 1, "infonce: tau must hold one value, got shape ", tau.sizes());
  MMFL_CHECK(img.scalar_type() == torch::kFloat32 && txt.scalar_type() == torch::kFloat32 &&
                 tau.scalar_type() == torch::kFloat32,
             "infonce: img, txt and tau must be float32, got ", img.scalar_type(), ", ",
             txt.scalar_type(), ", ", tau.scalar_type());
  MMFL_CHECK(img.device() == txt.device() && img.device() == tau.device(),
             "infonce: img, txt and tau must be on one device, got ", img.device(), ", ",
             txt.device(), ", ", tau.device());
  MMFL_CHECK(img.is_cpu() || img.is_cuda(), "infonce: unsupported device ", img.device());
  return InfoNce::apply(img, txt, tau, static_cast<int64_t>(precision));
}

}  // namespace mmfl::fusion::ops
