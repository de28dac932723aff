// Typed experiment configuration, read from YAML with validation: an unknown key names the key
// and the allowed ones; a bad type or range names the key path and the value. The resolved
// config (every default filled in) is written to the run directory and read back on resume.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "modalities/image/encoders.h"
#include "modalities/text/encoders.h"

namespace YAML {
class Node;
}

namespace mmfl::engine {

enum class Partition { kIid, kDirichlet };
enum class OptimizerKind { kSgd, kAdam };
enum class StrategyKind { kFedAvg };
enum class DeviceChoice { kAuto, kCpu, kCuda };

struct DataConfig {
  std::string root = "/usr/share/datasets/fashion-mnist";
  uint64_t caption_seed = 7;
  int64_t public_size = 5000;  // train samples held by the server, never given to clients
  int64_t train_limit = 0;     // clients' pool size; 0 = every remaining train sample
  int64_t test_limit = 0;      // 0 = the whole test split
  int64_t retrieval_pairs = 1000;
  int64_t max_tokens = 16;
};

struct ModalityMix {
  double image = 0.3;  // fractions of image-only, text-only and paired clients (sum to 1)
  double text = 0.2;
  double paired = 0.5;
};

struct PopulationConfig {
  int64_t clients = 100;
  ModalityMix mix;
  Partition partition = Partition::kDirichlet;
  double alpha = 0.5;          // Dirichlet concentration of per-class client shares
  double quantity_skew = 0.0;  // sigma of log-normal client sizes; 0 = equal expected sizes
  int64_t min_samples = 8;
};

struct ModelConfig {
  int64_t embed_dim = 64;
  modalities::ImageEncoderConfig image;
  modalities::TextEncoderConfig text;
};

struct TrainConfig {
  OptimizerKind optimizer = OptimizerKind::kSgd;
  double lr = 0.05;
  double momentum = 0.9;
  double weight_decay = 0.0;
  int64_t epochs = 1;
  int64_t batch_size = 32;
  double contrastive_weight = 1.0;  // paired clients: weight of the image-text InfoNCE term
  double temperature = 0.1;         // InfoNCE temperature
};

struct Config {
  std::string name = "experiment";
  uint64_t seed = 1;
  int64_t rounds = 20;
  DeviceChoice device = DeviceChoice::kAuto;
  DataConfig data;
  PopulationConfig population;
  int64_t clients_per_round = 10;
  ModelConfig model;
  TrainConfig train;
  StrategyKind strategy = StrategyKind::kFedAvg;
  int64_t eval_every = 1;
  int64_t eval_batch_size = 1000;
  int64_t checkpoint_every = 5;
  int64_t checkpoint_keep = 2;
  std::string resolved_yaml;  // every key with its value, defaults included
};

// Parses `path`, applying `overrides` ("a.b.c=value", YAML scalars) first.
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});
Config parse_config(const YAML::Node& root, const std::string& origin);
Config parse_config_text(const std::string& yaml, const std::vector<std::string>& overrides = {});

std::string to_string(DeviceChoice d);
DeviceChoice device_choice_from(const std::string& s);  // auto | cpu | cuda

}  // namespace mmfl::engine
