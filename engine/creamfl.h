// CreamFL (Yu et al., ICLR 2023): heterogeneous clients (image-only, text-only, paired, with
// different encoders) teach a larger server model by sending representations of the server's
// public set instead of weights. Per round:
//   1. the server computes global features G_img, G_txt of the public set (eval mode, L2-normed);
//   2. each sampled client trains on its private data and, after each private epoch, takes a pass
//      over the public set with the inter- and intra-modal regularizers; it then sends its
//      features of every public sample;
//   3. per modality, the server ensembles the clients' features, weighting client c on sample j
//      by the softmax over clients of log softmax_m <L_c[j], G_other[m]> [j];
//   4. the server trains on the public set, then distills the ensembles into its encoders (MSE,
//      only for modalities that some sampled client held this round).
// Clients keep their own models between rounds (client state store, checkpointed).
// `public_only` runs steps 1 and 4 without clients: the baseline.
#pragma once

#include <array>
#include <map>
#include <memory>
#include <mutex>

#include "engine/state_store.h"
#include "engine/strategy.h"

namespace mmfl::engine {

class CreamFlStrategy : public Strategy {
 public:
  // `run_dir` receives the creamfl.dump_round inspection files.
  CreamFlStrategy(const Config& cfg, const FederatedData& data, std::string run_dir);
  std::string name() const override { return to_string(cfg_.strategy); }
  RoundStats run_round(const std::vector<const ClientSpec*>& cohort, int64_t round) override;
  EvalResult evaluate() override;
  void save(Checkpoint& ck) const override;
  void load(const Checkpoint& ck) override;
  nlohmann::json describe() const override;
  std::optional<int64_t> clients_with_state() const override { return states_.size(); }

  // The server's distillation step on the ensembles (undefined = no client held that modality:
  // the term is skipped). Returns the mean loss; public for tests.
  double distill(const torch::Tensor& target_img, const torch::Tensor& target_txt);

 private:
  class Task;
  struct ClientModel {
    torch::Tensor image, text;  // flat parameters (CPU), undefined if the modality is not held
  };

  // The client's persistent model (created on its first round from (seed, id) alone).
  ClientModel state_of(const ClientSpec& spec);
  void keep_state(int64_t id, const ClientModel& st);
  double server_train(int64_t round);
  torch::Tensor features(Tower& tower, bool image);  // [N, D] of the public set, normalized
  // After the server's training: its public-set features, kept for the next round's clients,
  // and their spread reported.
  void refresh_server_features(RoundStats& s);
  void dump(int64_t round, const std::vector<Update>& reps, const torch::Tensor& g_img,
            const torch::Tensor& g_txt, const torch::Tensor& w_img, const torch::Tensor& w_txt,
            const torch::Tensor& a_img, const torch::Tensor& a_txt) const;

  const Config& cfg_;
  const FederatedData& data_;
  GlobalModel server_;
  std::unique_ptr<Executor> executor_;
  std::array<int64_t, 3> client_params_{};  // parameters of a client of each kind
  ClientStateStore states_;                 // the clients' models ("image", "text")
  // The server's public-set features as the last round left them (undefined after a load).
  torch::Tensor next_g_img_, next_g_txt_;
  std::string run_dir_;
};

}  // namespace mmfl::engine
