// FashionMNIST-Captions as tensors on the run's device: the clients' private pool, the
// server-held public set, and the test split with its fixed retrieval subset.
#pragma once

#include <torch/types.h>

#include <memory>
#include <string>
#include <vector>

#include "engine/config.h"
#include "modalities/text/tokenizer.h"

namespace mmfl::engine {

// One split: images [N, 1, H, W] float (normalized), tokens [N, L] int64, labels [N] int64.
struct PairedSplit {
  torch::Tensor images;
  torch::Tensor tokens;
  torch::Tensor labels;
  std::vector<std::string> captions;
  std::vector<int64_t> keys;  // class-and-attribute key per sample (AttributeLevels::key)
  int64_t size() const { return labels.defined() ? labels.size(0) : 0; }
};

struct FederatedData {
  PairedSplit pool;        // clients' private data; ClientSpec::indices point here
  PairedSplit public_set;  // held by the server (CreamFL's public data)
  PairedSplit test;
  torch::Tensor retrieval;  // [R] int64, rows of `test` used for R@K
  std::shared_ptr<modalities::Tokenizer> tokenizer;
  int64_t height = 28, width = 28;
  int num_classes = 10;
  double oracle_recall[3] = {0, 0, 0};  // ceiling R@1/5/10 on the retrieval subset
};

// Reads data.root, builds captions and the vocabulary (from the training text only), splits by
// `seed`, moves tensors to `device`. `vocab_path`, when given, is loaded instead of rebuilt.
FederatedData load_fmnist_captions(const Config& cfg, const torch::Device& device,
                                   const std::string& vocab_path = "");

}  // namespace mmfl::engine
