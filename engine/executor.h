// Local training of a round's cohort behind one interface, so that later executors can train a
// whole cohort at once (stacked weights, many GPUs) without touching the round loop.
#pragma once

#include <torch/types.h>

#include <memory>
#include <vector>

#include "engine/config.h"
#include "engine/data.h"
#include "engine/model.h"
#include "engine/population.h"

namespace mmfl::engine {

// What a client sends back: its trained towers as flat vectors (undefined for a modality it
// does not hold), the sample count that weights it, and accounting.
struct ClientUpdate {
  int64_t client_id = 0;
  ClientKind kind = ClientKind::kPaired;
  int64_t num_samples = 0;
  torch::Tensor image;  // [P_img] or undefined
  torch::Tensor text;   // [P_txt] or undefined
  double loss = 0;      // mean training loss over the client's steps
  int64_t bytes_up = 0;
  int64_t bytes_down = 0;
};

class Executor {
 public:
  virtual ~Executor() = default;
  virtual std::vector<ClientUpdate> train(const std::vector<const ClientSpec*>& cohort,
                                          const GlobalModel& global, int64_t round) = 0;
};

// Trains the cohort's clients one after another on the run's device, reusing one work tower per
// modality (loaded from the global model for each client, never aliasing it).
class SequentialExecutor : public Executor {
 public:
  SequentialExecutor(const Config& cfg, const FederatedData& data);
  std::vector<ClientUpdate> train(const std::vector<const ClientSpec*>& cohort,
                                  const GlobalModel& global, int64_t round) override;

 private:
  ClientUpdate train_client(const ClientSpec& spec, const GlobalModel& global, int64_t round);

  const Config& cfg_;
  const FederatedData& data_;
  GlobalModel work_;
};

}  // namespace mmfl::engine
