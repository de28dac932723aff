// Federated LoRA on the pretrained text base (strategy.name: lora). Clients hold a `cnn` image
// tower (FedAvg, dense) and/or the MiniLM text tower: the frozen all-MiniLM-L6-v2, adapters on
// the layers lora.targets chooses, a trained projection and class head. What a client sends of
// its adapters, and how the server combines them, is the rule (lora.rule):
//   none     no adapters; only the projection and heads train (the frozen-base baseline)
//   fedavg   A and B averaged separately: mean(B) mean(A) != mean(B A), inexact
//   ffa      A frozen at its shared random init, B averaged: mean(B) A == mean(B A), exact
//   fedsa    A averaged, B personal (client state store); evaluated with the cohort's mean B
//   stack    every client's A and B sent; the server merges sum_c w_c s B_c A_c into the base
//            (computed as one product of the stacked factors) and restarts the adapters; the
//            next round's clients download the stacked factors: exact
//   product  as stack, but the clients download the dense merged delta (out x in per layer)
// Sparse deltas (rules fedavg, ffa, fedsa): a client sends the top-k by magnitude of its
// adapter delta (lora.upload_density), the rest kept as an error-feedback residual in the
// client state store and added to its next delta; the server sends the top-k of its change
// since the last broadcast (lora.download_density), clients holding the broadcast model.
#pragma once

#include <string>
#include <vector>

#include "engine/state_store.h"
#include "engine/strategy.h"

namespace mmfl::engine {

// Where the MiniLM text tower's trainable tensors sit in Tower::flat().
struct LoraLayout {
  struct Layer {
    std::string name;  // module path of the adapted layer ("encoder.layer.0.attention.self.query")
    int64_t a_offset = -1;  // flat offsets of lora_A [r, in] and lora_B [out, r] (-1: frozen)
    int64_t b_offset = -1;
    int64_t a_sent = -1;  // where they start inside the sent adapter vector (-1: not sent)
    int64_t b_sent = -1;
    int64_t rank = 0, in = 0, out = 0;
    double scale = 0;  // alpha / r
  };
  std::vector<Layer> layers;
  int64_t numel = 0;                  // of the whole flat vector
  torch::Tensor sent;                 // int64 flat positions of the adapter entries clients send
  torch::Tensor personal;             // int64 positions kept by the client (fedsa: B), else empty
  torch::Tensor head;                 // int64 positions of the projection and the class head
  std::vector<nlohmann::json> slots;  // name, offset, numel, shape of every trainable tensor
};

LoraLayout lora_layout(Tower& text_tower, LoraRule rule);

// The weight change each adapted layer's rule yields from the clients' factors A [C, r, in],
// B [C, out, r] with weights w [C] (sum 1) and scale s:
//   exact (stack, product): s sum_c w_c B_c A_c
//   fedavg:                 s (sum_c w_c B_c)(sum_c w_c A_c)
// stack computes the exact sum as one product of the stacked factors [w_1 B_1 | ... ] [A_1; ...].
torch::Tensor lora_merged_delta(LoraRule rule, const torch::Tensor& A, const torch::Tensor& B,
                                const torch::Tensor& w, double scale);

class LoraCohortTrainer;

class LoraStrategy : public Strategy {
 public:
  // `run_dir` receives the state store's spill files and the lora.dump_round files.
  LoraStrategy(const Config& cfg, const FederatedData& data, std::string run_dir);
  ~LoraStrategy() override;
  std::string name() const override { return "lora"; }
  RoundStats run_round(const std::vector<const ClientSpec*>& cohort, int64_t round) override;
  EvalResult evaluate() override;
  void save(Checkpoint& ck) const override;
  void load(const Checkpoint& ck) override;
  nlohmann::json describe() const override;
  std::optional<int64_t> clients_with_state() const override { return states_.size(); }

  const LoraLayout& layout() const { return layout_; }
  GlobalModel& global() { return global_; }

 private:
  void merge_into_base(const std::vector<Update>& updates, const std::vector<double>& w,
                       int64_t round);
  void dump(int64_t round, const std::vector<Update>& updates, const torch::Tensor& mean_delta,
            const torch::Tensor& adapter) const;

  const Config& cfg_;
  const FederatedData& data_;
  std::string run_dir_;
  GlobalModel global_;
  std::unique_ptr<Executor> executor_;
  std::unique_ptr<LoraCohortTrainer> cohort_;  // lora.cohort: the text-holding clients together
  ClientStateStore states_;
  LoraLayout layout_;
  torch::Tensor broadcast_;   // the sent adapter entries as clients hold them
  torch::Tensor merge_down_;  // stack/product: what the next cohort downloads to merge
};

}  // namespace mmfl::engine
