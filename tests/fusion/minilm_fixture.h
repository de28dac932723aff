// Test helpers for the MiniLM tests: the installed model (a test that needs it fails, with the
// install hint, when it is missing: CI installs it through `make test` -> venv), the golden
// values of tests/golden/, and tiny random MiniLM folders written on the fly.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "fusion/lora/minilm.h"
#include "mmfl/error.h"

namespace mmfl::fusion::testing {

// The embedder on the installed model, loaded once; nullptr with a failure (the install hint)
// when the model is missing.
inline TextEmbedder* installed_embedder() {
  static std::unique_ptr<TextEmbedder> e;
  static std::string error;
  if (!e && error.empty()) {
    try {
      e = std::make_unique<TextEmbedder>("", "set MMFL_MINILM_DIR");
    } catch (const Error& err) {
      error = err.reason();
    }
  }
  if (!e) ADD_FAILURE() << error;
  return e.get();
}

inline const nlohmann::json& golden() {
  static const nlohmann::json g = [] {
    std::ifstream f(std::string(MMFL_GOLDEN_DIR) + "/minilm_golden.json");
    return nlohmann::json::parse(f);
  }();
  return g;
}

// A temporary folder removed at the end of the test.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    path = std::filesystem::temp_directory_path() /
           ("mmfl_minilm_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string str() const { return path.string(); }
};

inline MiniLmConfig tiny_config() {
  MiniLmConfig c;
  c.vocab_size = 12;
  c.hidden = 8;
  c.layers = 2;
  c.heads = 2;
  c.intermediate = 16;
  c.max_positions = 16;
  c.max_seq_length = 16;
  return c;
}

// A complete model folder (config.json, vocab.txt, model.safetensors) of a random tiny MiniLM.
inline MiniLm write_tiny_model(const std::string& dir, uint64_t seed = 1) {
  torch::manual_seed(seed);
  const MiniLmConfig c = tiny_config();
  MiniLm m(c);
  save_safetensors(*m, dir + "/model.safetensors");
  nlohmann::json cfg = {{"model_type", "bert"},
                        {"hidden_act", "gelu"},
                        {"vocab_size", c.vocab_size},
                        {"hidden_size", c.hidden},
                        {"num_hidden_layers", c.layers},
                        {"num_attention_heads", c.heads},
                        {"intermediate_size", c.intermediate},
                        {"max_position_embeddings", c.max_positions},
                        {"type_vocab_size", c.type_vocab},
                        {"layer_norm_eps", 1e-12}};
  std::ofstream(dir + "/config.json") << cfg.dump(2);
  std::ofstream(dir + "/vocab.txt")
      << "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\ndark\nboot\nbag\nbright\n,\n.\n";
  return m;
}

}  // namespace mmfl::fusion::testing
