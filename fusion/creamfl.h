// CreamFL's contrastive pieces (Yu et al., ICLR 2023): the clients' inter- and intra-modal
// regularizers on the public set, and LibTorch compositions of the fused ops, which are the
// baselines in bench/ and the references in tests.
#pragma once

#include <torch/types.h>

#include "fusion/ops/bank_ce.h"

namespace mmfl::fusion {

// Inter-modal: cross entropy of z G_other^T / tau against target `rows` (each feature should pick
// its own public sample among all N of the other modality). Mean over the batch.
torch::Tensor inter_modal_loss(const torch::Tensor& z,        // [B, D] L2-normalized
                               const torch::Tensor& g_other,  // [N, D] global, other modality
                               const torch::Tensor& rows,     // [B] int64 public indices
                               double tau);

// Intra-modal: cross entropy of [<z, g_same_j>, <z, z_old_j>] / tau against 0: the feature should
// be closer to the global model's feature of the same modality than to the client's own feature
// from the start of the round. Mean over the batch.
torch::Tensor intra_modal_loss(const torch::Tensor& z,       // [B, D]
                               const torch::Tensor& g_same,  // [B, D] global features, rows of z
                               const torch::Tensor& z_old,   // [B, D] frozen client features
                               double tau);

// The reference composition of the ensemble (materializes [K, N, N] scores in chunks of
// clients): score = diag(log_softmax(L G^T / tau)), W = softmax over clients, A = sum_c W L.
ops::EnsembleResult creamfl_ensemble_composed(const torch::Tensor& local, const torch::Tensor& bank,
                                              double tau, kernels::EnsembleWeighting weighting);

// Per-row cross entropy against a bank through matmul + cross_entropy (materializes [B, N]).
torch::Tensor bank_cross_entropy_composed(const torch::Tensor& q, const torch::Tensor& bank,
                                          const torch::Tensor& target, double tau);

}  // namespace mmfl::fusion
