// Evaluation of the global model: test accuracy per modality, and image-to-text / text-to-image
// recall@1/5/10 on the fixed retrieval subset of the test split.
#pragma once

#include "engine/data.h"
#include "engine/model.h"

namespace mmfl::engine {

struct EvalResult {
  double image_acc = 0;
  double text_acc = 0;
  double i2t[3] = {0, 0, 0};  // R@1, R@5, R@10
  double t2i[3] = {0, 0, 0};
};

EvalResult evaluate(GlobalModel& model, const FederatedData& data, int64_t batch_size);

// Features [N, D] of all rows of `x`, in batches of `batch`, without gradients.
torch::Tensor batched_features(Tower& tower, const torch::Tensor& x, int64_t batch);

// Recall@{1,5,10} of row i retrieving column i in `sim` [R, R].
void recall_at(const torch::Tensor& sim, double out[3]);

}  // namespace mmfl::engine
