// Server-side aggregation strategies. FedAvg: each tower is the sample-weighted mean of the
// towers sent by the clients that hold its modality; a tower no sampled client holds is kept.
#pragma once

#include <string>
#include <vector>

#include "engine/executor.h"
#include "engine/model.h"

namespace mmfl::engine {

struct AggregateReport {
  int64_t image_clients = 0;  // clients whose image tower entered the average
  int64_t text_clients = 0;
  std::vector<int64_t> skipped;  // client ids whose update held NaN/Inf and was dropped
};

class Strategy {
 public:
  virtual ~Strategy() = default;
  virtual std::string name() const = 0;
  virtual AggregateReport aggregate(const std::vector<ClientUpdate>& updates,
                                    GlobalModel& global) = 0;
};

class FedAvg : public Strategy {
 public:
  std::string name() const override { return "fedavg"; }
  AggregateReport aggregate(const std::vector<ClientUpdate>& updates, GlobalModel& global) override;
};

}  // namespace mmfl::engine
