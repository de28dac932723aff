#include "engine/data.h"

#include <algorithm>
#include <fstream>
#include <functional>
#include <numeric>

#include "engine/population.h"
#include "fusion/lora/text_encoder.h"
#include "mmfl/error.h"
#include "modalities/image/idx.h"
#include "modalities/paired/captions.h"

namespace mmfl::engine {

namespace {

namespace mod = mmfl::modalities;

constexpr uint64_t kStreamSplit = 3;
constexpr uint64_t kStreamRetrieval = 4;
// FashionMNIST pixel statistics (train split), for input normalization.
constexpr double kPixelMean = 0.2860, kPixelStd = 0.3530;

struct RawSplit {
  mod::IdxImages idx;
  std::vector<std::string> captions;
  std::vector<int64_t> keys;
};

// Token ids of one caption, exactly max_tokens of them (padded).
using Encode = std::function<std::vector<int64_t>(const std::string&, int64_t)>;

PairedSplit to_tensors(const RawSplit& raw, const std::vector<int64_t>& rows, const Encode& encode,
                       int64_t max_tokens, const torch::Device& dev) {
  const int64_t h = raw.idx.rows(), w = raw.idx.cols(), n = int64_t(rows.size());
  auto images = torch::empty({n, 1, h, w}, torch::kUInt8);
  auto tokens = torch::empty({n, max_tokens}, torch::kInt64);
  auto labels = torch::empty({n}, torch::kInt64);
  auto* ip = images.data_ptr<uint8_t>();
  auto* tp = tokens.data_ptr<int64_t>();
  auto* lp = labels.data_ptr<int64_t>();
  PairedSplit s;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = rows[size_t(i)];
    std::copy_n(raw.idx.images.data.data() + r * h * w, h * w, ip + i * h * w);
    const auto ids = encode(raw.captions[size_t(r)], max_tokens);
    std::copy(ids.begin(), ids.end(), tp + i * max_tokens);
    lp[i] = raw.idx.labels.data[size_t(r)];
    s.captions.push_back(raw.captions[size_t(r)]);
    s.keys.push_back(raw.keys[size_t(r)]);
  }
  s.images = ((images.to(torch::kFloat32) / 255.0 - kPixelMean) / kPixelStd).to(dev);
  s.tokens = tokens.to(dev);
  s.labels = labels.to(dev);
  return s;
}

void caption_split(RawSplit& raw, const mod::CaptionModel& model,
                   const std::vector<mod::ImageAttributes>& attrs, uint64_t seed, uint64_t salt) {
  const auto n = size_t(raw.idx.count());
  raw.captions.resize(n);
  raw.keys.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const int label = raw.idx.labels.data[i];
    const auto lv = model.levels(attrs[i], label);
    raw.captions[i] = mod::CaptionModel::caption(label, lv, seed, salt, int64_t(i));
    raw.keys[i] = lv.key(label);
  }
}

std::vector<mod::ImageAttributes> measure_split(const mod::IdxImages& idx) {
  std::vector<mod::ImageAttributes> a(static_cast<size_t>(idx.count()));
  const int64_t px = idx.rows() * idx.cols();
  for (size_t i = 0; i < a.size(); ++i)
    a[i] =
        mod::measure_attributes(idx.images.data.data() + int64_t(i) * px, idx.rows(), idx.cols());
  return a;
}

}  // namespace

FederatedData load_fmnist_captions(const Config& cfg, const torch::Device& device,
                                   const std::string& vocab_path) {
  const auto& dc = cfg.data;
  FederatedData out;
  RawSplit train{mod::read_idx_split(dc.root, "train", out.num_classes), {}, {}};
  RawSplit test{mod::read_idx_split(dc.root, "t10k", out.num_classes), {}, {}};
  MMFL_CHECK(train.idx.rows() == test.idx.rows() && train.idx.cols() == test.idx.cols(),
             "data.root '", dc.root, "': train images are ", train.idx.rows(), "x",
             train.idx.cols(), " but test images are ", test.idx.rows(), "x", test.idx.cols());
  out.height = train.idx.rows();
  out.width = train.idx.cols();

  // Attribute thresholds come from the training split only; the test split reuses them.
  const auto train_attrs = measure_split(train.idx);
  const auto model = mod::CaptionModel::fit(train_attrs, train.idx.labels.data);
  caption_split(train, model, train_attrs, dc.caption_seed, 0);
  caption_split(test, model, measure_split(test.idx), dc.caption_seed, 1);

  const int64_t n_train = train.idx.count();
  MMFL_CHECK(dc.public_size < n_train, "data.public_size = ", dc.public_size,
             " leaves no training samples for the clients (the train split holds ", n_train, ")");
  std::vector<int64_t> perm(static_cast<size_t>(n_train));
  std::iota(perm.begin(), perm.end(), 0);
  auto rng = make_rng(cfg.seed, kStreamSplit);
  std::shuffle(perm.begin(), perm.end(), rng);
  std::vector<int64_t> pub(perm.begin(), perm.begin() + dc.public_size);
  std::vector<int64_t> pool(perm.begin() + dc.public_size, perm.end());
  if (dc.train_limit > 0 && dc.train_limit < int64_t(pool.size()))
    pool.resize(size_t(dc.train_limit));
  std::sort(pub.begin(), pub.end());
  std::sort(pool.begin(), pool.end());

  if (vocab_path.empty()) {
    std::vector<std::string> text;
    for (int64_t r : pool)
      text.push_back(train.captions[size_t(r)]);
    for (int64_t r : pub)
      text.push_back(train.captions[size_t(r)]);
    out.tokenizer = std::make_shared<mod::Tokenizer>(mod::Tokenizer::build(text));
  } else {
    out.tokenizer = std::make_shared<mod::Tokenizer>(mod::Tokenizer::load(vocab_path));
  }

  std::vector<int64_t> test_rows(size_t(test.idx.count()));
  std::iota(test_rows.begin(), test_rows.end(), 0);
  if (dc.test_limit > 0 && dc.test_limit < int64_t(test_rows.size()))
    test_rows.resize(size_t(dc.test_limit));

  // The pretrained text tower reads its own WordPiece ids; the other encoders the vocabulary
  // built above.
  Encode encode = [tok = out.tokenizer](const std::string& text, int64_t n) {
    return tok->encode(text, n);
  };
  if (cfg.model.text.kind == mod::TextEncoderKind::kMiniLm) {
    const std::string dir = fusion::resolve_minilm_dir(cfg.model.pretrained_text_path,
                                                       "set config key model.pretrained_text_path");
    auto wp = std::make_shared<mod::WordPieceTokenizer>(
        mod::WordPieceTokenizer::load(dir + "/vocab.txt"));
    encode = [wp](const std::string& text, int64_t n) {
      return fusion::encode_padded(*wp, text, n);
    };
  }
  out.pool = to_tensors(train, pool, encode, dc.max_tokens, device);
  out.public_set = to_tensors(train, pub, encode, dc.max_tokens, device);
  out.test = to_tensors(test, test_rows, encode, dc.max_tokens, device);

  // A fixed retrieval subset, the same for every run with this seed.
  MMFL_CHECK(dc.retrieval_pairs <= out.test.size(),
             "config key 'data.retrieval_pairs' = ", dc.retrieval_pairs, " is more than the ",
             out.test.size(), " test images in '", dc.root, "'",
             dc.test_limit > 0 ? " (after data.test_limit)" : "", "; lower data.retrieval_pairs");
  const int64_t r = dc.retrieval_pairs;
  std::vector<int64_t> order(size_t(out.test.size()));
  std::iota(order.begin(), order.end(), 0);
  auto rrng = make_rng(cfg.seed, kStreamRetrieval);
  std::shuffle(order.begin(), order.end(), rrng);
  order.resize(size_t(r));
  std::sort(order.begin(), order.end());
  out.retrieval = torch::tensor(order, torch::kInt64).to(device);
  std::vector<int64_t> keys;
  for (int64_t i : order)
    keys.push_back(out.test.keys[size_t(i)]);
  const int ks[3] = {1, 5, 10};
  for (int i = 0; i < 3; ++i)
    out.oracle_recall[i] = mod::oracle_recall_at(keys, ks[i]);
  return out;
}

}  // namespace mmfl::engine
