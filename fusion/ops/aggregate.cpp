#include "fusion/ops/aggregate.h"

#include "fusion/ops/cpu_context.h"
#include "fusion/ops/device.h"
#include "mmfl/error.h"

namespace mmfl::fusion::ops {

namespace {

void check_args(const torch::Tensor& updates, const torch::Tensor& weights) {
  MMFL_CHECK(updates.dim() == 2 && updates.size(0) >= 1,
             "weighted_sum: updates must be [K, n] "
             "with K >= 1, got shape ",
             updates.sizes());
  MMFL_CHECK(weights.dim() == 1 && weights.size(0) == updates.size(0),
             "weighted_sum: weights "
             "must be [K] = [",
             updates.size(0), "], got shape ", weights.sizes());
  MMFL_CHECK(updates.scalar_type() == torch::kFloat32 && weights.scalar_type() == torch::kFloat32,
             "weighted_sum: updates and weights must be float32, got ", updates.scalar_type(),
             " and ", weights.scalar_type());
  MMFL_CHECK(updates.device() == weights.device(), "weighted_sum: updates on ", updates.device(),
             " but weights on ", weights.device());
  MMFL_CHECK(updates.is_cpu() || updates.is_cuda(), "weighted_sum: unsupported device ",
             updates.device());
}

}  // namespace

torch::Tensor weighted_sum(const torch::Tensor& updates_in, const torch::Tensor& weights_in,
                           kernels::Accumulator acc) {
  check_args(updates_in, weights_in);
  const auto updates = updates_in.contiguous();
  const auto weights = weights_in.contiguous();
  const int64_t k = updates.size(0), n = updates.size(1);
  auto out = torch::empty({n}, updates.options());
  if (updates.is_cpu()) {
    kernels::cpu::weighted_sum(updates.data_ptr<float>(), weights.data_ptr<float>(), k, n,
                               out.data_ptr<float>(), acc, cpu_context());
    return out;
  }
#ifdef MMFL_HAVE_CUDA
  const c10::cuda::CUDAGuard guard(updates.device());
  kernels::cuda::weighted_sum(updates.data_ptr<float>(), weights.data_ptr<float>(), k, n,
                              out.data_ptr<float>(), acc, stream_of(updates));
  return out;
#else
  no_cuda("weighted_sum");
#endif
}

FiniteSum weighted_sum_finite(const torch::Tensor& updates_in, const torch::Tensor& weights_in,
                              kernels::Accumulator acc) {
  check_args(updates_in, weights_in);
  const auto updates = updates_in.contiguous();
  const auto weights = weights_in.contiguous();
  const int64_t k = updates.size(0), n = updates.size(1);
  FiniteSum r;
  r.out = torch::empty({n}, updates.options());
  auto bad = torch::empty({k}, updates.options().dtype(torch::kUInt8));
  if (updates.is_cpu()) {
    r.skipped = kernels::cpu::weighted_sum_finite(
        updates.data_ptr<float>(), weights.data_ptr<float>(), k, n, r.out.data_ptr<float>(),
        bad.data_ptr<uint8_t>(), acc, cpu_context());
    r.bad = bad.to(torch::kBool);
    return r;
  }
#ifdef MMFL_HAVE_CUDA
  const c10::cuda::CUDAGuard guard(updates.device());
  kernels::cuda::weighted_sum_finite(updates.data_ptr<float>(), weights.data_ptr<float>(), k, n,
                                     r.out.data_ptr<float>(), bad.data_ptr<uint8_t>(), acc,
                                     stream_of(updates));
  r.bad = bad.to(torch::kBool);
  r.skipped = r.bad.sum().item<int64_t>();  // one sync per aggregation, K bytes
  return r;
#else
  no_cuda("weighted_sum_finite");
#endif
}

torch::Tensor weighted_sum_rows(const std::vector<torch::Tensor>& rows,
                                const std::vector<float>& weights, kernels::Accumulator acc,
                                bool unrounded) {
  MMFL_CHECK(!rows.empty() && rows.size() == weights.size(), "weighted_sum_rows: ", rows.size(),
             " rows but ", weights.size(), " weights (need the same count, at least 1)");
  const auto n = rows[0].numel();
  for (size_t k = 0; k < rows.size(); ++k) {
    const auto& r = rows[k];
    MMFL_CHECK(r.scalar_type() == torch::kFloat32 && r.is_contiguous() && r.numel() == n &&
                   r.device() == rows[0].device(),
               "weighted_sum_rows: row ", k, " must be contiguous float32 of ", n, " elements on ",
               rows[0].device(), ", got ", r.scalar_type(), " ", r.sizes(), " on ", r.device());
  }
  if (!rows[0].is_cpu()) {
    MMFL_CHECK(!unrounded, "weighted_sum_rows: unrounded fp64 sums are computed on the CPU only");
    const auto stacked = torch::stack(rows);
    return weighted_sum(stacked, torch::tensor(weights, stacked.options()), acc);
  }
  std::vector<const float*> ptrs;
  for (const auto& r : rows)
    ptrs.push_back(r.data_ptr<float>());
  const auto k = int64_t(rows.size());
  if (unrounded) {
    auto out = torch::empty({n}, rows[0].options().dtype(torch::kFloat64));
    kernels::cpu::weighted_sum_rows_f64(ptrs.data(), weights.data(), k, n, out.data_ptr<double>(),
                                        cpu_context());
    return out;
  }
  auto out = torch::empty({n}, rows[0].options());
  kernels::cpu::weighted_sum_rows(ptrs.data(), weights.data(), k, n, out.data_ptr<float>(), acc,
                                  cpu_context());
  return out;
}

bool all_finite(const torch::Tensor& t) {
  MMFL_CHECK(t.scalar_type() == torch::kFloat32, "all_finite: need float32, got ", t.scalar_type());
  if (!t.is_cpu()) return torch::isfinite(t).all().item<bool>();
  const auto c = t.contiguous();
  return kernels::cpu::all_finite(c.data_ptr<float>(), c.numel());
}

}  // namespace mmfl::fusion::ops
