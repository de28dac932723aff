// mmfl_bench: the kernels of kernels/ against LibTorch compositions of the same math.
//   mmfl_bench [--device cpu|cuda|all] [--filter SUBSTR] [--quick] [--json FILE]
// Filters: gemm, aggregate, pool, topk, infonce, ensemble, regularizer, mlora, moe.
// CPU rows compare the CPU path with LibTorch's CPU ops; CUDA rows (when a GPU is visible) use
// CUDA events, an L2 flush between repeats and the copy-bandwidth / GEMM ceilings measured here.
#include <torch/torch.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "bench/harness.h"
#include "fusion/contrastive.h"
#include "fusion/creamfl.h"
#include "fusion/ops/cpu_context.h"
#include "fusion/ops/moe.h"
#include "fusion/ops/multi_lora.h"
#include "fusion/ops/sparse.h"
#include "mmfl/error.h"
#include "mmfl/host_malloc.h"
#include "mmfl/kernels/aggregate.h"
#include "mmfl/kernels/bank_ce.h"
#include "mmfl/kernels/cpu.h"
#include "mmfl/kernels/infonce.h"
#include "mmfl/kernels/multi_lora.h"
#include "mmfl/kernels/sparse.h"
#include "modalities/image/pool.h"

#ifdef MMFL_HAVE_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include "mmfl/kernels/cuda_check.h"
#endif

namespace mmfl::bench {
namespace {

namespace k = mmfl::kernels;

struct Options {
  bool cpu = true, cuda = true, quick = false;
  std::string filter, json;
};

bool selected(const Options& o, const std::string& name) {
  return o.filter.empty() || name.find(o.filter) != std::string::npos;
}

std::string shape_kn(int64_t kk, int64_t n) {
  return "K=" + std::to_string(kk) + " n=" + std::to_string(n);
}
std::string shape_nd(int64_t n, int64_t d) {
  return "N=" + std::to_string(n) + " D=" + std::to_string(d);
}

// ---- CPU ----------------------------------------------------------------------------------------

double host_copy_bandwidth() {
  const size_t bytes = size_t(256) << 20;
  std::vector<char> a(bytes, 1), b(bytes, 2);
  const auto t = time_cpu([&] { std::memcpy(b.data(), a.data(), bytes); }, 1, 5);
  return 2.0 * double(bytes) / (t.median_ms * 1e-3);  // read + write
}

double cpu_gemm_flops(int64_t n, int64_t d) {
  const auto a = torch::randn({n, d}), b = torch::randn({d, n});
  const auto t = time_cpu([&] { torch::matmul(a, b); }, 1, 5, 5.0);
  return 2.0 * double(n) * double(n) * double(d) / (t.median_ms * 1e-3);
}

// The choice between the hand-written GEMM and a library GEMM on tiles: both single-threaded (the
// ops call their GEMM from inside their tasks) on the tile shapes the ops use.
void bench_tile_gemm(Report& rep) {
  const int threads = torch::get_num_threads();
  torch::set_num_threads(1);
  for (int64_t d : {256, 512}) {
    const int64_t t = 128;
    const auto a = torch::randn({t, d}), b = torch::randn({t, d}), p = torch::randn({t, t});
    auto s = torch::empty({t, t}), g = torch::zeros({t, d});
    const auto bt = b.t();
    for (int shape = 0; shape < 2; ++shape) {
      Row r;
      r.backend = "cpu";
      r.flops = 2.0 * double(t) * double(t) * double(d);
      if (shape == 0) {  // S = A B^T
        r.op = "tile_gemm_nt";
        r.shape = "128x128 k=" + std::to_string(d);
        r.kernel = time_cpu(
            [&] {
              k::cpu::sgemm(k::cpu::Transpose::kNo, k::cpu::Transpose::kYes, t, t, d,
                            a.data_ptr<float>(), d, b.data_ptr<float>(), d, 0.0f,
                            s.data_ptr<float>(), t);
            },
            20, 200, 1.0);
        r.baseline = time_cpu([&] { torch::mm_out(s, a, bt); }, 20, 200, 1.0);
      } else {  // grad += P B
        r.op = "tile_gemm_nn";
        r.shape = "128x" + std::to_string(d) + " k=128";
        r.kernel = time_cpu(
            [&] {
              k::cpu::sgemm(k::cpu::Transpose::kNo, k::cpu::Transpose::kNo, t, d, t,
                            p.data_ptr<float>(), t, b.data_ptr<float>(), d, 1.0f,
                            g.data_ptr<float>(), d);
            },
            20, 200, 1.0);
        r.baseline = time_cpu([&] { g.addmm_(p, b); }, 20, 200, 1.0);
      }
      r.note = "1 thread; baseline: LibTorch mm on the same tile";
      rep.add(r);
    }
  }
  torch::set_num_threads(threads);
}

// ---- Multi-adapter LoRA (CPU and CUDA rows from the same code) ----------------------------------

// One training step of a LoRA layer for a cohort of clients: forward and backward (gradients for
// the input and every client's A and B; the base W, b frozen). Kernel: one multi_lora_linear call
// over all clients' rows. Baseline: a loop of per-client LibTorch LoRA modules (x_c W^T + b +
// s (x_c A_c^T) B_c^T, autograd per client), what a federated simulator without the op runs.
// `time` is time_cpu or time_gpu; `ceiling` the device's measured GEMM rate.
void bench_mlora_rows(const Options& o, Report& rep, torch::Device dev,
                      const std::function<Timing(const std::function<void()>&)>& time,
                      double ceiling) {
  const int64_t clients = o.quick ? 32 : 256, rows_per_client = 64;
  const int64_t rows = clients * rows_per_client;
  std::vector<int64_t> offsets(clients + 1);
  for (int64_t c = 0; c <= clients; ++c)
    offsets[c] = c * rows_per_client;
  const auto opts = torch::TensorOptions().device(dev);
  for (auto [in, out] :
       std::vector<std::pair<int64_t, int64_t>>{{1024, 1024}, {384, 384}, {384, 1536}}) {
    for (int64_t rank : {8, 64}) {
      const double scale = 16.0 / double(rank);
      const auto w = torch::randn({out, in}, opts) / std::sqrt(double(in));
      const auto bias = torch::randn({out}, opts);
      const auto x = torch::randn({rows, in}, opts);
      const auto gy = torch::randn({rows, out}, opts);
      const auto a =
          (torch::randn({clients, rank, in}, opts) / std::sqrt(double(in))).requires_grad_();
      const auto b = (torch::randn({clients, out, rank}, opts) * 0.01).requires_grad_();
      Row r;
      r.op = "mlora_train_step";
      r.backend = dev.is_cuda() ? "cuda" : "cpu";
      r.shape = std::to_string(out) + "x" + std::to_string(in) + " r=" + std::to_string(rank) +
                " " + std::to_string(clients) + "x" + std::to_string(rows_per_client) + " rows";
      auto xk = x.clone().requires_grad_();
      r.kernel = time([&] {
        a.mutable_grad() = torch::Tensor();
        b.mutable_grad() = torch::Tensor();
        xk.mutable_grad() = torch::Tensor();
        fusion::ops::multi_lora_linear(xk, w, bias, a, b, offsets, scale).backward(gy);
      });
      // The baseline's per-client modules: their own leaf A_c, B_c and input.
      std::vector<torch::Tensor> as, bs, xs, gys;
      for (int64_t c = 0; c < clients; ++c) {
        as.push_back(a[c].detach().clone().requires_grad_());
        bs.push_back(b[c].detach().clone().requires_grad_());
        xs.push_back(x.narrow(0, offsets[c], rows_per_client).clone().requires_grad_());
        gys.push_back(gy.narrow(0, offsets[c], rows_per_client).contiguous());
      }
      namespace F = torch::nn::functional;
      r.baseline = time([&] {
        for (int64_t c = 0; c < clients; ++c) {
          as[c].mutable_grad() = torch::Tensor();
          bs[c].mutable_grad() = torch::Tensor();
          xs[c].mutable_grad() = torch::Tensor();
          const auto y =
              F::linear(xs[c], w, bias) + scale * F::linear(F::linear(xs[c], as[c]), bs[c]);
          y.backward(gys[c]);
        }
      });
      // The frozen base alone (x W^T + b, then gy W): the floor both sides share.
      const Timing base = time([&] {
        const auto y = torch::addmm(bias, x, w.t());
        const auto gx = torch::mm(gy, w);
      });
      // The multi-adapter kernels alone (forward and backward, outputs preallocated).
      const k::MultiLoraShape ms{clients, rows, in, out, rank};
      const auto off = torch::tensor(offsets, torch::kInt64).to(dev);
      auto h = torch::empty({rows, rank}, opts), g = torch::empty({rows, rank}, opts);
      auto ya = torch::zeros({rows, out}, opts), gxa = torch::zeros({rows, in}, opts);
      auto gA = torch::empty_like(a), gB = torch::empty_like(b);
      const float* xa = x.data_ptr<float>();
      const float* aa = a.data_ptr<float>();
      const float* ba = b.data_ptr<float>();
      const Timing adapter = time([&] {
        if (dev.is_cpu()) {
          const k::cpu::Context ctx = fusion::ops::cpu_context();
          k::cpu::multi_lora_forward(xa, aa, ba, off.data_ptr<int64_t>(), ms, float(scale),
                                     h.data_ptr<float>(), ya.data_ptr<float>(), ctx);
          k::cpu::multi_lora_backward(xa, aa, ba, off.data_ptr<int64_t>(), ms, float(scale),
                                      h.data_ptr<float>(), gy.data_ptr<float>(),
                                      g.data_ptr<float>(), gxa.data_ptr<float>(),
                                      gA.data_ptr<float>(), gB.data_ptr<float>(), ctx);
        } else {
#ifdef MMFL_HAVE_CUDA
          const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
          k::cuda::multi_lora_forward(xa, aa, ba, off.data_ptr<int64_t>(), ms, float(scale),
                                      h.data_ptr<float>(), ya.data_ptr<float>(), stream);
          k::cuda::multi_lora_backward(xa, aa, ba, off.data_ptr<int64_t>(), ms, float(scale),
                                       h.data_ptr<float>(), gy.data_ptr<float>(),
                                       g.data_ptr<float>(), gxa.data_ptr<float>(),
                                       gA.data_ptr<float>(), gB.data_ptr<float>(), stream);
#endif
        }
      });
      // Useful FLOPs: base forward and input gradient 4 R in out; adapter 6 R r (in + out).
      r.flops = 4.0 * double(rows) * double(in) * double(out) +
                6.0 * double(rows) * double(rank) * double(in + out);
      r.ceiling = ceiling;
      r.ceiling_name = dev.is_cuda() ? "LibTorch GPU GEMM" : "LibTorch CPU GEMM";
      char note[256];
      std::snprintf(note, sizeof note,
                    "clients/s %.0f vs %.0f (loop); base GEMMs alone %.1f ms, adapter kernels "
                    "alone %.1f ms",
                    double(clients) / (r.kernel.median_ms * 1e-3),
                    double(clients) / (r.baseline.median_ms * 1e-3), base.median_ms,
                    adapter.median_ms);
      r.note = note;
      rep.add(r);
    }
  }
}

// ---- Mixture of modality-aware experts (MoMa) layer (CPU and CUDA rows from the same code) ------

// One MoE FFN layer, forward and backward, over T tokens of which the first half are image tokens
// and the second half text tokens; 4 image and 4 text experts of d -> f -> d (GELU), expert choice
// inside each modality group (capacity = group tokens / group experts, so S = T slots), sigmoid
// gates from a linear router per group. Gradients for x, the router and every expert.
//   op:    route_expert_choice per group + one moe_ffn call over both groups' 8 experts
//   loop:  the same routing + moe_ffn_loop (index_select / index_add per expert, autograd)
//   dense: one FFN of d -> f -> d over all T tokens (the same active FLOPs), LibTorch autograd
// Cost model: 12 S d f useful FLOPs (2 GEMMs forward, 4 backward); the router's 6 T d E and the
// elementwise work are not counted. Ceiling: LibTorch's GEMM on [T, d] x [d, f] in the same run.
struct MoeBenchShape {
  int64_t tokens, model, hidden;
};

void bench_moe_rows(const Options& o, Report& rep, torch::Device dev,
                    const std::function<Timing(const std::function<void()>&)>& time,
                    const std::vector<MoeBenchShape>& shapes) {
  namespace F = torch::nn::functional;
  const auto opts = torch::TensorOptions().device(dev);
  const int64_t per_group = 4, experts = 2 * per_group;
  for (const MoeBenchShape& sh : shapes) {
    const int64_t t = sh.tokens, d = sh.model, f = sh.hidden, half = t / 2;
    const int64_t capacity = half / per_group;
    const auto x0 = torch::randn({t, d}, opts);
    const auto gy = torch::randn({t, d}, opts);
    auto leaf = [](torch::Tensor v) { return v.requires_grad_(); };
    const auto router = leaf(torch::randn({2, d, per_group}, opts) / std::sqrt(double(d)));
    const auto w1 = leaf(torch::randn({experts, f, d}, opts) / std::sqrt(double(d)));
    const auto b1 = leaf(torch::zeros({experts, f}, opts));
    const auto w2 = leaf(torch::randn({experts, d, f}, opts) / std::sqrt(double(f)));
    const auto b2 = leaf(torch::zeros({experts, d}, opts));
    auto x = x0.clone().requires_grad_();
    const auto text_tokens = torch::arange(half, t, opts.dtype(torch::kInt64));
    // Both groups' routings as one: the text group's tokens are offset by T/2, its experts follow
    // the image group's.
    auto route = [&]() {
      const auto img =
          fusion::ops::route_expert_choice(torch::mm(x.narrow(0, 0, half), router[0]), capacity);
      const auto txt = fusion::ops::route_expert_choice(
          torch::mm(x.narrow(0, half, t - half), router[1]), capacity);
      return fusion::ops::concat_routings({img, txt}, {torch::Tensor(), text_tokens});
    };
    std::vector<torch::Tensor> params{x, router, w1, b1, w2, b2};
    auto clear = [&] {
      for (auto& p : params)
        p.mutable_grad() = torch::Tensor();
    };
    const Timing op = time([&] {
      clear();
      fusion::ops::moe_ffn(x, route(), w1, b1, w2, b2).backward(gy);
    });
    const Timing loop = time([&] {
      clear();
      fusion::ops::moe_ffn_loop(x, route(), w1, b1, w2, b2).backward(gy);
    });
    const auto dw1 = leaf(torch::randn({f, d}, opts) / std::sqrt(double(d)));
    const auto db1 = leaf(torch::zeros({f}, opts));
    const auto dw2 = leaf(torch::randn({d, f}, opts) / std::sqrt(double(f)));
    const auto db2 = leaf(torch::zeros({d}, opts));
    std::vector<torch::Tensor> dense_params{x, dw1, db1, dw2, db2};
    const Timing dense = time([&] {
      for (auto& p : dense_params)
        p.mutable_grad() = torch::Tensor();
      F::linear(F::gelu(F::linear(x, dw1, db1)), dw2, db2).backward(gy);
    });
    // The ceiling: LibTorch's GEMM of the FFN's first product.
    const auto ga = torch::randn({t, d}, opts), gb = torch::randn({d, f}, opts);
    const Timing gemm = time([&] { torch::mm(ga, gb); });
    const double ceiling = 2.0 * double(t) * double(d) * double(f) / (gemm.median_ms * 1e-3);
    const double slots = double(experts * capacity);
    const double flops = 12.0 * slots * double(d) * double(f);
    // Bytes (model): w1 and w2 (2 E d f floats) read forward, read backward and their gradients
    // written (6 E d f); the saved activations x_slots, pre, act, out (S (2 d + 2 f)) and the
    // backward's grad_out, grad_pre, grad_x_slots (S (2 d + f)) each written once and read once.
    const double bytes = 4.0 * (6.0 * double(experts) * double(d) * double(f) +
                                2.0 * slots * (4.0 * double(d) + 3.0 * double(f)));
    char shape[160];
    std::snprintf(shape, sizeof shape, "T=%lld (%lld img + %lld txt) d=%lld f=%lld 4+4 EC",
                  (long long)t, (long long)half, (long long)(t - half), (long long)d, (long long)f);
    for (int which = 0; which < 2; ++which) {
      Row r;
      r.op = which == 0 ? "moe_layer_vs_dense" : "moe_layer_vs_loop";
      r.backend = dev.is_cuda() ? "cuda" : "cpu";
      r.shape = shape;
      r.kernel = op;
      r.baseline = which == 0 ? dense : loop;
      r.flops = flops;
      r.ceiling = ceiling;
      r.ceiling_name =
          dev.is_cuda() ? "LibTorch GPU GEMM [T,d]x[d,f]" : "LibTorch CPU GEMM [T,d]x[d,f]";
      char note[256];
      std::snprintf(note, sizeof note,
                    "op/dense %.2fx (target <= %.1fx), loop/op %.2fx (target >= %.0fx); "
                    "dense %.1f ms, loop %.1f ms; %.0f MB moved (model)",
                    op.median_ms / dense.median_ms, dev.is_cuda() ? 1.2 : 1.5,
                    loop.median_ms / op.median_ms, dev.is_cuda() ? 3.0 : 2.0, dense.median_ms,
                    loop.median_ms, bytes / 1e6);
      r.note = note;
      rep.add(r);
    }
  }
  (void)o;
}

// ---- Top-k + pack + aggregate (sparse LoRA updates)
// ---------------------------------------------- 1,000 clients' deltas of a rank-r LoRA adapter on
// a 1024x1024 layer (A and B: n = 2 r 1024 values each), sparsified to a density, packed, and
// aggregated. The LibTorch composition is the obvious one: topk of |x| (unsorted), gather of the
// signed values, the residual as a clone with the sent entries zeroed, and index_add_ of the
// weighted values. Cost model: one read of all deltas (C n 4 bytes), against the copy bandwidth
// measured in the same run.
struct TopkShape {
  int64_t rank;
  double density;
};

std::vector<TopkShape> topk_shapes(const Options& o) {
  if (o.quick) return {{8, 0.01}};
  return {{8, 0.01}, {8, 0.1}, {64, 0.01}, {64, 0.1}};
}

std::string topk_shape_name(int64_t clients, const TopkShape& s, int64_t n, int64_t k) {
  char buf[96];
  std::snprintf(buf, sizeof(buf), "C=%lld r=%lld n=%lld %g%% k=%lld", (long long)clients,
                (long long)s.rank, (long long)n, s.density * 100, (long long)k);
  return buf;
}

// The LibTorch baseline: packets (unsorted indices), residual and aggregate.
torch::Tensor torch_topk_pack_aggregate(const torch::Tensor& x, const torch::Tensor& w, int64_t k) {
  const auto idx = std::get<1>(torch::topk(x.abs(), k, 1, /*largest=*/true, /*sorted=*/false));
  const auto vals = x.gather(1, idx);
  auto residual = x.clone();
  residual.scatter_(1, idx, 0.0);
  return torch::zeros({x.size(1)}, x.options())
      .index_add_(0, idx.flatten(), (vals * w.unsqueeze(1)).flatten());
}

void bench_topk_cpu(const Options& o, Report& rep, const k::cpu::Context& ctx) {
  const double bw = host_copy_bandwidth();
  std::printf("# host copy bandwidth (memcpy 256 MiB, read+write): %.2f GB/s\n", bw / 1e9);
  const int64_t clients = o.quick ? 100 : 1000;
  for (const TopkShape& s : topk_shapes(o)) {
    const int64_t n = 2 * s.rank * 1024;
    const int64_t kk = fusion::ops::topk_count(s.density, n, "bench density");
    const auto x = torch::randn({clients, n});
    const auto w = torch::rand({clients}) / double(clients);
    auto idx = torch::empty({clients, kk}, torch::kInt32);
    auto val = torch::empty({clients, kk});
    auto res = torch::empty({clients, n});
    auto out = torch::empty({n});
    Row r;
    r.op = "topk_pack_agg";
    r.backend = "cpu";
    r.shape = topk_shape_name(clients, s, n, kk);
    r.kernel = time_cpu(
        [&] {
          k::cpu::topk_by_magnitude(x.data_ptr<float>(), clients, n, kk, idx.data_ptr<int32_t>(),
                                    val.data_ptr<float>(), res.data_ptr<float>(), ctx);
          k::cpu::sparse_weighted_sum(idx.data_ptr<int32_t>(), val.data_ptr<float>(),
                                      w.data_ptr<float>(), clients, kk, n, out.data_ptr<float>(),
                                      k::Accumulator::kFloat64, ctx);
        },
        1, 5);
    r.baseline = time_cpu([&] { torch_topk_pack_aggregate(x, w, kk); }, 1, 5);
    r.bytes = double(clients) * double(n) * 4;
    r.ceiling = bw;
    r.ceiling_name = "host memcpy";
    r.note =
        "residual written apart; baseline: torch::topk(|x|) + gather + clone/scatter_ + "
        "index_add_; ceiling: one read of all deltas";
    rep.add(r);
    // The same with the residual written over the delta (kernels/sparse.h allows residual == x):
    // only the sent entries are written, so the memory traffic is one read. Each repeat sparsifies
    // what the previous one left (same shapes, same work).
    auto y = x.clone();
    Row in_place = r;
    in_place.op = "topk_pack_agg_inplace";
    in_place.kernel = time_cpu(
        [&] {
          k::cpu::topk_by_magnitude(y.data_ptr<float>(), clients, n, kk, idx.data_ptr<int32_t>(),
                                    val.data_ptr<float>(), y.data_ptr<float>(), ctx);
          k::cpu::sparse_weighted_sum(idx.data_ptr<int32_t>(), val.data_ptr<float>(),
                                      w.data_ptr<float>(), clients, kk, n, out.data_ptr<float>(),
                                      k::Accumulator::kFloat64, ctx);
        },
        1, 5);
    in_place.note = "residual over the delta (in place); baseline as above";
    rep.add(in_place);
  }
}

void bench_cpu(const Options& o, Report& rep) {
  const k::cpu::Context ctx = fusion::ops::cpu_context();
  std::printf(
      "# CPU: %d LibTorch threads (the kernels' threads come from the same pool); "
      "kernels/cpu instruction set: %s\n",
      torch::get_num_threads(), k::cpu::isa_name());
  if (selected(o, "gemm")) bench_tile_gemm(rep);
  if (selected(o, "aggregate")) {
    const double bw = host_copy_bandwidth();
    std::printf("# host copy bandwidth (memcpy 256 MiB, read+write): %.2f GB/s\n", bw / 1e9);
    const int64_t n = o.quick ? (1 << 18) : (1 << 20);
    for (int64_t kk : o.quick ? std::vector<int64_t>{50} : std::vector<int64_t>{50, 200, 1000}) {
      const auto x = torch::randn({kk, n});
      const auto w = torch::rand({kk}) / double(kk);
      auto out = torch::empty({n});
      for (auto acc : {k::Accumulator::kFloat32, k::Accumulator::kFloat64}) {
        Row r;
        r.op = acc == k::Accumulator::kFloat32 ? "aggregate_f32acc" : "aggregate_f64acc";
        r.backend = "cpu";
        r.shape = shape_kn(kk, n);
        r.kernel = time_cpu(
            [&] {
              k::cpu::weighted_sum(x.data_ptr<float>(), w.data_ptr<float>(), kk, n,
                                   out.data_ptr<float>(), acc, ctx);
            },
            1, 7);
        r.baseline = time_cpu([&] { torch::matmul(w.unsqueeze(0), x); }, 1, 7);
        r.bytes = double(kk + 1) * double(n) * 4;
        r.ceiling = bw;
        r.ceiling_name = "host memcpy";
        rep.add(r);
      }
    }
  }
  if (selected(o, "topk")) bench_topk_cpu(o, rep, ctx);
  if (selected(o, "pool")) {
    // The small CNN's ReLU + 2x2 max-pool (modalities/image/pool.h), forward and backward, at the
    // cross-device benchmark's step (batch 10) and at an evaluation batch.
    const double bw = host_copy_bandwidth();
    for (auto shape : o.quick ? std::vector<std::vector<int64_t>>{{10, 32, 28, 28}}
                              : std::vector<std::vector<int64_t>>{
                                    {10, 32, 28, 28}, {10, 64, 14, 14}, {1000, 32, 28, 28}}) {
      const auto x = torch::randn(shape);
      const auto g = torch::randn({shape[0], shape[1], shape[2] / 2, shape[3] / 2});
      Row r;
      r.op = "relu_max_pool2_fwd_bwd";
      r.backend = "cpu";
      r.shape = "N=" + std::to_string(shape[0]) + " C=" + std::to_string(shape[1]) +
                " H=W=" + std::to_string(shape[2]);
      r.kernel = time_cpu(
          [&] {
            auto a = x.detach().requires_grad_();
            modalities::relu_max_pool2(a).backward(g);
          },
          3, 50, 3.0);
      r.baseline = time_cpu(
          [&] {
            auto a = x.detach().requires_grad_();
            torch::max_pool2d(torch::relu(a), 2).backward(g);
          },
          3, 50, 3.0);
      // Forward reads x, writes y and the positions; backward reads g and the positions, writes
      // dx.
      r.bytes = double(x.numel()) * 4 * 2 + double(g.numel()) * (4 + 1) * 2;
      r.ceiling = bw;
      r.ceiling_name = "host memcpy";
      rep.add(r);
    }
  }
  if (selected(o, "infonce")) {
    const std::vector<int64_t> ns =
        o.quick ? std::vector<int64_t>{256, 1024} : std::vector<int64_t>{4096, 8192};
    for (int64_t d : {256, 512}) {
      const double gemm = cpu_gemm_flops(2048, d);
      std::printf("# CPU GEMM ceiling (LibTorch matmul 2048x%lld x %lldx2048): %.2f GFLOP/s\n",
                  static_cast<long long>(d), static_cast<long long>(d), gemm / 1e9);
      for (int64_t n : ns) {
        namespace F = torch::nn::functional;
        const auto img = F::normalize(torch::randn({n, d}), F::NormalizeFuncOptions().dim(1));
        const auto txt = F::normalize(torch::randn({n, d}), F::NormalizeFuncOptions().dim(1));
        const auto tau = torch::full({1}, 0.07f);
        auto loss = torch::empty({1}), li = torch::empty({n}), lt = torch::empty({n});
        auto gi = torch::empty({n, d}), gt = torch::empty({n, d}), gtau = torch::empty({1});
        const auto one = torch::ones({1});
        Row r;
        r.op = "infonce_fwd_bwd";
        r.backend = "cpu";
        r.shape = shape_nd(n, d);
        r.kernel = time_cpu(
            [&] {
              k::cpu::infonce_forward(img.data_ptr<float>(), txt.data_ptr<float>(), n, d,
                                      tau.data_ptr<float>(), loss.data_ptr<float>(),
                                      li.data_ptr<float>(), lt.data_ptr<float>(), ctx);
              k::cpu::infonce_backward(
                  img.data_ptr<float>(), txt.data_ptr<float>(), n, d, tau.data_ptr<float>(),
                  li.data_ptr<float>(), lt.data_ptr<float>(), one.data_ptr<float>(),
                  gi.data_ptr<float>(), gt.data_ptr<float>(), gtau.data_ptr<float>(), ctx);
            },
            1, 5, 10.0);
        r.baseline = time_cpu(
            [&] {
              auto a = img.clone().requires_grad_(), b = txt.clone().requires_grad_();
              auto t = tau.clone().requires_grad_();
              fusion::infonce_composed(a, b, t).backward();
            },
            1, 5, 10.0);
        r.flops = 6.0 * double(n) * double(n) * double(d);  // S, dS T, dS^T I: useful FLOPs
        r.ceiling = gemm;
        r.ceiling_name = "LibTorch CPU GEMM";
        r.note =
            "executes 8 N^2 D (S recomputed); memory O(N*D) vs the composition's N x N "
            "logits (" +
            std::to_string(int64_t(double(n) * double(n) * 4 / 1e6)) + " MB each)";
        rep.add(r);
      }
    }
  }
  if (selected(o, "ensemble")) {
    // CreamFL's ensemble: K clients x N public samples scored against one bank of N.
    std::vector<std::pair<int64_t, int64_t>> shapes;  // (n, d)
    if (o.quick) {
      shapes = {{1024, 256}};
    } else {
      shapes = {{4096, 256}, {8192, 256}, {16384, 256}, {50000, 256}, {4096, 512}};
    }
    for (auto [n, d] : shapes) {
      const int64_t kk = 10;
      namespace F = torch::nn::functional;
      const auto local = F::normalize(torch::randn({kk, n, d}), F::NormalizeFuncOptions().dim(2));
      const auto bank = F::normalize(torch::randn({n, d}), F::NormalizeFuncOptions().dim(1));
      const auto tau = torch::ones({1});
      auto w = torch::empty({kk, n}), out = torch::empty({n, d});
      Row r;
      r.op = "creamfl_ensemble";
      r.backend = "cpu";
      r.shape = "K=" + std::to_string(kk) + " " + shape_nd(n, d);
      r.kernel = time_cpu(
          [&] {
            k::cpu::creamfl_ensemble(local.data_ptr<float>(), bank.data_ptr<float>(), kk, n, d,
                                     tau.data_ptr<float>(), k::EnsembleWeighting::kContrastive,
                                     w.data_ptr<float>(), out.data_ptr<float>(), ctx);
          },
          n > 16384 ? 0 : 1, 3, 20.0);
      // The composition holds three N x N fp32 blocks at once (logits, scaled, log-softmax).
      const double composed_bytes = 3.0 * double(n) * double(n) * 4;
      if (composed_bytes < 8e9) {
        r.baseline = time_cpu(
            [&] {
              fusion::creamfl_ensemble_composed(local, bank, 1.0,
                                                k::EnsembleWeighting::kContrastive);
            },
            1, 3, 20.0);
      } else {
        r.note = "composition not run: it needs ~" + std::to_string(int64_t(composed_bytes / 1e9)) +
                 " GB of N x N blocks; the kernel holds O(K N D)";
      }
      r.flops = 2.0 * double(kk) * double(n) * double(n) * double(d);
      r.ceiling = cpu_gemm_flops(2048, d);
      r.ceiling_name = "LibTorch CPU GEMM";
      rep.add(r);
    }
  }
  if (selected(o, "mlora")) {
    const double gemm = cpu_gemm_flops(2048, 1024);
    std::printf("# CPU GEMM ceiling (LibTorch matmul 2048x1024 x 1024x2048): %.2f GFLOP/s\n",
                gemm / 1e9);
    bench_mlora_rows(
        o, rep, torch::kCPU,
        [&](const std::function<void()>& f) { return time_cpu(f, 1, o.quick ? 3 : 5, 30.0); },
        gemm);
  }
  if (selected(o, "moe")) {
    // Smaller sizes first; the layer (T 16384, d 1024, f 4096, ~0.8 TFLOP a step, about
    // 3.5 s on 2 cores) only without --quick.
    std::vector<MoeBenchShape> shapes{{4096, 512, 2048}};
    if (!o.quick) {
      shapes.push_back({8192, 1024, 4096});
      shapes.push_back({16384, 1024, 4096});
    }
    bench_moe_rows(
        o, rep, torch::kCPU,
        [&](const std::function<void()>& f) { return time_cpu(f, 1, o.quick ? 3 : 5, 60.0); },
        shapes);
  }
  if (selected(o, "regularizer")) {
    // The clients' inter-modal term: a batch of B public features against all N global features.
    const int64_t n = o.quick ? 4096 : 50000, d = 256;
    for (int64_t b :
         o.quick ? std::vector<int64_t>{128} : std::vector<int64_t>{128, 256, 512, 1024}) {
      namespace F = torch::nn::functional;
      const auto q = F::normalize(torch::randn({b, d}), F::NormalizeFuncOptions().dim(1));
      const auto bank = F::normalize(torch::randn({n, d}), F::NormalizeFuncOptions().dim(1));
      const auto target = torch::randint(n, {b}, torch::kInt64);
      const auto tau = torch::full({1}, 0.5f);
      auto lse = torch::empty({b}), loss = torch::empty({b}), gq = torch::empty({b, d});
      const auto g = torch::ones({b});
      Row r;
      r.op = "bank_ce_fwd_bwd";
      r.backend = "cpu";
      r.shape = "B=" + std::to_string(b) + " " + shape_nd(n, d);
      r.kernel = time_cpu(
          [&] {
            k::cpu::bank_ce_forward(q.data_ptr<float>(), bank.data_ptr<float>(),
                                    target.data_ptr<int64_t>(), b, n, d, tau.data_ptr<float>(),
                                    lse.data_ptr<float>(), loss.data_ptr<float>(), ctx);
            k::cpu::bank_ce_backward(q.data_ptr<float>(), bank.data_ptr<float>(),
                                     target.data_ptr<int64_t>(), b, n, d, tau.data_ptr<float>(),
                                     lse.data_ptr<float>(), g.data_ptr<float>(),
                                     gq.data_ptr<float>(), nullptr, ctx);
          },
          1, 5, 10.0);
      r.baseline = time_cpu(
          [&] {
            auto qq = q.clone().requires_grad_();
            fusion::bank_cross_entropy_composed(qq, bank, target, 0.5).sum().backward();
          },
          1, 5, 10.0);
      r.flops = 4.0 * double(b) * double(n) * double(d);  // logits + grad_q
      r.ceiling = cpu_gemm_flops(2048, d);
      r.ceiling_name = "LibTorch CPU GEMM";
      r.note = "executes 6 B N D (logits recomputed); extra memory " +
               std::to_string(int64_t(16.0 * double(b) * double(d) * 4 / 1e6)) +
               " MB (16 partial grad_q) vs the composition's B x N logits (" +
               std::to_string(int64_t(double(b) * double(n) * 4 / 1e6)) + " MB each)";
      rep.add(r);
    }
  }
}

// ---- CUDA ---------------------------------------------------------------------------------------

#ifdef MMFL_HAVE_CUDA
double peak_mb(const std::function<void()>& fn) {
  torch::cuda::synchronize();
  const int dev = 0;
  c10::cuda::CUDACachingAllocator::emptyCache();
  c10::cuda::CUDACachingAllocator::resetPeakStats(dev);
  const auto before = c10::cuda::CUDACachingAllocator::getDeviceStats(dev)
                          .allocated_bytes[size_t(c10::CachingAllocator::StatType::AGGREGATE)]
                          .current;
  fn();
  torch::cuda::synchronize();
  const auto peak = c10::cuda::CUDACachingAllocator::getDeviceStats(dev)
                        .allocated_bytes[size_t(c10::CachingAllocator::StatType::AGGREGATE)]
                        .peak;
  return double(peak - before) / 1e6;
}

void bench_cuda(const Options& o, Report& rep) {
  const auto dev = torch::Device(torch::kCUDA, 0);
  const auto opts = torch::TensorOptions().device(dev);
  cudaDeviceProp prop{};
  MMFL_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("# GPU: %s, %d SMs, L2 %d MiB\n", prop.name, prop.multiProcessorCount,
              prop.l2CacheSize >> 20);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();

  // Ceiling 1: device-to-device copy bandwidth (read + write).
  double copy_bw = 0;
  {
    const int64_t bytes = int64_t(1) << 30;
    auto a = torch::empty({bytes}, opts.dtype(torch::kUInt8)), b = torch::empty_like(a);
    const auto t = time_gpu(
        [&] {
          MMFL_CUDA_CHECK(cudaMemcpyAsync(b.data_ptr(), a.data_ptr(), size_t(bytes),
                                          cudaMemcpyDeviceToDevice, stream));
        },
        2, 10);
    copy_bw = 2.0 * double(bytes) / (t.median_ms * 1e-3);
    std::printf("# device copy bandwidth (1 GiB D2D, read+write): %.1f GB/s\n", copy_bw / 1e9);
  }
  if (selected(o, "mlora")) {
    // fp32 cuBLAS GEMM (TF32 off, as the adapter's base product) of the benchmark's base shape.
    const auto ga = torch::randn({16384, 1024}, opts), gb = torch::randn({1024, 1024}, opts);
    const bool tf32_before = at::globalContext().allowTF32CuBLAS();
    at::globalContext().setAllowTF32CuBLAS(false);
    const auto tg = time_gpu([&] { torch::matmul(ga, gb); }, 3, 10);
    const double gemm = 2.0 * 16384.0 * 1024 * 1024 / (tg.median_ms * 1e-3);
    std::printf("# GPU fp32 GEMM ceiling (16384x1024 x 1024x1024): %.1f TFLOP/s\n", gemm / 1e12);
    bench_mlora_rows(
        o, rep, dev, [&](const std::function<void()>& f) { return time_gpu(f, 2, 10); }, gemm);
    at::globalContext().setAllowTF32CuBLAS(tf32_before);
  }
  if (selected(o, "moe")) {
    // fp32 throughout (TF32 off for LibTorch's GEMMs, as the kernels' SIMT fp32).
    const bool tf32_before = at::globalContext().allowTF32CuBLAS();
    at::globalContext().setAllowTF32CuBLAS(false);
    bench_moe_rows(o, rep, dev,
                   [&](const std::function<void()>& f) { return time_gpu(f, 2, o.quick ? 5 : 10); },
                   {{16384, 1024, 4096}});
    at::globalContext().setAllowTF32CuBLAS(tf32_before);
  }
  if (selected(o, "aggregate")) {
    const int64_t n = 1 << 20;
    for (int64_t kk : o.quick ? std::vector<int64_t>{50} : std::vector<int64_t>{50, 200, 1000}) {
      const auto x = torch::randn({kk, n}, opts);
      const auto w = torch::rand({kk}, opts) / double(kk);
      auto out = torch::empty({n}, opts);
      for (auto acc : {k::Accumulator::kFloat32, k::Accumulator::kFloat64}) {
        Row r;
        r.op = acc == k::Accumulator::kFloat32 ? "aggregate_f32acc" : "aggregate_f64acc";
        r.backend = "cuda";
        r.shape = shape_kn(kk, n);
        r.kernel = time_gpu(
            [&] {
              k::cuda::weighted_sum(x.data_ptr<float>(), w.data_ptr<float>(), kk, n,
                                    out.data_ptr<float>(), acc, stream);
            },
            3, 20);
        r.baseline = time_gpu([&] { torch::matmul(w.unsqueeze(0), x); }, 3, 20);
        r.bytes = double(kk + 1) * double(n) * 4;
        r.ceiling = copy_bw;
        r.ceiling_name = "D2D copy";
        rep.add(r);
      }
    }
  }
  if (selected(o, "topk")) {
    const int64_t clients = o.quick ? 100 : 1000;
    for (const TopkShape& s : topk_shapes(o)) {
      const int64_t n = 2 * s.rank * 1024;
      const int64_t kk = fusion::ops::topk_count(s.density, n, "bench density");
      const auto x = torch::randn({clients, n}, opts);
      const auto w = torch::rand({clients}, opts) / double(clients);
      auto idx = torch::empty({clients, kk}, opts.dtype(torch::kInt32));
      auto val = torch::empty({clients, kk}, opts);
      auto res = torch::empty({clients, n}, opts);
      auto out = torch::empty({n}, opts);
      // Our radix-select kernel and the CUB segmented sort, each followed by the aggregation.
      for (int variant = 0; variant < 2; ++variant) {
        Row r;
        r.op = variant == 0 ? "topk_pack_agg" : "topk_pack_agg_cub";
        r.backend = "cuda";
        r.shape = topk_shape_name(clients, s, n, kk);
        r.kernel = time_gpu(
            [&] {
              if (variant == 0) {
                k::cuda::topk_by_magnitude(x.data_ptr<float>(), clients, n, kk,
                                           idx.data_ptr<int32_t>(), val.data_ptr<float>(),
                                           res.data_ptr<float>(), stream);
              } else {
                k::cuda::topk_by_magnitude_cub(x.data_ptr<float>(), clients, n, kk,
                                               idx.data_ptr<int32_t>(), val.data_ptr<float>(),
                                               res.data_ptr<float>(), stream);
              }
              k::cuda::sparse_weighted_sum(idx.data_ptr<int32_t>(), val.data_ptr<float>(),
                                           w.data_ptr<float>(), clients, kk, n,
                                           out.data_ptr<float>(), k::Accumulator::kFloat64, stream);
            },
            2, 10);
        r.baseline = time_gpu([&] { torch_topk_pack_aggregate(x, w, kk); }, 2, 10);
        r.bytes = double(clients) * double(n) * 4;
        r.ceiling = copy_bw;
        r.ceiling_name = "D2D copy";
        r.note = "ceiling: one read of all deltas";
        rep.add(r);
      }
    }
  }
  if (selected(o, "infonce")) {
    const int64_t d = 512;
    for (int64_t n :
         o.quick ? std::vector<int64_t>{4096} : std::vector<int64_t>{4096, 8192, 16384, 32768}) {
      namespace F = torch::nn::functional;
      const auto img = F::normalize(torch::randn({n, d}, opts), F::NormalizeFuncOptions().dim(1));
      const auto txt = F::normalize(torch::randn({n, d}, opts), F::NormalizeFuncOptions().dim(1));
      const auto tau = torch::full({1}, 0.07f, opts);
      auto loss = torch::empty({1}, opts), li = torch::empty({n}, opts),
           lt = torch::empty({n}, opts);
      auto gi = torch::empty({n, d}, opts), gt = torch::empty({n, d}, opts),
           gtau = torch::empty({1}, opts);
      const auto one = torch::ones({1}, opts);
      // One set of rows per precision (backend "cuda", "cuda/tf32", "cuda/bf16"), each against
      // the cuBLAS GEMM of the same shape (N x D times D x N) and precision, through LibTorch.
      for (const k::Precision precision :
           {k::Precision::kFp32, k::Precision::kTf32, k::Precision::kBf16}) {
        const std::string backend = precision == k::Precision::kFp32
                                        ? "cuda"
                                        : std::string("cuda/") + k::precision_name(precision);
        const std::string gemm_name =
            std::string("cuBLAS ") + k::precision_name(precision) + " GEMM";
        const auto bt = txt.t().contiguous();
        const auto img16 = img.to(torch::kBFloat16), bt16 = bt.to(torch::kBFloat16);
        const bool tf32_before = at::globalContext().allowTF32CuBLAS();
        at::globalContext().setAllowTF32CuBLAS(precision == k::Precision::kTf32);
        const auto tg = precision == k::Precision::kBf16
                            ? time_gpu([&] { torch::matmul(img16, bt16); }, 3, 10)
                            : time_gpu([&] { torch::matmul(img, bt); }, 3, 10);
        at::globalContext().setAllowTF32CuBLAS(tf32_before);
        const double gemm = 2.0 * double(n) * double(n) * double(d) / (tg.median_ms * 1e-3);
        auto fwd = [&] {
          k::cuda::infonce_forward(img.data_ptr<float>(), txt.data_ptr<float>(), n, d,
                                   tau.data_ptr<float>(), loss.data_ptr<float>(),
                                   li.data_ptr<float>(), lt.data_ptr<float>(), precision, stream);
        };
        auto bwd = [&] {
          k::cuda::infonce_backward(img.data_ptr<float>(), txt.data_ptr<float>(), n, d,
                                    tau.data_ptr<float>(), li.data_ptr<float>(),
                                    lt.data_ptr<float>(), one.data_ptr<float>(),
                                    gi.data_ptr<float>(), gt.data_ptr<float>(),
                                    gtau.data_ptr<float>(), precision, stream);
        };
        auto eager = [&] {
          auto a = img.detach().requires_grad_(), b = txt.detach().requires_grad_();
          auto t = tau.detach().requires_grad_();
          fusion::infonce_composed(a, b, t).backward();
        };
        const double nnd = double(n) * double(n) * double(d);
        {
          Row r;
          r.op = "infonce_fwd";
          r.backend = backend;
          r.shape = shape_nd(n, d);
          r.kernel = time_gpu(fwd, 3, 10);
          r.flops = 4.0 * nnd;  // two GEMM-shaped passes: rows (I vs T) and columns (T vs I)
          r.ceiling = gemm;
          r.ceiling_name = gemm_name;
          rep.add(r);
        }
        {
          Row r;
          r.op = "infonce_bwd";
          r.backend = backend;
          r.shape = shape_nd(n, d);
          fwd();
          r.kernel = time_gpu(bwd, 3, 10);
          r.flops =
              8.0 * nnd;  // two passes, each recomputing S (2 N^2 D) and accumulating (2 N^2 D)
          r.ceiling = gemm;
          r.ceiling_name = gemm_name;
          rep.add(r);
        }
        {
          Row r;
          r.op = "infonce_fwd_bwd";
          r.backend = backend;
          r.shape = shape_nd(n, d);
          r.kernel = time_gpu(
              [&] {
                fwd();
                bwd();
              },
              3, 10);
          // The composition in the same precision where LibTorch has a switch for it (tf32
          // matmuls); bf16 rows compare with the fp32 composition (see the note).
          at::globalContext().setAllowTF32CuBLAS(precision == k::Precision::kTf32);
          r.baseline = time_gpu(eager, 2, 5);
          at::globalContext().setAllowTF32CuBLAS(tf32_before);
          r.flops = 6.0 * nnd;  // useful FLOPs, as the composition spends them
          r.ceiling = gemm;
          r.ceiling_name = gemm_name;
          r.kernel_peak_mb = peak_mb([&] {
            auto l2 = torch::empty({1}, opts), a = torch::empty({n}, opts),
                 b = torch::empty({n}, opts);
            auto g1 = torch::empty({n, d}, opts), g2 = torch::empty({n, d}, opts),
                 g3 = torch::empty({1}, opts);
            k::cuda::infonce_forward(img.data_ptr<float>(), txt.data_ptr<float>(), n, d,
                                     tau.data_ptr<float>(), l2.data_ptr<float>(),
                                     a.data_ptr<float>(), b.data_ptr<float>(), precision, stream);
            k::cuda::infonce_backward(img.data_ptr<float>(), txt.data_ptr<float>(), n, d,
                                      tau.data_ptr<float>(), a.data_ptr<float>(),
                                      b.data_ptr<float>(), one.data_ptr<float>(),
                                      g1.data_ptr<float>(), g2.data_ptr<float>(),
                                      g3.data_ptr<float>(), precision, stream);
          });
          r.baseline_peak_mb = peak_mb(eager);
          r.note = "GEMM ceiling " + std::to_string(int64_t(gemm / 1e9)) + " GFLOP/s" +
                   (precision == k::Precision::kBf16 ? "; baseline: the fp32 composition" : "");
          rep.add(r);
        }
      }
    }
  }
  if (selected(o, "ensemble")) {
    for (int64_t d : {256, 512}) {
      for (int64_t kk : {10, 50}) {
        for (int64_t n :
             o.quick ? std::vector<int64_t>{4096} : std::vector<int64_t>{4096, 16384, 50000}) {
          namespace F = torch::nn::functional;
          const auto local =
              F::normalize(torch::randn({kk, n, d}, opts), F::NormalizeFuncOptions().dim(2));
          const auto bank =
              F::normalize(torch::randn({n, d}, opts), F::NormalizeFuncOptions().dim(1));
          const auto tau = torch::ones({1}, opts);
          auto w = torch::empty({kk, n}, opts), out = torch::empty({n, d}, opts);
          for (const k::Precision precision :
               {k::Precision::kFp32, k::Precision::kTf32, k::Precision::kBf16}) {
            auto fused = [&] {
              k::cuda::creamfl_ensemble(local.data_ptr<float>(), bank.data_ptr<float>(), kk, n, d,
                                        tau.data_ptr<float>(), k::EnsembleWeighting::kContrastive,
                                        w.data_ptr<float>(), out.data_ptr<float>(), precision,
                                        stream);
            };
            auto composed = [&] {
              fusion::creamfl_ensemble_composed(local, bank, 1.0,
                                                k::EnsembleWeighting::kContrastive);
            };
            Row r;
            r.op = "creamfl_ensemble";
            r.backend = precision == k::Precision::kFp32
                            ? "cuda"
                            : std::string("cuda/") + k::precision_name(precision);
            r.shape = "K=" + std::to_string(kk) + " " + shape_nd(n, d);
            r.kernel = time_gpu(fused, 2, 5);
            r.kernel_peak_mb = peak_mb(fused);
            size_t free_b = 0, total_b = 0;
            MMFL_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
            // The composition's per-client N x N logits and log-softmax, with headroom.
            if (3.0 * double(n) * double(n) * 4 < 0.8 * double(free_b)) {
              r.baseline = time_gpu(composed, 1, 3);
              r.baseline_peak_mb = peak_mb(composed);
            } else {
              r.note = "composition does not fit: needs ~" +
                       std::to_string(int64_t(3.0 * double(n) * double(n) * 4 / 1e9)) + " GB";
            }
            r.flops = 2.0 * double(kk) * double(n) * double(n) * double(d);
            r.ceiling = 0;
            rep.add(r);
          }
        }
      }
    }
  }
  if (selected(o, "regularizer")) {
    const int64_t n = 50000, d = 256;
    for (int64_t b : {128, 512, 1024}) {
      namespace F = torch::nn::functional;
      const auto q = F::normalize(torch::randn({b, d}, opts), F::NormalizeFuncOptions().dim(1));
      const auto bank = F::normalize(torch::randn({n, d}, opts), F::NormalizeFuncOptions().dim(1));
      const auto target = torch::randint(n, {b}, opts.dtype(torch::kInt64));
      const auto tau = torch::full({1}, 0.5f, opts);
      auto lse = torch::empty({b}, opts), loss = torch::empty({b}, opts),
           gq = torch::empty({b, d}, opts);
      const auto g = torch::ones({b}, opts);
      Row r;
      r.op = "bank_ce_fwd_bwd";
      r.backend = "cuda";
      r.shape = "B=" + std::to_string(b) + " " + shape_nd(n, d);
      r.kernel = time_gpu(
          [&] {
            k::cuda::bank_ce_forward(q.data_ptr<float>(), bank.data_ptr<float>(),
                                     target.data_ptr<int64_t>(), b, n, d, tau.data_ptr<float>(),
                                     lse.data_ptr<float>(), loss.data_ptr<float>(),
                                     k::Precision::kFp32, stream);
            k::cuda::bank_ce_backward(q.data_ptr<float>(), bank.data_ptr<float>(),
                                      target.data_ptr<int64_t>(), b, n, d, tau.data_ptr<float>(),
                                      lse.data_ptr<float>(), g.data_ptr<float>(),
                                      gq.data_ptr<float>(), nullptr, k::Precision::kFp32, stream);
          },
          3, 10);
      r.baseline = time_gpu(
          [&] {
            auto qq = q.detach().requires_grad_();
            fusion::bank_cross_entropy_composed(qq, bank, target, 0.5).sum().backward();
          },
          3, 10);
      r.flops = 4.0 * double(b) * double(n) * double(d);
      rep.add(r);
    }
  }
}
#endif

int main_impl(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      MMFL_CHECK(i + 1 < argc, "option ", a, " needs a value");
      return argv[++i];
    };
    if (a == "--device") {
      const std::string v = value();
      MMFL_CHECK(v == "cpu" || v == "cuda" || v == "all", "--device ", v,
                 ": allowed cpu, cuda, all");
      o.cpu = v != "cuda";
      o.cuda = v != "cpu";
    } else if (a == "--filter") {
      o.filter = value();
    } else if (a == "--json") {
      o.json = value();
    } else if (a == "--quick") {
      o.quick = true;
    } else if (a == "--help" || a == "-h") {
      std::printf(
          "usage: mmfl_bench [--device cpu|cuda|all] [--filter SUBSTR] [--quick] [--json FILE]\n");
      return 0;
    } else {
      MMFL_FAIL("unknown option '", a, "'; allowed: --device, --filter, --quick, --json");
    }
  }
  torch::manual_seed(0);
  Report rep;
  rep.print_header();
  if (o.cpu) bench_cpu(o, rep);
  if (o.cuda) {
#ifdef MMFL_HAVE_CUDA
    if (torch::cuda::is_available()) {
      bench_cuda(o, rep);
    } else {
      std::printf("# CUDA rows skipped: no GPU visible\n");
    }
#else
    std::printf("# CUDA rows skipped: built without CUDA\n");
#endif
  }
  if (!o.json.empty()) {
    std::ofstream(o.json) << rep.json().dump(2) << "\n";
    std::printf("# JSON written to %s\n", o.json.c_str());
  }
  return 0;
}

}  // namespace
}  // namespace mmfl::bench

int main(int argc, char** argv) {
  mmfl::keep_freed_host_memory();
  try {
    return mmfl::bench::main_impl(argc, argv);
  } catch (const mmfl::Error& e) {
    std::fprintf(stderr, "mmfl_bench: error: %s\n", e.reason().c_str());
    return 2;
  }
}
