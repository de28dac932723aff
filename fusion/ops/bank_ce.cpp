#include "fusion/ops/bank_ce.h"

#include <torch/autograd.h>

#include "fusion/ops/cpu_context.h"
#include "fusion/ops/device.h"
#include "mmfl/error.h"

namespace mmfl::fusion::ops {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

class BankCrossEntropy : public torch::autograd::Function<BankCrossEntropy> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& q_in,
                               const torch::Tensor& bank_in, const torch::Tensor& target_in,
                               double tau_value, int64_t precision_value) {
    const auto precision = static_cast<kernels::Precision>(precision_value);
    const auto q = q_in.contiguous(), bank = bank_in.contiguous(), target = target_in.contiguous();
    const int64_t b = q.size(0), n = bank.size(0), d = q.size(1);
    const auto tau = torch::full({1}, tau_value, q.options());
    auto lse = torch::empty({b}, q.options()), loss = torch::empty({b}, q.options());
    if (q.is_cpu()) {
      kernels::cpu::bank_ce_forward(q.data_ptr<float>(), bank.data_ptr<float>(),
                                    target.data_ptr<int64_t>(), b, n, d, tau.data_ptr<float>(),
                                    lse.data_ptr<float>(), loss.data_ptr<float>(), cpu_context());
    } else {
#ifdef MMFL_HAVE_CUDA
      const c10::cuda::CUDAGuard guard(q.device());
      kernels::cuda::bank_ce_forward(q.data_ptr<float>(), bank.data_ptr<float>(),
                                     target.data_ptr<int64_t>(), b, n, d, tau.data_ptr<float>(),
                                     lse.data_ptr<float>(), loss.data_ptr<float>(), precision,
                                     stream_of(q));
#else
      no_cuda("bank_cross_entropy");
#endif
    }
    ctx->save_for_backward({q, bank, target, tau, lse});
    ctx->saved_data["bank_grad"] = bank_in.requires_grad();
    ctx->saved_data["precision"] = precision_value;
    return loss;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grad_out) {
    const auto s = ctx->get_saved_variables();
    const auto &q = s[0], &bank = s[1], &target = s[2], &tau = s[3], &lse = s[4];
    const bool want_bank = ctx->saved_data["bank_grad"].toBool();
    const int64_t b = q.size(0), n = bank.size(0), d = q.size(1);
    const auto g = grad_out[0].to(torch::kFloat32).contiguous();
    auto grad_q = torch::empty_like(q);
    torch::Tensor grad_bank = want_bank ? torch::empty_like(bank) : torch::Tensor();
    float* gb = want_bank ? grad_bank.data_ptr<float>() : nullptr;
    if (q.is_cpu()) {
      kernels::cpu::bank_ce_backward(q.data_ptr<float>(), bank.data_ptr<float>(),
                                     target.data_ptr<int64_t>(), b, n, d, tau.data_ptr<float>(),
                                     lse.data_ptr<float>(), g.data_ptr<float>(),
                                     grad_q.data_ptr<float>(), gb, cpu_context());
    } else {
#ifdef MMFL_HAVE_CUDA
      const c10::cuda::CUDAGuard guard(q.device());
      kernels::cuda::bank_ce_backward(
          q.data_ptr<float>(), bank.data_ptr<float>(), target.data_ptr<int64_t>(), b, n, d,
          tau.data_ptr<float>(), lse.data_ptr<float>(), g.data_ptr<float>(),
          grad_q.data_ptr<float>(), gb,
          static_cast<kernels::Precision>(ctx->saved_data["precision"].toInt()), stream_of(q));
#else
      no_cuda("bank_cross_entropy");
#endif
    }
    return {grad_q, grad_bank, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

void check_same_device_fp32(const char* op, const torch::Tensor& a, const torch::Tensor& b) {
  MMFL_CHECK(a.scalar_type() == torch::kFloat32 && b.scalar_type() == torch::kFloat32, op,
             ": features must be float32, got ", a.scalar_type(), " and ", b.scalar_type());
  MMFL_CHECK(a.device() == b.device(), op, ": inputs on ", a.device(), " and ", b.device());
  MMFL_CHECK(a.is_cpu() || a.is_cuda(), op, ": unsupported device ", a.device());
}

}  // namespace

torch::Tensor bank_cross_entropy(const torch::Tensor& q, const torch::Tensor& bank,
                                 const torch::Tensor& target, double tau,
                                 kernels::Precision precision) {
  MMFL_CHECK(q.dim() == 2 && q.size(0) >= 1 && q.size(1) >= 1,
             "bank_cross_entropy: q must be [B, D] with B, D >= 1, got ", q.sizes());
  MMFL_CHECK(bank.dim() == 2 && bank.size(0) >= 1 && bank.size(1) == q.size(1),
             "bank_cross_entropy: bank must be [N, ", q.size(1), "], got ", bank.sizes());
  MMFL_CHECK(
      target.dim() == 1 && target.size(0) == q.size(0) && target.scalar_type() == torch::kInt64,
      "bank_cross_entropy: target must be int64 [", q.size(0), "], got ", target.scalar_type(), " ",
      target.sizes());
  MMFL_CHECK(target.device() == q.device(), "bank_cross_entropy: target on ", target.device(),
             ", q on ", q.device());
  MMFL_CHECK(tau > 0, "bank_cross_entropy: tau must be > 0, got ", tau);
  check_same_device_fp32("bank_cross_entropy", q, bank);
  return BankCrossEntropy::apply(q, bank, target, tau, static_cast<int64_t>(precision));
}

EnsembleResult creamfl_ensemble(const torch::Tensor& local_in, const torch::Tensor& bank_in,
                                double tau_value, kernels::EnsembleWeighting weighting,
                                kernels::Precision precision) {
  MMFL_CHECK(local_in.dim() == 3 && local_in.size(0) >= 1 && local_in.size(1) >= 1,
             "creamfl_ensemble: local must be [K, N, D] with K, N >= 1, got ", local_in.sizes());
  MMFL_CHECK(bank_in.dim() == 2 && bank_in.size(0) == local_in.size(1) &&
                 bank_in.size(1) == local_in.size(2),
             "creamfl_ensemble: bank must be [", local_in.size(1), ", ", local_in.size(2),
             "], got ", bank_in.sizes());
  MMFL_CHECK(tau_value > 0, "creamfl_ensemble: tau must be > 0, got ", tau_value);
  check_same_device_fp32("creamfl_ensemble", local_in, bank_in);
  torch::NoGradGuard no_grad;
  const auto local = local_in.contiguous(), bank = bank_in.contiguous();
  const int64_t k = local.size(0), n = local.size(1), d = local.size(2);
  const auto tau = torch::full({1}, tau_value, local.options());
  EnsembleResult r{torch::empty({n, d}, local.options()), torch::empty({k, n}, local.options())};
  if (local.is_cpu()) {
    kernels::cpu::creamfl_ensemble(local.data_ptr<float>(), bank.data_ptr<float>(), k, n, d,
                                   tau.data_ptr<float>(), weighting, r.weights.data_ptr<float>(),
                                   r.out.data_ptr<float>(), cpu_context());
  } else {
#ifdef MMFL_HAVE_CUDA
    const c10::cuda::CUDAGuard guard(local.device());
    kernels::cuda::creamfl_ensemble(local.data_ptr<float>(), bank.data_ptr<float>(), k, n, d,
                                    tau.data_ptr<float>(), weighting, r.weights.data_ptr<float>(),
                                    r.out.data_ptr<float>(), precision, stream_of(local));
#else
    no_cuda("creamfl_ensemble");
#endif
  }
  return r;
}

}  // namespace mmfl::fusion::ops
