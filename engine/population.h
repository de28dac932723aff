// The client population as small specs (no models): who holds which modality and which samples.
// Partitioners split a labelled pool among clients; sampling picks each round's cohort. All of it
// is a pure function of the seed, so 100k clients cost only their index lists.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "engine/config.h"

namespace mmfl::engine {

enum class ClientKind { kImage, kText, kPaired };
std::string to_string(ClientKind k);
inline bool holds_image(ClientKind k) {
  return k != ClientKind::kText;
}
inline bool holds_text(ClientKind k) {
  return k != ClientKind::kImage;
}

struct ClientSpec {
  int64_t id = 0;
  ClientKind kind = ClientKind::kPaired;
  std::vector<int64_t> indices;  // rows of the clients' data pool
};

// Deterministic 64-bit generator for a (seed, stream...) tuple; streams keep sampling,
// partitioning and data order independent of each other.
std::mt19937_64 make_rng(uint64_t seed, uint64_t stream, uint64_t a = 0, uint64_t b = 0);

// Client sizes: expected shares exp(sigma * N(0, 1)), normalized; sigma = 0 gives equal shares.
std::vector<double> client_shares(int64_t clients, double quantity_skew, std::mt19937_64& rng);

// IID: a random permutation of 0..num_samples-1 cut by `shares`.
std::vector<std::vector<int64_t>> partition_iid(int64_t num_samples,
                                                const std::vector<double>& shares,
                                                std::mt19937_64& rng);

// Dirichlet label skew: each class's samples are split among clients in proportions
// p ~ Dir(alpha) scaled by the clients' `shares` (small alpha: few classes per client).
std::vector<std::vector<int64_t>> partition_dirichlet(const std::vector<int64_t>& labels,
                                                      int num_classes, double alpha,
                                                      const std::vector<double>& shares,
                                                      std::mt19937_64& rng);

// Resampling: each client draws max(min_samples, share * num_samples) distinct rows of the whole
// pool, independently of the other clients (their data overlap). For populations larger than
// the pool (scale tests of 100k clients); never a substitute for a real partition in a study.
std::vector<std::vector<int64_t>> partition_resample(int64_t num_samples,
                                                     const std::vector<double>& shares,
                                                     int64_t min_samples, std::mt19937_64& rng);

// Moves samples from the largest clients to those below `min_samples` (every sample stays
// assigned exactly once). Fails when the pool cannot give every client `min_samples`.
void enforce_min_samples(std::vector<std::vector<int64_t>>& parts, int64_t min_samples,
                         std::mt19937_64& rng);

// Exact counts by largest remainder of `mix`, in a seeded random order over clients.
std::vector<ClientKind> assign_kinds(int64_t clients, const ModalityMix& mix, std::mt19937_64& rng);

std::vector<ClientSpec> make_population(const PopulationConfig& cfg,
                                        const std::vector<int64_t>& pool_labels, int num_classes,
                                        uint64_t seed);

// Cohort of round `round`: `k` distinct client ids, sorted, a function of (seed, round) only.
std::vector<int64_t> sample_clients(int64_t clients, int64_t k, uint64_t seed, int64_t round);

}  // namespace mmfl::engine
