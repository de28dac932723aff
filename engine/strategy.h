// Strategies own a round: what clients receive, how they train, what they send back and how the
// server combines it. FedAvg (weights) lives here; CreamFL (representations) in creamfl.h.
#pragma once

#include <nlohmann/json.hpp>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/checkpoint.h"
#include "engine/comm/distribute.h"
#include "engine/data.h"
#include "engine/evaluate.h"
#include "engine/executor.h"
#include "engine/model.h"

namespace mmfl::engine {

struct RoundStats {
  double train_loss = 0;  // mean over the cohort of the clients' mean training loss
  int64_t clients = 0;
  int64_t bytes_up = 0;          // what the clients sent (weights or representations)
  int64_t bytes_down = 0;        // what the server sent them
  std::vector<int64_t> skipped;  // client ids whose update was dropped (NaN/Inf)
  nlohmann::json extra = nlohmann::json::object();  // strategy-specific metrics
};

class Strategy {
 public:
  virtual ~Strategy() = default;
  virtual std::string name() const = 0;
  virtual RoundStats run_round(const std::vector<const ClientSpec*>& cohort, int64_t round) = 0;
  // Evaluates the model the strategy produces (FedAvg: the global towers; CreamFL: the server).
  virtual EvalResult evaluate() = 0;
  virtual void save(Checkpoint& ck) const = 0;
  virtual void load(const Checkpoint& ck) = 0;
  virtual nlohmann::json describe() const = 0;  // model sizes etc. for report.json
  // Clients whose state this rank keeps (each rank keeps the clients it owns); none for a
  // stateless strategy. report.json shows the sum over the ranks.
  virtual std::optional<int64_t> clients_with_state() const { return std::nullopt; }
};

// Builds the strategy `cfg.strategy` names; models are created on the data's device.
std::unique_ptr<Strategy> make_strategy(const Config& cfg, const FederatedData& data,
                                        const std::string& run_dir);

struct AggregateReport {
  int64_t image_clients = 0;  // clients whose image tower entered the average
  int64_t text_clients = 0;
  std::vector<int64_t> skipped;  // client ids whose update held NaN/Inf and was dropped
};

// FedAvg's server step: each tower becomes the sample-weighted mean of the dense groups "image"
// and "text" sent by the clients that hold its modality; a tower that no client sent is kept,
// and a row holding NaN/Inf is left out (the others' weights renormalized). With `c`, `updates`
// are this rank's and the means span every rank's (partial sums, one all-reduce); the result is
// the same on every rank.
class FedAvg {
 public:
  static AggregateReport aggregate(const std::vector<Update>& updates, GlobalModel& global,
                                   comm::Communicator* c = nullptr);
};

// FedAvg's local task: every client starts from the global towers of the modalities it holds
// (flattened once per round) and sends them back trained as dense groups "image" and "text".
class FedAvgTask : public LocalTask {
 public:
  FedAvgTask(const Config& cfg, const GlobalModel& global);
  ClientArch arch(ClientKind kind) const override;
  std::unique_ptr<ClientJob> job(const ClientSpec& spec) override;

 private:
  const Config& cfg_;
  torch::Tensor image_, text_;
};

// Accounting common to every strategy: clients, mean loss and bytes from the updates.
RoundStats round_stats(const std::vector<Update>& updates);
RoundStats round_stats(const std::vector<comm::UpdateRecord>& records);

class FedAvgStrategy : public Strategy {
 public:
  FedAvgStrategy(const Config& cfg, const FederatedData& data);
  std::string name() const override { return "fedavg"; }
  RoundStats run_round(const std::vector<const ClientSpec*>& cohort, int64_t round) override;
  EvalResult evaluate() override;
  void save(Checkpoint& ck) const override;
  void load(const Checkpoint& ck) override;
  nlohmann::json describe() const override;

 private:
  const Config& cfg_;
  const FederatedData& data_;
  GlobalModel global_;
  std::unique_ptr<Executor> executor_;
};

}  // namespace mmfl::engine
