#include "fusion/lora/lora.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/nn/functional/dropout.h>
#include <torch/nn/functional/linear.h>
#include <torch/nn/init.h>

#include <algorithm>
#include <cmath>
#include <memory>

#include "fusion/ops/multi_lora.h"
#include "mmfl/error.h"

namespace mmfl::fusion {

namespace F = torch::nn::functional;

namespace {

uint64_t mix(uint64_t x) {  // splitmix64's finalizer
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

LoraLinearImpl::LoraLinearImpl(int64_t in, int64_t out, bool with_bias)
    : in_features(in), out_features(out) {
  MMFL_CHECK(in >= 1 && out >= 1, "LoraLinear: sizes must be positive, got in ", in, ", out ", out);
  weight = register_parameter("weight", torch::empty({out, in}));
  // nn.Linear's initialization, for layers that are not loaded from a checkpoint.
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
  if (with_bias) {
    const double bound = 1.0 / std::sqrt(double(in));
    bias = register_parameter("bias", torch::empty({out}).uniform_(-bound, bound));
  }
}

torch::Tensor LoraLinearImpl::forward(const torch::Tensor& x) {
  if (has_cohort()) return forward_cohort(x);
  auto y = F::linear(x, weight, bias);
  if (!has_adapter()) return y;
  const auto xd =
      dropout > 0 ? F::dropout(x, F::DropoutFuncOptions().p(dropout).training(is_training())) : x;
  return y + scale * F::linear(F::linear(xd, lora_A), lora_B);
}

void LoraLinearImpl::set_cohort(torch::Tensor A, torch::Tensor B, std::vector<int64_t> offsets) {
  MMFL_CHECK(has_adapter(),
             "LoraLinear::set_cohort: the layer has no adapter (add_adapter or "
             "apply_lora first: its rank and alpha give the cohort's scale)");
  const int64_t rank = lora_A.size(0);
  MMFL_CHECK(A.dim() == 3 && A.size(1) == rank && A.size(2) == in_features,
             "LoraLinear::set_cohort: A must be [clients, ", rank, ", ", in_features,
             "] (the layer's rank and in_features), got ", A.sizes());
  MMFL_CHECK(
      B.dim() == 3 && B.size(0) == A.size(0) && B.size(1) == out_features && B.size(2) == rank,
      "LoraLinear::set_cohort: B must be [", A.size(0), ", ", out_features, ", ", rank, "], got ",
      B.sizes());
  MMFL_CHECK(static_cast<int64_t>(offsets.size()) == A.size(0) + 1,
             "LoraLinear::set_cohort: offsets must hold clients + 1 = ", A.size(0) + 1,
             " values, got ", offsets.size());
  MMFL_CHECK(A.device() == weight.device() && B.device() == weight.device(),
             "LoraLinear::set_cohort: A and B must be on the layer's device ", weight.device(),
             ", got ", A.device(), " and ", B.device());
  cohort_A_ = std::move(A);
  cohort_B_ = std::move(B);
  cohort_offsets_ = std::move(offsets);
}

void LoraLinearImpl::clear_cohort() {
  cohort_A_ = torch::Tensor();
  cohort_B_ = torch::Tensor();
  cohort_offsets_.clear();
}

torch::Tensor LoraLinearImpl::forward_cohort(const torch::Tensor& x) {
  MMFL_CHECK(!(dropout > 0 && is_training()),
             "LoraLinear: adapter dropout (lora.dropout = ", dropout,
             ") is not supported in cohort mode; set it to 0 or train without a cohort");
  MMFL_CHECK(x.dim() >= 2 && x.size(-1) == in_features,
             "LoraLinear (cohort mode): x must be [rows, ..., ", in_features, "], got ", x.sizes());
  const int64_t rows = x.size(0);
  const int64_t per_row = x.numel() / std::max<int64_t>(rows, 1) / in_features;
  MMFL_CHECK(cohort_offsets_.back() == rows, "LoraLinear (cohort mode): the offsets end at ",
             cohort_offsets_.back(), " but x has ", rows, " rows in its leading dimension");
  // Offsets count leading rows; the op sees rows * per_row flattened ones.
  std::vector<int64_t> flat(cohort_offsets_.size());
  for (size_t c = 0; c < flat.size(); ++c)
    flat[c] = cohort_offsets_[c] * per_row;
  auto y = ops::multi_lora_linear(x.reshape({-1, in_features}), weight, bias, cohort_A_, cohort_B_,
                                  flat, scale);
  auto shape = x.sizes().vec();
  shape.back() = out_features;
  return y.reshape(shape);
}

void LoraLinearImpl::add_adapter(int64_t rank, double alpha, double p, uint64_t seed) {
  MMFL_CHECK(!has_adapter(), "LoraLinear: the layer has an adapter already");
  MMFL_CHECK(rank >= 1 && rank <= std::min(in_features, out_features), "lora.rank = ", rank,
             " is out of range [1, ", std::min(in_features, out_features), "] for a ", in_features,
             " -> ", out_features, " layer");
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const double bound = 1.0 / std::sqrt(double(in_features));
  auto a = torch::empty({rank, in_features}, torch::kFloat32);
  a.uniform_(-bound, bound, gen);
  const auto opts = weight.options().requires_grad(false);
  lora_A = register_parameter("lora_A", a.to(opts.device()));
  lora_B = register_parameter("lora_B", torch::zeros({out_features, rank}, opts));
  scale = alpha / double(rank);
  dropout = p;
}

torch::Tensor LoraLinearImpl::merged_weight() const {
  torch::NoGradGuard no_grad;
  if (!has_adapter()) return weight.clone();
  return weight + scale * torch::mm(lora_B, lora_A);
}

void LoraLinearImpl::merge() {
  if (!has_adapter()) return;
  torch::NoGradGuard no_grad;
  weight.add_(torch::mm(lora_B, lora_A), scale);
  lora_B.zero_();
}

std::vector<std::string> apply_lora(torch::nn::Module& root, const LoraOptions& o) {
  validate_lora_options(o);
  std::vector<std::pair<std::string, std::shared_ptr<LoraLinearImpl>>> linears;
  for (const auto& item : root.named_modules("", /*include_self=*/false))
    if (auto l = std::dynamic_pointer_cast<LoraLinearImpl>(item.value()))
      linears.emplace_back(item.key(), l);
  MMFL_CHECK(!linears.empty(), "lora: the model has no linear layer that can take an adapter");
  std::vector<bool> chosen(linears.size(), false);
  for (const auto& pattern : o.targets) {
    bool any = false;
    for (size_t i = 0; i < linears.size(); ++i)
      if (lora_target_matches(linears[i].first, pattern)) chosen[i] = any = true;
    if (!any) {
      std::string names;
      for (size_t i = 0; i < linears.size() && i < 8; ++i)
        names += (i ? ", " : "") + linears[i].first;
      MMFL_FAIL("config key 'lora.targets': '", pattern,
                "' matches no linear layer; the model has ", linears.size(), " (", names,
                linears.size() > 8 ? ", ..." : "",
                "); use a layer name (query), a glob (*.attention.*) or all-linear");
    }
  }
  for (auto& p : root.parameters())
    p.set_requires_grad(false);
  std::vector<std::string> out;
  for (size_t i = 0; i < linears.size(); ++i) {
    if (!chosen[i]) continue;
    linears[i].second->add_adapter(o.rank, o.alpha, o.dropout, mix(o.seed ^ mix(i)));
    linears[i].second->lora_A.set_requires_grad(true);
    linears[i].second->lora_B.set_requires_grad(true);
    out.push_back(linears[i].first);
  }
  return out;
}

std::vector<torch::Tensor> lora_parameters(torch::nn::Module& root) {
  std::vector<torch::Tensor> out;
  for (const auto& m : root.modules(/*include_self=*/true))
    if (auto l = std::dynamic_pointer_cast<LoraLinearImpl>(m); l && l->has_adapter()) {
      out.push_back(l->lora_A);
      out.push_back(l->lora_B);
    }
  return out;
}

std::vector<LoraLinear> adapted_layers(torch::nn::Module& root) {
  std::vector<LoraLinear> out;
  for (const auto& m : root.modules(/*include_self=*/true))
    if (auto l = std::dynamic_pointer_cast<LoraLinearImpl>(m); l && l->has_adapter())
      out.emplace_back(l);
  return out;
}

void merge_lora(torch::nn::Module& root) {
  for (const auto& m : root.modules(/*include_self=*/true))
    if (auto l = std::dynamic_pointer_cast<LoraLinearImpl>(m)) l->merge();
}

}  // namespace mmfl::fusion
