// What travels between the server and one client, as one type for every strategy: dense
// tensors per named parameter group (a tower, an expert, an adapter), sparse packets (indices
// and values of a named group) and representations ([N, D] per modality). Bytes are derived
// from what travels (element counts and dtypes), never counted by hand in a strategy.
#pragma once

#include <torch/types.h>

#include <map>
#include <string>

#include "engine/population.h"

namespace mmfl::engine {

// The entries of a named group that are sent: `values[i]` belongs at flat position
// `indices[i]` of a group of `dense_numel` elements.
struct SparsePacket {
  torch::Tensor indices;  // [k] int32 or int64
  torch::Tensor values;   // [k]
  int64_t dense_numel = 0;
};

// One direction's message between the server and one client.
struct Payload {
  std::map<std::string, torch::Tensor> dense;  // group name -> values (any shape)
  std::map<std::string, SparsePacket> sparse;  // group name -> packet
  std::map<std::string, torch::Tensor> reps;   // modality -> [N, D] representations

  // Bytes on the wire: every tensor's element count times its element size.
  int64_t bytes() const;
  bool empty() const { return dense.empty() && sparse.empty() && reps.empty(); }
};

// What one client's local training produced.
struct Update {
  int64_t client_id = 0;
  ClientKind kind = ClientKind::kPaired;
  int64_t num_samples = 0;  // weights the client in sample-weighted averages
  double loss = 0;          // mean training loss over the client's steps
  bool diverged = false;    // non-finite result: `up` is empty, the client's state unchanged
  Payload up;               // what the client sends
  int64_t bytes_down = 0;   // Payload::bytes() of what the server sent it

  int64_t bytes_up() const { return up.bytes(); }
};

// Bytes of one tensor's data (0 for an undefined tensor).
int64_t tensor_bytes(const torch::Tensor& t);

}  // namespace mmfl::engine
