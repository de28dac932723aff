// What persists per client between rounds (CreamFL's client models, error-feedback residuals,
// personal layers), keyed by client id, with a resident-memory budget beyond which the least
// recently used entries spill to checksummed files (written atomically, as checkpoints are).
// Saved into and restored from checkpoints, so a resume never reads a crashed run's spill files.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <list>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "engine/checkpoint.h"

namespace mmfl::engine {

// One client's state: named tensors, kept on the CPU as flat fp32 vectors.
using ClientState = std::map<std::string, torch::Tensor>;

class ClientStateStore {
 public:
  // budget_bytes <= 0: no budget (never spills). spill_dir is created on the first spill.
  // In a run of `ranks` ranks, this rank's store holds the clients whose id mod ranks is `rank`
  // (load() keeps only those) and spills into spill_dir/rank<rank>.
  ClientStateStore(int64_t budget_bytes, std::string spill_dir, int rank = 0, int ranks = 1);

  bool contains(int64_t id) const;
  // The client's state (read back from its spill file when spilled; a damaged file is refused
  // with an error naming it); nullopt for a client without state. Thread-safe.
  std::optional<ClientState> find(int64_t id);
  // Stores a CPU fp32 copy, replacing the client's previous state, then spills the least
  // recently used entries until the resident bytes fit the budget. Thread-safe.
  void put(int64_t id, const ClientState& state);

  int64_t size() const;            // clients with state, resident or spilled
  int64_t resident_bytes() const;  // tensor bytes held in memory
  int64_t spilled() const;         // entries currently in files
  std::vector<int64_t> ids() const;

  // Every entry as tensors "state/<id>/<name>" (spilled ones read back).
  void save(Checkpoint& ck) const;
  // Replaces the whole store with the checkpoint's entries (this rank's share of them) and
  // removes stale spill files.
  void load(const Checkpoint& ck);

 private:
  struct Entry {
    ClientState state;  // empty while spilled
    bool spilled = false;
    uint64_t spill_seq = 0;  // which spill of this store wrote its file (recorded in the file)
    int64_t bytes = 0;
    std::list<int64_t>::iterator lru;  // position in lru_ (front: most recently used)
  };

  std::string spill_path(int64_t id) const;
  ClientState read_spill(int64_t id, uint64_t seq) const;
  void touch(Entry& e, int64_t id);
  void enforce_budget();

  int64_t budget_;
  std::string dir_;
  int rank_ = 0, ranks_ = 1;
  mutable std::mutex mu_;
  std::map<int64_t, Entry> entries_;
  std::list<int64_t> lru_;  // resident entries only
  int64_t resident_ = 0, spilled_ = 0;
  uint64_t spill_seq_ = 0;  // spills so far
};

}  // namespace mmfl::engine
