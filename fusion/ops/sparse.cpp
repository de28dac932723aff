#include "fusion/ops/sparse.h"

#include <cmath>

#include "fusion/ops/cpu_context.h"
#include "fusion/ops/device.h"
#include "mmfl/error.h"
#include "mmfl/kernels/sparse.h"

namespace mmfl::fusion::ops {

TopkPacked topk_by_magnitude(const torch::Tensor& x_in, int64_t k) {
  MMFL_CHECK(x_in.dim() == 2, "topk_by_magnitude: x must be [C, n], got shape ", x_in.sizes());
  MMFL_CHECK(x_in.scalar_type() == torch::kFloat32, "topk_by_magnitude: x must be float32, got ",
             x_in.scalar_type());
  MMFL_CHECK(x_in.is_cpu() || x_in.is_cuda(), "topk_by_magnitude: unsupported device ",
             x_in.device());
  const int64_t rows = x_in.size(0), n = x_in.size(1);
  MMFL_CHECK(n <= kernels::kSparseMaxN, "topk_by_magnitude: rows of ", n,
             " values are too long for int32 indices (at most ", kernels::kSparseMaxN, ")");
  MMFL_CHECK(k >= 0 && k <= n, "topk_by_magnitude: k must be in [0, n] = [0, ", n, "], got ", k);
  const auto x = x_in.contiguous();
  TopkPacked r;
  r.indices = torch::empty({rows, k}, x.options().dtype(torch::kInt32));
  r.values = torch::empty({rows, k}, x.options());
  r.residual = torch::empty({rows, n}, x.options());
  if (rows == 0 || n == 0) return r;
  if (x.is_cpu()) {
    kernels::cpu::topk_by_magnitude(x.data_ptr<float>(), rows, n, k, r.indices.data_ptr<int32_t>(),
                                    r.values.data_ptr<float>(), r.residual.data_ptr<float>(),
                                    cpu_context());
    return r;
  }
#ifdef MMFL_HAVE_CUDA
  const c10::cuda::CUDAGuard guard(x.device());
  kernels::cuda::topk_by_magnitude(x.data_ptr<float>(), rows, n, k, r.indices.data_ptr<int32_t>(),
                                   r.values.data_ptr<float>(), r.residual.data_ptr<float>(),
                                   stream_of(x));
  return r;
#else
  no_cuda("topk_by_magnitude");
#endif
}

torch::Tensor sparse_weighted_sum(const torch::Tensor& indices_in, const torch::Tensor& values_in,
                                  const torch::Tensor& weights_in, int64_t n) {
  const char* fn = "sparse_weighted_sum";
  MMFL_CHECK(indices_in.dim() == 2, fn, ": indices must be [C, k], got shape ", indices_in.sizes());
  MMFL_CHECK(values_in.sizes() == indices_in.sizes(), fn,
             ": values must have the shape of indices ", indices_in.sizes(), ", got ",
             values_in.sizes());
  MMFL_CHECK(weights_in.dim() == 1 && weights_in.size(0) == indices_in.size(0), fn,
             ": weights must be [C] = [", indices_in.size(0), "], got shape ", weights_in.sizes());
  MMFL_CHECK(indices_in.scalar_type() == torch::kInt32, fn, ": indices must be int32, got ",
             indices_in.scalar_type());
  MMFL_CHECK(
      values_in.scalar_type() == torch::kFloat32 && weights_in.scalar_type() == torch::kFloat32, fn,
      ": values and weights must be float32, got ", values_in.scalar_type(), " and ",
      weights_in.scalar_type());
  MMFL_CHECK(
      indices_in.device() == values_in.device() && indices_in.device() == weights_in.device(), fn,
      ": indices, values and weights must be on one device, got ", indices_in.device(), ", ",
      values_in.device(), ", ", weights_in.device());
  MMFL_CHECK(indices_in.is_cpu() || indices_in.is_cuda(), fn, ": unsupported device ",
             indices_in.device());
  MMFL_CHECK(n >= 0 && n <= kernels::kSparseMaxN, fn, ": n must be in [0, ", kernels::kSparseMaxN,
             "], got ", n);
  const auto indices = indices_in.contiguous();
  const auto values = values_in.contiguous();
  const auto weights = weights_in.contiguous();
  const int64_t rows = indices.size(0), k = indices.size(1);
  auto out = torch::empty({n}, values.options());
  if (indices.is_cpu()) {
    kernels::cpu::sparse_weighted_sum(indices.data_ptr<int32_t>(), values.data_ptr<float>(),
                                      weights.data_ptr<float>(), rows, k, n, out.data_ptr<float>(),
                                      kernels::Accumulator::kFloat64, cpu_context());
    return out;
  }
#ifdef MMFL_HAVE_CUDA
  const c10::cuda::CUDAGuard guard(indices.device());
  // The kernel cannot report bad indices without a sync: check here, on the device (one sync).
  if (rows > 0 && k > 0) {
    auto bad = (indices < 0) | (indices >= n);
    if (k > 1) bad.slice(1, 1).logical_or_(indices.slice(1, 1) <= indices.slice(1, 0, k - 1));
    if (bad.any().item<bool>()) {
      const auto at = bad.nonzero()[0].cpu();
      const int64_t c = at[0].item<int64_t>(), i = at[1].item<int64_t>();
      const auto row = indices[c].cpu();
      const int32_t* idx = row.data_ptr<int32_t>();
      if (idx[i] < 0 || idx[i] >= n)
        MMFL_FAIL(fn, ": indices[", c, ", ", i, "] = ", idx[i], " is outside [0, n) = [0, ", n,
                  ") (client ", c, ")");
      MMFL_FAIL(fn, ": indices of row ", c, " (client ", c, ") must be strictly ascending, but ",
                "indices[", c, ", ", i, "] = ", idx[i], " follows ", idx[i - 1]);
    }
  }
  kernels::cuda::sparse_weighted_sum(indices.data_ptr<int32_t>(), values.data_ptr<float>(),
                                     weights.data_ptr<float>(), rows, k, n, out.data_ptr<float>(),
                                     kernels::Accumulator::kFloat64, stream_of(indices));
  return out;
#else
  no_cuda(fn);
#endif
}

int64_t topk_count(double density_or_count, int64_t n, const std::string& what) {
  const double d = density_or_count;
  MMFL_CHECK(n >= 1, what, ": the delta has n = ", n, " values; top-k needs n >= 1");
  MMFL_CHECK(std::isfinite(d) && d > 0.0, what,
             ": must be a density in (0, 1] (a fraction of the values) or a count >= 1, got ", d);
  if (d <= 1.0) {
    const auto k = static_cast<int64_t>(std::llround(d * double(n)));
    return k < 1 ? 1 : k;
  }
  MMFL_CHECK(d == std::floor(d), what, ": ", d,
             " is above 1, so it is read as a count of values, and a count must be an integer "
             "(or give a density in (0, 1])");
  MMFL_CHECK(d <= double(n), what, ": count ", static_cast<int64_t>(d),
             " exceeds the number of values n = ", n);
  return static_cast<int64_t>(d);
}

}  // namespace mmfl::fusion::ops
