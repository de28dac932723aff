#include "fusion/moe/moma.h"

#include <torch/nn/functional/activation.h>
#include <torch/nn/init.h>

#include <cmath>

#include "fusion/ops/moe.h"
#include "mmfl/error.h"

namespace mmfl::fusion {

namespace F = torch::nn::functional;

std::string to_string(MoeRoutingKind k) {
  switch (k) {
    case MoeRoutingKind::kExpertChoice:
      return "expert_choice";
    case MoeRoutingKind::kTokenChoice:
      return "token_choice";
    case MoeRoutingKind::kDense:
      return "dense";
    default:
      MMFL_FAIL("unknown MoeRoutingKind ", static_cast<int>(k));
  }
}

std::string to_string(MoeFfnKind k) {
  switch (k) {
    case MoeFfnKind::kModality:
      return "modality";
    case MoeFfnKind::kShared:
      return "shared";
    default:
      MMFL_FAIL("unknown MoeFfnKind ", static_cast<int>(k));
  }
}

std::string to_string(MoeImpl k) {
  switch (k) {
    case MoeImpl::kFused:
      return "fused";
    case MoeImpl::kLoop:
      return "loop";
    default:
      MMFL_FAIL("unknown MoeImpl ", static_cast<int>(k));
  }
}

int64_t ParamGroup::numel() const {
  int64_t n = 0;
  for (const auto& s : slices)
    n += s.view().numel();
  return n;
}

ModalityMoe::ModalityMoe(const MoeOptions& o) : impl_(o.impl) {
  if (o.ffn_kind == MoeFfnKind::kShared) {
    names_ = {"shared"};
    groups_ = {MoeGroupOptions{1, MoeRoutingKind::kDense, 1}};
  } else {
    names_ = {"image", "text"};
    groups_ = {o.image, o.text};
  }
  begin_ = {0};
  for (const auto& g : groups_) {
    MMFL_CHECK(g.experts >= 1, "ModalityMoe: a group needs at least one expert");
    MMFL_CHECK(g.routing != MoeRoutingKind::kDense || g.experts == 1,
               "ModalityMoe: a dense group has exactly one expert");
    begin_.push_back(begin_.back() + g.experts);
  }
  const int64_t E = begin_.back(), d = o.d_model, f = o.ffn;
  // nn.Linear's default init (uniform +-1/sqrt(fan_in)) per expert.
  const double a1 = 1.0 / std::sqrt(double(d)), a2 = 1.0 / std::sqrt(double(f));
  w1 = register_parameter("w1", torch::empty({E, f, d}).uniform_(-a1, a1));
  b1 = register_parameter("b1", torch::empty({E, f}).uniform_(-a1, a1));
  w2 = register_parameter("w2", torch::empty({E, d, f}).uniform_(-a2, a2));
  b2 = register_parameter("b2", torch::empty({E, d}).uniform_(-a2, a2));
  for (size_t g = 0; g < groups_.size(); ++g) {
    if (groups_[g].routing == MoeRoutingKind::kDense) {
      routers_.emplace_back(nullptr);
      continue;
    }
    routers_.push_back(register_module(
        "router_" + names_[g],
        torch::nn::Linear(torch::nn::LinearOptions(d, groups_[g].experts).bias(false))));
  }
}

MoeLayerOutput ModalityMoe::forward(const torch::Tensor& x, const std::vector<torch::Tensor>& rows,
                                    bool trace) {
  MMFL_CHECK(rows.size() == groups_.size(), "ModalityMoe: ", groups_.size(),
             " groups of rows expected, got ", rows.size());
  MoeLayerOutput out;
  out.aux = torch::zeros({}, x.options());
  out.tokens.assign(size_t(experts()), 0);
  std::vector<ops::MoeRouting> parts;
  std::vector<torch::Tensor> maps;
  const auto i64 = x.options().dtype(torch::kInt64);
  for (size_t g = 0; g < groups_.size(); ++g) {
    const auto& go = groups_[g];
    const int64_t T = rows[g].defined() ? rows[g].size(0) : 0;
    if (T == 0) {  // no token of this modality in the batch: its experts get no slots
      parts.push_back({torch::zeros({0}, i64), std::vector<int64_t>(size_t(go.experts + 1), 0),
                       torch::zeros({0}, x.options())});
      maps.emplace_back();
      continue;
    }
    ops::MoeRouting r;
    torch::Tensor scores;
    if (go.routing == MoeRoutingKind::kDense) {
      r.order = torch::arange(T, i64);
      r.offsets = {0, T};
      r.gate = torch::ones({T}, x.options());
    } else {
      const auto logits = routers_[g]->forward(x.index_select(0, rows[g]));  // [T_g, E_g]
      if (go.routing == MoeRoutingKind::kExpertChoice) {
        // MoMa: capacity = the group's tokens / its experts, so every token is processed once
        // on average and the experts are balanced by construction (no auxiliary loss).
        r = ops::route_expert_choice(logits, std::max<int64_t>(1, T / go.experts));
        if (trace) scores = torch::sigmoid(logits.detach());
      } else {
        const int64_t k = std::min(go.top_k, go.experts);
        r = ops::route_token_choice(logits, k);
        const auto probs = torch::softmax(logits, 1);
        // Switch Transformer eq. 4: E * sum_e f_e P_e, f_e the fraction of the group's slots
        // routed to e (not differentiable), P_e the mean router probability of e.
        std::vector<float> frac(size_t(go.experts));
        for (int64_t e = 0; e < go.experts; ++e)
          frac[size_t(e)] = float(r.offsets[size_t(e + 1)] - r.offsets[size_t(e)]) / float(T * k);
        const auto f = torch::tensor(frac, x.options());
        out.aux = out.aux + double(go.experts) * (f * probs.mean(0)).sum();
        if (trace) scores = probs.detach();
      }
    }
    for (int64_t e = 0; e < go.experts; ++e)
      out.tokens[size_t(begin_[g] + e)] = r.offsets[size_t(e + 1)] - r.offsets[size_t(e)];
    if (trace) out.trace.push_back({names_[g], scores, r.order.detach().clone(), r.offsets});
    parts.push_back(std::move(r));
    maps.push_back(rows[g]);  // group-local token -> row of x (increasing, so slot order holds)
  }
  // Every group's slots in one routing over the rows of x: one moe_ffn call for all groups.
  const auto all = ops::concat_routings(parts, maps);
  out.y = impl_ == MoeImpl::kFused ? ops::moe_ffn(x, all, w1, b1, w2, b2)
                                   : ops::moe_ffn_loop(x, all, w1, b1, w2, b2);
  return out;
}

MomaModel::MomaModel(const MoeOptions& o, int64_t vocab, int64_t max_tokens, int64_t height,
                     int64_t width, int64_t embed_dim)
    : o_(o), embed_dim_(embed_dim), height_(height), width_(width), max_tokens_(max_tokens) {
  MMFL_CHECK(o.patch >= 1 && height % o.patch == 0 && width % o.patch == 0,
             "config key 'moe.patch' = ", o.patch, " must divide the image size ", height, "x",
             width);
  MMFL_CHECK(o.d_model % o.heads == 0, "config key 'moe.heads' = ", o.heads,
             " must divide moe.d_model = ", o.d_model);
  const int64_t d = o.d_model, patches = (height / o.patch) * (width / o.patch);
  patch_embed_ = register_module("patch_embed", torch::nn::Linear(o.patch * o.patch, d));
  image_pos_ = register_parameter("image_pos", torch::randn({patches, d}) * 0.02);
  text_embed_ = register_module("text_embed", torch::nn::Embedding(vocab, d));
  text_pos_ = register_parameter("text_pos", torch::randn({max_tokens, d}) * 0.02);
  {
    torch::NoGradGuard no_grad;
    text_embed_->weight.mul_(0.02);
  }
  for (int64_t l = 0; l < o.layers; ++l) {
    Block b;
    const std::string p = "block" + std::to_string(l) + "_";
    b.ln1 = register_module(p + "ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
    b.qkv = register_module(p + "qkv", torch::nn::Linear(d, 3 * d));
    b.out = register_module(p + "out", torch::nn::Linear(d, d));
    b.ln2 = register_module(p + "ln2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
    b.moe = register_module(p + "moe", std::make_shared<ModalityMoe>(o));
    blocks_.push_back(b);
  }
  final_ln_ = register_module("final_ln", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
  image_proj_ = register_module("image_proj", torch::nn::Linear(d, embed_dim));
  text_proj_ = register_module("text_proj", torch::nn::Linear(d, embed_dim));
}

torch::Tensor MomaModel::attend(Block& b, const torch::Tensor& h, const torch::Tensor& key_mask) {
  const int64_t B = h.size(0), S = h.size(1), d = o_.d_model, H = o_.heads, dh = d / H;
  const auto qkv =
      b.qkv->forward(b.ln1->forward(h)).view({B, S, 3, H, dh}).permute({2, 0, 3, 1, 4});
  auto scores = torch::matmul(qkv[0], qkv[1].transpose(-2, -1)) / std::sqrt(double(dh));
  // Padding keys get a large negative score (not -inf: a caption of padding only stays finite).
  if (key_mask.defined())
    scores = scores.masked_fill(key_mask.logical_not().view({B, 1, 1, S}), -1e9);
  const auto ctx = torch::matmul(torch::softmax(scores, -1), qkv[2]);  // [B, H, S, dh]
  return h + b.out->forward(ctx.permute({0, 2, 1, 3}).reshape({B, S, d}));
}

MomaOutput MomaModel::forward(const torch::Tensor& images, const torch::Tensor& tokens,
                              bool trace) {
  const int64_t d = o_.d_model, p = o_.patch;
  MomaOutput out;
  torch::Tensor hi, ht, mask, valid;
  const auto opts = patch_embed_->weight.options();
  if (images.defined()) {
    const int64_t B = images.size(0);
    const auto patches = images.reshape({B, height_ / p, p, width_ / p, p})
                             .permute({0, 1, 3, 2, 4})
                             .reshape({B, -1, p * p});
    hi = patch_embed_->forward(patches) + image_pos_;
  }
  if (tokens.defined()) {
    const int64_t L = tokens.size(1);
    MMFL_CHECK(L <= max_tokens_, "MomaModel: ", L, " tokens per caption, at most ", max_tokens_);
    mask = tokens.ne(0);
    ht = text_embed_->forward(tokens) + text_pos_.narrow(0, 0, L);
    valid = mask.reshape({-1}).nonzero().reshape({-1});  // the experts see real tokens only
  }
  const int64_t ni = hi.defined() ? hi.size(0) * hi.size(1) : 0;
  const int64_t nt = valid.defined() ? valid.size(0) : 0;
  const auto i64 = opts.dtype(torch::kInt64);
  out.aux = torch::zeros({}, opts);
  for (auto& b : blocks_) {
    if (hi.defined()) hi = attend(b, hi, {});
    if (ht.defined()) ht = attend(b, ht, mask);
    std::vector<torch::Tensor> parts;
    if (hi.defined()) parts.push_back(b.ln2->forward(hi).reshape({-1, d}));
    if (ht.defined()) parts.push_back(b.ln2->forward(ht).reshape({-1, d}).index_select(0, valid));
    const auto x = parts.size() == 1 ? parts[0] : torch::cat(parts);
    std::vector<torch::Tensor> rows;
    if (o_.ffn_kind == MoeFfnKind::kShared) {
      rows = {torch::arange(ni + nt, i64)};
    } else {
      rows = {torch::arange(ni, i64), torch::arange(ni, ni + nt, i64)};
    }
    auto r = b.moe->forward(x, rows, trace);
    out.aux = out.aux + r.aux;
    out.tokens.insert(out.tokens.end(), r.tokens.begin(), r.tokens.end());
    if (trace) out.trace.push_back(std::move(r.trace));
    if (hi.defined()) hi = hi + r.y.narrow(0, 0, ni).view_as(hi);
    if (ht.defined()) {
      const auto yt = torch::zeros({ht.size(0) * ht.size(1), d}, opts)
                          .index_copy(0, valid, r.y.narrow(0, ni, nt));
      ht = ht + yt.view_as(ht);
    }
  }
  if (hi.defined()) out.image = image_proj_->forward(final_ln_->forward(hi).mean(1));
  if (ht.defined()) {
    const auto m = mask.unsqueeze(2).to(opts.dtype());
    const auto pooled = (final_ln_->forward(ht) * m).sum(1) / m.sum(1).clamp_min(1.0);
    out.text = text_proj_->forward(pooled);
  }
  return out;
}

std::vector<ParamGroup> MomaModel::groups(
    const std::shared_ptr<torch::nn::Module>& image_head,
    const std::shared_ptr<torch::nn::Module>& text_head) const {
  ParamGroup shared{"shared", {}}, image{"image", {}}, text{"text", {}};
  std::vector<ParamGroup> experts;
  auto whole = [](ParamGroup& g, const torch::nn::Module& m) {
    for (const auto& p : m.parameters())
      g.slices.push_back({p, -1});
  };
  whole(image, *patch_embed_);
  image.slices.push_back({image_pos_, -1});
  whole(image, *image_proj_);
  whole(text, *text_embed_);
  text.slices.push_back({text_pos_, -1});
  whole(text, *text_proj_);
  for (size_t l = 0; l < blocks_.size(); ++l) {
    const auto& b = blocks_[l];
    whole(shared, *b.ln1);
    whole(shared, *b.qkv);
    whole(shared, *b.out);
    whole(shared, *b.ln2);
    const auto& m = *b.moe;
    for (size_t g = 0; g < m.group_names().size(); ++g) {
      const auto& name = m.group_names()[g];
      if (m.router(g)) whole(name == "text" ? text : image, *m.router(g));
      for (int64_t e = 0; e < m.group_experts(g); ++e) {
        const int64_t row = m.group_begin(g) + e;
        experts.push_back({"moe." + std::to_string(l) + "." + name + "." + std::to_string(e),
                           {{m.w1, row}, {m.b1, row}, {m.w2, row}, {m.b2, row}}});
      }
    }
  }
  whole(shared, *final_ln_);
  if (image_head) whole(image, *image_head);
  if (text_head) whole(text, *text_head);
  std::vector<ParamGroup> out = {shared, image, text};
  out.insert(out.end(), experts.begin(), experts.end());
  return out;
}

MomaEncoder::MomaEncoder(std::shared_ptr<MomaModel> model, Side side)
    : model_(register_module("moma", std::move(model))), side_(side) {}

torch::Tensor MomaEncoder::forward(const torch::Tensor& x) {
  return side_ == Side::kImage ? model_->forward(x, {}).image : model_->forward({}, x).text;
}

}  // namespace mmfl::fusion
