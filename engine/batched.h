// The batched executor: the clients of a cohort that share an architecture (and client kind)
// are trained as one stacked model. Every weight gets a leading client dimension; linear layers
// become batched matrix products, convolutions one grouped convolution, embeddings one lookup;
// optimizer state is per client, each client keeps its own data order, and clients with fewer
// samples are masked out of a step (never padded with samples that change a gradient).
#pragma once

#include <memory>

#include "engine/executor.h"

namespace mmfl::engine {

std::unique_ptr<Executor> make_batched_executor(const Config& cfg, const FederatedData& data);

// Whether towers of this architecture can be stacked (cnn/mlp images, bag-of-words text);
// the others are trained one client at a time by the batched executor.
bool stackable(const ClientArch& arch);

}  // namespace mmfl::engine
