// A round over several ranks: which rank trains which sampled client, and how what the ranks
// produced comes together (updates, per-client statistics), each as
// a few large messages rather than one per tensor.
#pragma once

#include <torch/types.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "engine/comm/communicator.h"
#include "engine/population.h"
#include "engine/update.h"

namespace mmfl::engine::comm {

enum class Placement {
  // Balanced by expected cost (longest first onto the least loaded rank): for strategies whose
  // clients keep no state between rounds (FedAvg).
  kCost,
  // Client id mod ranks, the rank that holds the client's state (ClientStateStore is
  // partitioned the same way), so state never crosses ranks.
  kOwner,
};

inline int owner_rank(int64_t client_id, int ranks) {
  return int(client_id % int64_t(ranks));
}

// The rank of each client of `cohort`; identical on every rank (a function of the cohort and
// the costs only). `cost[i]`: expected cost of cohort[i] (samples x model size).
std::vector<int> place(const std::vector<const ClientSpec*>& cohort,
                       const std::vector<double>& cost, int ranks, Placement mode);

// The clients of `cohort` that this rank trains, in cohort order. `cost` is asked for kCost only
// (unset: the client's sample count).
std::vector<const ClientSpec*> local_share(
    const std::vector<const ClientSpec*>& cohort, const Communicator& c, Placement mode,
    const std::function<double(const ClientSpec&)>& cost = {});

// Every rank's updates, ordered by client id (the cohort's order), on `device`: one all-gather
// of one packed buffer per rank. With one rank, `local` is returned as it is.
std::vector<Update> gather_updates(Communicator& c, std::vector<Update> local,
                                   const torch::Device& device);

// One update's accounting without its payload (what the round's statistics need).
struct UpdateRecord {
  int64_t client_id = 0;
  int64_t num_samples = 0;
  double loss = 0;
  bool diverged = false;
  int64_t bytes_up = 0, bytes_down = 0;
};
// Every rank's records, ordered by client id.
std::vector<UpdateRecord> gather_records(Communicator& c, const std::vector<Update>& local);

// Every rank's ids (a small all-gather), sorted.
std::vector<int64_t> gather_ids(Communicator& c, const std::vector<int64_t>& local);

// Named tensors (any dtype, CPU) as one byte string and back; the reader checks every length.
std::string pack_tensors(const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                         const std::string& meta = "");
std::vector<std::pair<std::string, torch::Tensor>> unpack_tensors(const std::string& bytes,
                                                                  std::string* meta = nullptr);

}  // namespace mmfl::engine::comm
