// Executors own every local training loop of a round's cohort. A strategy supplies only what
// differs through a LocalTask: where each client starts, an extra pass with its own loss terms
// (CreamFL's public-set regularizer), what the client sends and what it keeps. Three executors:
//   sequential  one client after another (the reference)
//   parallel    clients spread over the CPU cores, intra-op threads divided among them
//   batched     clients of one architecture trained as one stacked model (batched.cpp)
// All three give the same per-client updates for the same seed (exactly where the arithmetic is
// the same; otherwise within the tolerance the tests state).
#pragma once

#include <torch/optim/optimizer.h>
#include <torch/types.h>

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "engine/config.h"
#include "engine/data.h"
#include "engine/model.h"
#include "engine/population.h"
#include "engine/update.h"

namespace mmfl::engine {

enum class Modality { kImage, kText };

// The encoders of a client (clients with equal archs can share stacked weights).
struct ClientArch {
  modalities::ImageEncoderConfig image;
  modalities::TextEncoderConfig text;
};
std::string arch_key(const ClientArch& a);  // equal keys <=> same architecture

// A client's model as the executor holds it, for a strategy's hooks.
class ClientView {
 public:
  virtual ~ClientView() = default;
  // Features [N, D] of all rows of `x` through the encoder of `m`, without gradients.
  virtual torch::Tensor features(Modality m, const torch::Tensor& x) = 0;
  // The tower's parameters as one flat fp32 vector (Tower::flat's layout).
  virtual torch::Tensor flat(Modality m) = 0;
  // The resident tower itself, where the executor holds one per client (nullptr for stacked
  // clients): for state beyond the trainable weights (a merged pretrained base).
  virtual Tower* tower(Modality /*m*/) { return nullptr; }
};

// One client's local training as a strategy defines it; an executor drives it.
class ClientJob {
 public:
  virtual ~ClientJob() = default;
  Payload down;               // what the server sends the client (its bytes are counted)
  torch::Tensor image, text;  // the flat weights it starts from; undefined: modality not held

  // Called once the start weights are loaded.
  virtual void begin(ClientView& /*model*/) {}
  // Loss of the extra pass on the encoder features (raw, [B, D]; undefined for a modality the
  // client does not hold) of `rows` of the extra pass's split.
  virtual torch::Tensor extra_loss(const torch::Tensor& z_img, const torch::Tensor& z_txt,
                                   const torch::Tensor& rows);
  // After training: fill `u.up` with what the client sends and keep what persists; set
  // `u.diverged` (and send nothing) when the result is not finite.
  virtual void finish(ClientView& model, Update& u) = 0;
};

// A pass over a second split after each private epoch, each client in its own seeded order.
struct ExtraPass {
  const PairedSplit* split = nullptr;
  int64_t batch_size = 0;
};

class LocalTask {
 public:
  virtual ~LocalTask() = default;
  virtual ClientArch arch(ClientKind kind) const = 0;
  // Thread-safe: the parallel executor calls it from several threads.
  virtual std::unique_ptr<ClientJob> job(const ClientSpec& spec) = 0;
  virtual std::optional<ExtraPass> extra_pass() const { return std::nullopt; }
};

class Executor {
 public:
  virtual ~Executor() = default;
  virtual std::string name() const = 0;
  // One update per cohort member, in cohort order.
  virtual std::vector<Update> train(const std::vector<const ClientSpec*>& cohort, LocalTask& task,
                                    int64_t round) = 0;
};

// Trains one client at a time on resident towers it keeps per architecture: the sequential
// executor's loop, also each parallel worker's, and the batched executor's fallback for
// architectures it cannot stack.
class ClientTrainer {
 public:
  ClientTrainer(const Config& cfg, const FederatedData& data) : cfg_(cfg), data_(data) {}
  Update run(const ClientSpec& spec, LocalTask& task, int64_t round);
  // Resident towers of architecture `a` (created on first use).
  GlobalModel& model_for(const ClientArch& a);

 private:
  const Config& cfg_;
  const FederatedData& data_;
  std::map<std::string, GlobalModel> models_;
};

// ClientView over one set of resident towers (features in batches of `batch`).
class TowerView : public ClientView {
 public:
  TowerView(GlobalModel& m, int64_t batch) : m_(m), batch_(batch) {}
  torch::Tensor features(Modality mod, const torch::Tensor& x) override;
  torch::Tensor flat(Modality mod) override;
  Tower* tower(Modality mod) override;

 private:
  GlobalModel& m_;
  int64_t batch_;
};

// `executor.kind`: auto = batched on a GPU, parallel on the CPU.
std::unique_ptr<Executor> make_executor(const Config& cfg, const FederatedData& data);
ExecutorKind resolve_executor_kind(ExecutorKind kind, const torch::Device& device);

// The supervised loss of one batch of `split` rows for a client of `kind` holding `towers`:
// cross entropy of each held tower's class head, plus (image and text held) the symmetric
// InfoNCE of the two towers' features weighted by `t.contrastive_weight`.
torch::Tensor supervised_loss(GlobalModel& towers, ClientKind kind, const PairedSplit& split,
                              const torch::Tensor& rows, const TrainConfig& t);

// One epoch's batches of `indices` (rows of a split) in a seeded random order, on `device`.
std::vector<torch::Tensor> shuffled_batches(const std::vector<int64_t>& indices, int64_t batch_size,
                                            std::mt19937_64& rng, const torch::Device& device);
// The shuffled order alone (what shuffled_batches cuts into batches).
std::vector<int64_t> shuffled(const std::vector<int64_t>& indices, std::mt19937_64& rng);

// One optimizer step on `loss`: backward, gradient clipping (t.grad_clip > 0), step.
void optimizer_step(torch::optim::Optimizer& opt, const torch::Tensor& loss, const TrainConfig& t);

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const TrainConfig& t, double lr,
                                                        std::vector<torch::Tensor> params);

// Held while creating modules or seeding torch's global generator from several threads.
std::mutex& torch_init_mutex();

// The seed stream of a client's local data order (a function of seed, round and client id).
inline constexpr uint64_t kStreamLocalOrder = 5;

}  // namespace mmfl::engine
