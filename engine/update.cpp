#include "engine/update.h"

namespace mmfl::engine {

int64_t tensor_bytes(const torch::Tensor& t) {
  return t.defined() ? t.numel() * int64_t(t.element_size()) : 0;
}

int64_t Payload::bytes() const {
  int64_t n = 0;
  for (const auto& [name, t] : dense)
    n += tensor_bytes(t);
  for (const auto& [name, p] : sparse)
    n += tensor_bytes(p.indices) + tensor_bytes(p.values);
  for (const auto& [name, t] : reps)
    n += tensor_bytes(t);
  return n;
}

}  // namespace mmfl::engine
