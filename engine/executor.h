// Local training of a round's cohort behind one interface, so that later executors can train a
// whole cohort at once (stacked weights, many GPUs) without touching the round loop.
#pragma once

#include <torch/optim/optimizer.h>
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

// The supervised loss of one batch of `split` rows for a client of `kind` holding `towers`:
// cross entropy of each held tower's class head, plus (image and text held) the symmetric
// InfoNCE of the two towers' features weighted by `t.contrastive_weight`.
torch::Tensor supervised_loss(GlobalModel& towers, ClientKind kind, const PairedSplit& split,
                              const torch::Tensor& rows, const TrainConfig& t);

// One epoch's batches of `indices` (rows of a split) in a seeded random order, on `device`.
std::vector<torch::Tensor> shuffled_batches(const std::vector<int64_t>& indices, int64_t batch_size,
                                            std::mt19937_64& rng, const torch::Device& device);

// One optimizer step on `loss`: backward, gradient clipping (t.grad_clip > 0), step.
void optimizer_step(torch::optim::Optimizer& opt, const torch::Tensor& loss, const TrainConfig& t);

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const TrainConfig& t, double lr,
                                                        std::vector<torch::Tensor> params);

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
  // `global_image` / `global_text`: the global towers flattened once per round.
  ClientUpdate train_client(const ClientSpec& spec, const torch::Tensor& global_image,
                            const torch::Tensor& global_text, int64_t round);

  const Config& cfg_;
  const FederatedData& data_;
  GlobalModel work_;
};

}  // namespace mmfl::engine
