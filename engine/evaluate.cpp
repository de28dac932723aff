#include "engine/evaluate.h"

#include <torch/nn/functional/normalization.h>

#include <algorithm>

namespace mmfl::engine {

torch::Tensor batched_features(Tower& tower, const torch::Tensor& x, int64_t batch) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> parts;
  for (int64_t b = 0; b < x.size(0); b += batch)
    parts.push_back(tower.features(x.narrow(0, b, std::min(batch, x.size(0) - b))));
  return torch::cat(parts);
}

torch::Tensor sharded_features(Tower& tower, const torch::Tensor& x, int64_t batch,
                               comm::Communicator& c) {
  if (c.size() == 1) return batched_features(tower, x, batch);
  // Whole batches per rank (the same batches as one rank computes, so the same numbers).
  const int64_t batches = (x.size(0) + batch - 1) / batch;
  const int64_t lo = batches * c.rank() / c.size(), hi = batches * (c.rank() + 1) / c.size();
  const int64_t r0 = std::min(lo * batch, x.size(0)), r1 = std::min(hi * batch, x.size(0));
  torch::Tensor mine;
  if (r1 > r0) {
    mine = batched_features(tower, x.narrow(0, r0, r1 - r0), batch);
  } else {  // no batch here: an empty block of the feature width
    torch::NoGradGuard no_grad;
    mine = tower.features(x.narrow(0, 0, 1)).narrow(0, 0, 0);
  }
  return torch::cat(c.all_gather(mine.contiguous()));
}

namespace {

double accuracy(Tower& tower, const torch::Tensor& feats, const torch::Tensor& labels) {
  return tower.logits(feats).argmax(1).eq(labels).to(torch::kFloat64).mean().item<double>();
}

// Every row the same direction (up to rounding): the tower maps all inputs to one point of the
// unit sphere, so retrieval by cosine similarity cannot tell any two inputs apart.
bool collapsed(const torch::Tensor& feats) {
  if (feats.size(0) < 2) return false;
  namespace F = torch::nn::functional;
  const auto unit = F::normalize(feats.to(torch::kFloat64), F::NormalizeFuncOptions().dim(1));
  return (unit - unit[0]).abs().max().item<double>() <= 1e-4;
}

}  // namespace

void recall_at(const torch::Tensor& sim, double out[3]) {
  // Rank of the matching item = how many other items score at least as high as it.
  const auto diag = sim.diagonal().unsqueeze(1);
  const auto rank = sim.ge(diag).sum(1) - 1;  // the match itself is >= itself (unless NaN)
  const auto valid = sim.diagonal().isnan().logical_not();
  const int64_t ks[3] = {1, 5, 10};
  for (int i = 0; i < 3; ++i)
    out[i] = rank.lt(ks[i]).logical_and(valid).to(torch::kFloat64).mean().item<double>();
}

EvalResult evaluate(GlobalModel& model, const FederatedData& data, int64_t batch_size) {
  torch::NoGradGuard no_grad;
  model.image->eval();
  model.text->eval();
  EvalResult r;
  auto& world = comm::world();
  const auto fi = sharded_features(*model.image, data.test.images, batch_size, world);
  const auto ft = sharded_features(*model.text, data.test.tokens, batch_size, world);
  r.image_acc = accuracy(*model.image, fi, data.test.labels);
  r.text_acc = accuracy(*model.text, ft, data.test.labels);
  r.finite = torch::isfinite(fi).all().item<bool>() && torch::isfinite(ft).all().item<bool>();
  r.collapsed = r.finite && (collapsed(fi) || collapsed(ft));
  namespace F = torch::nn::functional;
  const auto opts = F::NormalizeFuncOptions().dim(1);
  const auto ri = F::normalize(fi.index_select(0, data.retrieval), opts);
  const auto rt = F::normalize(ft.index_select(0, data.retrieval), opts);
  const auto sim = torch::matmul(ri, rt.t());
  recall_at(sim, r.i2t);
  recall_at(sim.t(), r.t2i);
  return r;
}

}  // namespace mmfl::engine
