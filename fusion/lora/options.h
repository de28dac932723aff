// The LoRA options of a run (config section `lora:`) and their checks, without LibTorch: the
// config parser (and its fuzz target) needs only these.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mmfl::fusion {

struct LoraOptions {
  int64_t rank = 8;
  double alpha = 16.0;   // the update is scaled by alpha / rank
  double dropout = 0.0;  // on the adapter's input only (the base path sees x unchanged)
  // Which layers get adapters, matched against each LoraLinear's module path
  // ("encoder.layer.0.attention.self.query"): a pattern with '*' is a glob over the whole path
  // ('*' spans dots), a plain name matches the path or its last components ("query",
  // "self.query"); "all-linear" (alone) takes every LoraLinear.
  std::vector<std::string> targets = {"query", "value"};
  uint64_t seed = 0;  // A's initialization, per layer from (seed, layer index)
};

// Checks the options (rank >= 1, alpha > 0, dropout in [0, 1), a valid target list), throwing
// with `key_prefix` + the option's name ("lora.rank") so that config errors name the key.
void validate_lora_options(const LoraOptions& o, const std::string& key_prefix = "lora.");

// Whether the module path `name` is chosen by `pattern` (see LoraOptions::targets).
bool lora_target_matches(const std::string& name, const std::string& pattern);

}  // namespace mmfl::fusion
