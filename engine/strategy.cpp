#include "engine/strategy.h"

#include "fusion/ops/aggregate.h"
#include "mmfl/error.h"

namespace mmfl::engine {

namespace {

// Weighted mean of one tower over the updates that carry it; returns how many were averaged.
int64_t average_tower(const std::vector<ClientUpdate>& updates, torch::Tensor ClientUpdate::*field,
                      Tower& tower, std::vector<int64_t>& skipped) {
  std::vector<torch::Tensor> rows;
  std::vector<float> weights;
  std::vector<int64_t> ids;
  double total = 0;
  for (const auto& u : updates) {
    if (!(u.*field).defined()) continue;
    rows.push_back(u.*field);
    weights.push_back(float(u.num_samples));
    ids.push_back(u.client_id);
    total += double(u.num_samples);
  }
  if (rows.empty()) return 0;
  for (auto& w : weights) w = float(double(w) / total);
  const auto stacked = torch::stack(rows);
  const auto w = torch::tensor(weights, stacked.options());
  const auto r = fusion::ops::weighted_sum_finite(stacked, w);
  if (r.skipped > 0) {
    const auto bad = r.bad.cpu();
    for (size_t k = 0; k < ids.size(); ++k)
      if (bad[int64_t(k)].item<bool>()) skipped.push_back(ids[k]);
  }
  // Every update non-finite: keep the tower as it was.
  if (r.skipped == int64_t(rows.size())) return 0;
  tower.load_flat(r.out);
  return int64_t(rows.size()) - r.skipped;
}

}  // namespace

AggregateReport FedAvg::aggregate(const std::vector<ClientUpdate>& updates, GlobalModel& global) {
  AggregateReport rep;
  rep.image_clients = average_tower(updates, &ClientUpdate::image, *global.image, rep.skipped);
  rep.text_clients = average_tower(updates, &ClientUpdate::text, *global.text, rep.skipped);
  return rep;
}

}  // namespace mmfl::engine
