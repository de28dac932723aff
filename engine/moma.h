// MoMa in the federation (strategy.name: moma): one early-fusion transformer whose FFN blocks
// hold modality-aware experts (fusion/moe). Clients with any subset of modalities train the
// shared layers and the parameters of the modalities they hold; each expert travels as its own
// dense group "moe.<layer>.<group>.<expert>" with "<name>#tokens", the slots the client routed to
// it during the round. The server averages each expert over the clients that routed tokens to
// it, weighted by those counts; the shared layers and the per-modality layers sample-weighted;
// a group no sampled client sent is left as it was.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/strategy.h"
#include "fusion/moe/moma.h"

namespace mmfl::engine {

// The model of a MoMa run (the server's, or a client's resident copy): the transformer, its two
// class heads inside towers (what engine::evaluate evaluates) and its parameter groups.
struct MomaNet {
  std::shared_ptr<fusion::MomaModel> core;
  GlobalModel towers;  // image/text Tower over fusion::MomaEncoder views of `core`
  std::vector<fusion::ParamGroup> groups;
  std::map<std::string, size_t> index;  // group name -> position in `groups`

  torch::Tensor get(const std::string& group) const;  // flat fp32 copy
  void set(const std::string& group, const torch::Tensor& flat);
  std::map<std::string, torch::Tensor> get_all() const;
  std::vector<torch::Tensor> parameters() const;  // every trainable tensor once
  int64_t num_params() const;
};

// Built under torch::manual_seed(cfg.seed), on the data's device.
std::unique_ptr<MomaNet> make_moma_net(const Config& cfg, const FederatedData& data);

inline bool is_expert_group(const std::string& name) {
  return name.rfind("moe.", 0) == 0;
}
inline const char* const kTokensSuffix = "#tokens";  // "<expert>#tokens": int64 [1]

struct MomaAggregateReport {
  int64_t experts_updated = 0;    // experts that at least one client routed tokens to
  int64_t experts_untouched = 0;  // left as they were
  std::vector<int64_t> skipped;   // client ids whose group held NaN/Inf (left out of its mean)
};

// The server step on flat groups (name -> [n] fp32): each group of `global` becomes the mean of
// the updates that carry it, weighted by the tokens each client routed to it (experts) or by its
// samples (every other group), accumulated in fp64; a group no update carries is unchanged.
// With a communicator of several ranks, `updates` are this rank's: the per-group fp64 sums and
// weights are summed over the ranks in one all-reduce (every rank then holds the same result),
// and the skipped ids are gathered.
MomaAggregateReport aggregate_moma(const std::vector<Update>& updates,
                                   std::map<std::string, torch::Tensor>& global,
                                   comm::Communicator* c = nullptr);

class MomaStrategy : public Strategy {
 public:
  // `run_dir` receives the moe.dump_round files.
  MomaStrategy(const Config& cfg, const FederatedData& data, std::string run_dir);
  std::string name() const override { return "moma"; }
  RoundStats run_round(const std::vector<const ClientSpec*>& cohort, int64_t round) override;
  EvalResult evaluate() override;
  void save(Checkpoint& ck) const override;
  void load(const Checkpoint& ck) override;
  nlohmann::json describe() const override;

  MomaNet& global() { return *global_; }
  // One client's local training from the global model (what run_round does per client).
  // `trace`, when given, receives the routing of the client's first batch (per layer).
  Update train_client(const ClientSpec& spec, int64_t round,
                      std::vector<std::vector<fusion::MoeGroupTrace>>* trace = nullptr);

 private:
  const Config& cfg_;
  const FederatedData& data_;
  std::string run_dir_;
  std::unique_ptr<MomaNet> global_, local_;
};

}  // namespace mmfl::engine
