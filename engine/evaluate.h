// Evaluation of the global model: test accuracy per modality, and image-to-text / text-to-image
// recall@1/5/10 on the fixed retrieval subset of the test split.
#pragma once

#include "engine/comm/communicator.h"
#include "engine/data.h"
#include "engine/model.h"

namespace mmfl::engine {

struct EvalResult {
  double image_acc = 0;
  double text_acc = 0;
  double i2t[3] = {0, 0, 0};  // R@1, R@5, R@10
  double t2i[3] = {0, 0, 0};
  // Health of the evaluated model's features on the test split: a model whose features hold
  // NaN/Inf, or are one vector for every input, has diverged or collapsed; its recall means
  // nothing, and the run loop stops with an error naming the keys to change.
  bool finite = true;
  bool collapsed = false;
};

EvalResult evaluate(GlobalModel& model, const FederatedData& data, int64_t batch_size);

// Features [N, D] of all rows of `x`, in batches of `batch`, without gradients.
torch::Tensor batched_features(Tower& tower, const torch::Tensor& x, int64_t batch);

// As batched_features, the batches split over the ranks of `c` and gathered (every rank gets
// all rows).
torch::Tensor sharded_features(Tower& tower, const torch::Tensor& x, int64_t batch,
                               comm::Communicator& c);

// Recall@{1,5,10} of row i retrieving column i in `sim` [R, R]. The rank of the match counts
// every other column scoring at least as high (ties count against the query), and a NaN match
// score is never a hit, so a collapsed or diverged model cannot score above chance.
void recall_at(const torch::Tensor& sim, double out[3]);

}  // namespace mmfl::engine
