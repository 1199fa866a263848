// The per-kernel benchmark (kernels.hpp).
//
// Set-up follows the layer: router_forward on the bench's random logits,
// routing_from_topk, then kernels::tile_offsets with the engine's M tile,
// exactly as src/moe/gpu_layer.cpp does before its products. The kernels are
// then timed in the layer's order, so that each reads what its predecessor
// wrote (H from up_proj, the dS partials from dh, ...); every buffer is
// filled with random values first, so no timed kernel reads NaN poison,
// which would change its speed (tensor cores and power) and its bytes.
//
// The library's internal entry points (src/...) are called, not the public
// API: a kernel benchmark times kernels, not argument validation.
#include "kernels.hpp"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "configs.hpp"
#include "gemm/engine.hpp"
#include "gpu_timer.cuh"
#include "gpu_util.cuh"
#include "kernels/layer_kernels.cuh"
#include "kernels/routing.cuh"

namespace sonicmoe::bench {

namespace {

using gemm::bf16_t;
using testing::Buffer;
using testing::DevTensor;

// cuBLAS gets a workspace of its own up front (the size NVIDIA recommends on
// Hopper) instead of allocating one lazily in the middle of a timed batch.
constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;
// engine.hpp: every engine's dH N tile is at least 64 columns.
constexpr int64_t kMinDhNTile = 64;

template <class T>
T* ptr(const DevTensor& t) {
  return static_cast<T*>(t.t.data);
}
template <class T>
const T* opt(const DevTensor& t) {
  return t.t.present() ? static_cast<const T*>(t.t.data) : nullptr;
}

// ------------------------------------------------------------- buffers --

// Every buffer the layer's kernels read or write: BenchLayer's tensors plus
// what gpu_layer.cpp carves from its workspaces (tile offsets, A, Y, dH, A',
// the dS partials, dX~).
struct Buffers {
  DevTensor logits, scores, ids, counts, expert_offsets, token_offsets, sorted_token, sorted_pair,
      pair_position, tile_offsets, expert_order;
  DevTensor x, dout, w1, b1, w2, b2, out, dx, dw1, dw2, dscores;
  DevTensor h, a, y, dh, ap, ds_part, pos_scores, dxt;
  std::unique_ptr<Buffer> routing_ws;

  Buffers(const Problem& p, Device dev, int64_t ds_cols, size_t routing_ws_bytes) {
    using testing::make;
    const int64_t T = p.T, d = p.H, n = p.I, E = p.E, K = p.K, R = p.R(), N = p.pairs();
    logits = make(dev, DType::F32, {T, E});
    scores = make(dev, DType::F32, {T, K});
    ids = make(dev, DType::I32, {T, K});
    counts = make(dev, DType::I32, {E});
    expert_offsets = make(dev, DType::I32, {E + 1});
    token_offsets = make(dev, DType::I32, {T + 1});
    sorted_token = make(dev, DType::I32, {N});
    sorted_pair = make(dev, DType::I32, {N});
    pair_position = make(dev, DType::I32, {N});
    tile_offsets = make(dev, DType::I32, {kernels::tile_offsets_count(E)});
    expert_order = make(dev, DType::I32, {E});
    routing_ws = std::make_unique<Buffer>(dev, routing_ws_bytes);

    x = make(dev, DType::BF16, {T, d});
    dout = make(dev, DType::BF16, {T, d});
    w1 = make(dev, DType::BF16, {E, R, d});
    w2 = make(dev, DType::BF16, {E, d, n});
    if (p.bias) {
      b1 = make(dev, DType::BF16, {E, R});
      b2 = make(dev, DType::BF16, {E, d});
    }
    out = make(dev, DType::BF16, {T, d});
    dx = make(dev, DType::BF16, {T, d});
    dw1 = make(dev, DType::BF16, {E, R, d});
    dw2 = make(dev, DType::BF16, {E, d, n});
    dscores = make(dev, DType::F32, {T, K});

    h = make(dev, DType::BF16, {N, R});
    a = make(dev, DType::BF16, {N, n});
    pos_scores = make(dev, DType::F32, {N});
    y = make(dev, DType::BF16, {N, d});
    dh = make(dev, DType::BF16, {N, R});
    ap = make(dev, DType::BF16, {N, n});
    ds_part = make(dev, DType::F32, {N, ds_cols});
    dxt = make(dev, DType::BF16, {N, d});
  }

  // What the constructor allocates, in bytes.
  static double bytes(const Problem& p, int64_t ds_cols, size_t routing_ws_bytes) {
    const double T = double(p.T), d = double(p.H), n = double(p.I), E = double(p.E),
                 R = double(p.R()), N = double(p.pairs());
    const double bf16_elems = 4 * T * d                         // x, dout, out, dx
                              + 2 * E * R * d + 2 * E * d * n  // w1, dw1, w2, dw2
                              + (p.bias ? E * R + E * d : 0)    // b1, b2
                              + 2 * N * R + 2 * N * n + 2 * N * d;  // h, dh, a, ap, y, dxt
    const double four_byte_elems = T * E + 3 * N                     // logits, scores, ids, dscores
                                   + E + 2 * (E + 1) + (T + 1) + 3 * N  // routing, tiles
                                   + N * double(ds_cols);            // dS partials
    return 2 * bf16_elems + 4 * four_byte_elems + double(routing_ws_bytes);
  }
};

void fill(const Buffers& B, const Problem& p, cudaStream_t s) {
  fill_logits(B.logits, p.seed, p.E, static_cast<float>(p.expert_bias_std), s);
  fill_normal(B.x, p.seed, Field::X, 1.0f, s);
  fill_normal(B.dout, p.seed, Field::Dout, 1.0f, s);
  fill_normal(B.w1, p.seed, Field::W1, kWeightStd, s);
  fill_normal(B.w2, p.seed, Field::W2, kWeightStd, s);
  fill_normal(B.b1, p.seed, Field::B1, kBiasStd, s);
  fill_normal(B.b2, p.seed, Field::B2, kBiasStd, s);
  for (const DevTensor* t : {&B.h, &B.a, &B.y, &B.dh, &B.ap, &B.dxt})
    fill_normal(*t, p.seed, Field::Scratch, 1.0f, s);
}

// --------------------------------------------------------- dense cuBLAS --

// A dense row-major product C[M, N] = A B, bf16 in and out, fp32
// accumulation: the speed-of-light reference of a grouped product with the
// same (M, N, K). A is stored [M][K], or [K][M] for the weight gradients
// (their reduction runs over the pairs, which are the rows of both
// operands); B is stored [N][K] (a weight as the experts store it, [out][in])
// or [K][N]. cuBLAS is column-major: it computes C^T [N, M] = op(B) op(A).
struct Dense {
  int64_t M, N, K;
  bool a_stored_km, b_stored_kn;
  const bf16_t* A;
  const bf16_t* B;
  bf16_t* C;

  double flops() const { return 2.0 * double(M) * double(N) * double(K); }
  std::string shape() const {
    return std::to_string(M) + "x" + std::to_string(N) + "x" + std::to_string(K);
  }
  void run(cublasHandle_t handle) const {
    const float alpha = 1.0f, beta = 0.0f;
    const cublasOperation_t op_b = b_stored_kn ? CUBLAS_OP_N : CUBLAS_OP_T;
    const cublasOperation_t op_a = a_stored_km ? CUBLAS_OP_T : CUBLAS_OP_N;
    const int ldb = static_cast<int>(b_stored_kn ? N : K);
    const int lda = static_cast<int>(a_stored_km ? M : K);
    CUBLAS_CHECK(cublasGemmEx(handle, op_b, op_a, static_cast<int>(N), static_cast<int>(M),
                              static_cast<int>(K), &alpha, B, CUDA_R_16BF, ldb, A, CUDA_R_16BF,
                              lda, &beta, C, CUDA_R_16BF, static_cast<int>(N), CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT));
  }
};

struct CublasHandle {
  cublasHandle_t h = nullptr;
  CublasHandle(cudaStream_t s, void* workspace, size_t workspace_bytes) {
    CUBLAS_CHECK(cublasCreate(&h));
    CUBLAS_CHECK(cublasSetStream(h, s));
    CUBLAS_CHECK(cublasSetWorkspace(h, workspace, workspace_bytes));
  }
  ~CublasHandle() { cublasDestroy(h); }
  CublasHandle(const CublasHandle&) = delete;
  CublasHandle& operator=(const CublasHandle&) = delete;
};

// ---------------------------------------------------------------- cases --

// One timed kernel: a GEMM (flops > 0, with its dense reference) or a
// memory-bound kernel (bytes > 0).
struct Case {
  std::string name;
  std::function<void()> run;
  double flops = 0;
  double bytes = 0;
  std::optional<Dense> dense;
  std::vector<size_t> parts = {};  // a sequence: the cases it runs, in order
};

std::optional<double> paper_target(const Problem& p, const std::string& kernel) {
  // The paper's figures are for SwiGLU without bias.
  if (p.act != Activation::SwiGLU || p.bias) return std::nullopt;
  for (const auto& t : kPaperKernelTargets)
    if (t.config == p.name && t.kernel == kernel) return t.tflops;
  return std::nullopt;
}

void print_loads(const std::string& tag, const Buffers& B, const Problem& p) {
  std::vector<int32_t> load(static_cast<size_t>(p.E));
  B.counts.buf->download(load.data());
  std::sort(load.begin(), load.end());
  progress(tag, "routing: expert loads min/median/max " + std::to_string(load.front()) + "/" +
                    std::to_string(load[load.size() / 2]) + "/" + std::to_string(load.back()) +
                    " pairs (mean " + std::to_string(p.pairs() / p.E) + ")");
}

}  // namespace

std::vector<KernelResult> run_kernels(const Problem& p, const RunSettings& st) {
  const std::string tag = p.name + "/kernels";
  CUDA_CHECK(cudaSetDevice(0));
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  // A build or device without a usable engine throws Error(Unsupported)
  // here, before anything is allocated.
  gemm::Engine& engine = gemm::engine_for_device(device);

  const int64_t T = p.T, d = p.H, n = p.I, E = p.E, K = p.K, R = p.R(), N = p.pairs();
  const int dh_tile = engine.dh_n_tile(gemm::LayerDims{T, d, n, E, N, p.act});
  const int n_tiles = static_cast<int>((n + dh_tile - 1) / dh_tile);
  // The dS partials as gpu_layer.cpp sizes them: for the narrowest N tile an
  // engine may use (64), at least the n_tiles columns this engine writes.
  const int64_t ds_cols = (n + kMinDhNTile - 1) / kMinDhNTile;
  const size_t routing_ws = cuda::routing_workspace_bytes(T, E, N);
  int l2 = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device));
  const double need = Buffers::bytes(p, ds_cols, routing_ws) + double(kCublasWorkspaceBytes) +
                      2.0 * l2;  // KernelTimer's L2 flush buffer
  size_t free_b = 0, total_b = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  if (need > 0.97 * double(free_b))
    throw std::runtime_error(p.name + " needs " + gib(need) + " of GPU memory for --kernels; " +
                             prop.name + " has " + gib(double(free_b)) + " free of " +
                             gib(double(total_b)));

  // Destruction runs bottom-up: the timer lets a held stream go before the
  // buffers its queued work uses are freed, and the stream goes last.
  StreamHandle stream;
  const cudaStream_t s = stream.s;
  progress(tag, "setup: " + gib(need) + " on " + prop.name + ", engine " + engine.name() +
                    ", random inputs on the device (seed " + std::to_string(p.seed) + ")");
  const Device dev{DeviceType::CUDA, device};
  const Buffers B(p, dev, ds_cols, routing_ws);
  const Buffer cublas_ws(dev, kCublasWorkspaceBytes);
  const CublasHandle cublas(s, cublas_ws.get(), kCublasWorkspaceBytes);
  KernelTimer timer(s);
  fill(B, p, s);

  // The routing, as the bench's layer and gpu_layer.cpp set it up.
  const RouterArgs router{B.logits.t, K, p.order, false, B.scores.t, B.ids.t};
  const Routing routing{B.counts.t,       B.expert_offsets.t, B.token_offsets.t,
                        B.sorted_token.t, B.sorted_pair.t,    B.pair_position.t};
  const Workspace routing_workspace = B.routing_ws->workspace();
  cuda::router_forward(router, s);
  cuda::routing_from_topk(B.ids.t, E, routing, routing_workspace, s);
  const auto* eoff = ptr<const int32_t>(B.expert_offsets);
  kernels::tile_offsets(eoff, E, engine.m_tile(), ptr<int32_t>(B.tile_offsets), s);
  kernels::experts_by_load(eoff, E, ptr<int32_t>(B.expert_order), s);
  CUDA_CHECK(cudaStreamSynchronize(s));
  print_loads(tag, B, p);

  const gemm::LayerDims L{T, d, n, E, N, p.act};
  const gemm::RoutingPtrs r{eoff, ptr<const int32_t>(B.tile_offsets),
                            ptr<const int32_t>(B.sorted_token), ptr<const int32_t>(B.sorted_pair),
                            ptr<const int32_t>(B.expert_order)};
  const gemm::Weights W{ptr<const bf16_t>(B.w1), opt<bf16_t>(B.b1), ptr<const bf16_t>(B.w2),
                        opt<bf16_t>(B.b2)};
  const auto* x = ptr<const bf16_t>(B.x);
  const auto* dout = ptr<const bf16_t>(B.dout);
  const auto* scores = ptr<const float>(B.scores);
  const auto* toff = ptr<const int32_t>(B.token_offsets);
  const auto* stok = ptr<const int32_t>(B.sorted_token);
  const auto* ppos = ptr<const int32_t>(B.pair_position);
  bf16_t *h = ptr<bf16_t>(B.h), *a = ptr<bf16_t>(B.a), *y = ptr<bf16_t>(B.y),
         *dh = ptr<bf16_t>(B.dh), *ap = ptr<bf16_t>(B.ap), *dxt = ptr<bf16_t>(B.dxt);
  float* ds_part = ptr<float>(B.ds_part);
  float* pos_scores = ptr<float>(B.pos_scores);
  const auto* spair = ptr<const int32_t>(B.sorted_pair);

  // FLOPs: 2 per multiply-add of each product, padding rows of the grouped
  // tiles not counted. The dense references take the layer's own buffers as
  // operands and write its intermediates and gradients, so that they cost
  // no memory even on dsv3-685b: every operand is random or a product of
  // random values, never NaN, and nothing reads their results for a check.
  //
  // Bytes of a memory-bound kernel: what it must read and write at least,
  // each element once (int32 indices and f32 scores 4 bytes, bf16 rows 2):
  //   router_forward     T*E*4 (f32 logits) + N*4 (scores) + N*4 (ids)
  //   routing_from_topk  N*4 (ids) + (E + E+1 + T+1)*4 (counts, offsets)
  //                      + 3*N*4 (sorted_token, sorted_pair, pair_position)
  //   aggregate fwd      N*d*2 (Y) + N*4 (scores) + N*4 (pair_position)
  //                      + (T+1)*4 (token_offsets) + T*d*2 (out)
  //   aggregate bwd      the same without the scores (dX~ in, dX out)
  //   scores_by_position N*4 (sorted_pair) + N*4 (scores) + N*4 (out)
  //   reduce_dscores     N*n_tiles*4 (dS partials) + N*4 (pair_position)
  //                      + N*4 (dscores); with b2 also T*d*2 (dO), E*d*2 (b2),
  //                      N*4 (sorted_token), (E+1)*4 (expert_offsets)
  const double Td = double(T), Ed = double(E), Nd = double(N), dd = double(d);
  const double agg_bytes = Nd * dd * 2 + Nd * 4 + (Td + 1) * 4 + Td * dd * 2;
  const double dscores_bytes =
      Nd * n_tiles * 4 + Nd * 4 + Nd * 4 +
      (p.bias ? Td * dd * 2 + Ed * dd * 2 + Nd * 4 + (Ed + 1) * 4 : 0.0);

  // In the layer's order. Re-running the router and the routing rewrites
  // the same ids and offsets (both are deterministic), so the tile offsets
  // computed above stay valid for the products.
  std::vector<Case> cases;
  cases.push_back({"router_forward", [&] { cuda::router_forward(router, s); }, 0,
                   Td * Ed * 4 + Nd * 4 + Nd * 4, std::nullopt});
  cases.push_back({"routing_from_topk",
                   [&] { cuda::routing_from_topk(B.ids.t, E, routing, routing_workspace, s); }, 0,
                   Nd * 4 + (Ed + (Ed + 1) + (Td + 1)) * 4 + 3 * Nd * 4, std::nullopt});
  cases.push_back({"up_proj", [&] { engine.up_proj(L, r, W, x, h, a, s); },
                   2.0 * Nd * double(R) * dd, 0, Dense{N, R, d, false, false, y, W.w1, h}});
  cases.push_back({"down_proj", [&] { engine.down_proj(L, r, W, a, y, s); },
                   2.0 * Nd * dd * double(n), 0, Dense{N, d, n, false, false, a, W.w2, y}});
  cases.push_back({"aggregate_rows_fwd",
                   [&] {
                     kernels::aggregate_rows(y, scores, toff, ppos, T, N, d, ptr<bf16_t>(B.out),
                                             s);
                   },
                   0, agg_bytes + Nd * 4, std::nullopt});
  cases.push_back({"scores_by_position",
                   [&] { kernels::scores_by_position(scores, spair, N, pos_scores, s); }, 0,
                   Nd * 12, std::nullopt});
  cases.push_back({"dh", [&] { engine.dh(L, r, W, dout, h, pos_scores, dh, ap, ds_part, s); },
                   2.0 * Nd * dd * double(n), 0, Dense{N, n, d, false, true, y, W.w2, ap}});
  cases.push_back({"reduce_dscores",
                   [&] {
                     kernels::reduce_dscores(ds_part, n_tiles, ppos, stok, eoff, dout, W.b2, T, E,
                                             N, d, ptr<float>(B.dscores), s);
                   },
                   0, dscores_bytes, std::nullopt});
  cases.push_back({"dw2", [&] { engine.dw2(L, r, dout, ap, ptr<bf16_t>(B.dw2), s); },
                   2.0 * Nd * dd * double(n), 0,
                   Dense{d, n, N, true, true, y, ap, ptr<bf16_t>(B.dw2)}});
  cases.push_back({"dx_tilde", [&] { engine.dx_tilde(L, r, W, dh, dxt, s); },
                   2.0 * Nd * double(R) * dd, 0, Dense{N, d, R, false, true, dh, W.w1, dxt}});
  cases.push_back({"dw1", [&] { engine.dw1(L, r, dh, x, ptr<bf16_t>(B.dw1), s); },
                   2.0 * Nd * double(R) * dd, 0,
                   Dense{R, d, N, true, true, dh, y, ptr<bf16_t>(B.dw1)}});
  cases.push_back({"aggregate_rows_bwd",
                   [&] {
                     kernels::aggregate_rows(dxt, nullptr, toff, ppos, T, N, d, ptr<bf16_t>(B.dx),
                                             s);
                   },
                   0, agg_bytes, std::nullopt});

  // The layer's kernels back to back, as a forward or backward runs them
  // (tile_offsets and experts_by_load aside), timed like one kernel: set
  // against the sum of the parts' own medians, it shows what running them in
  // sequence costs or saves (each product's tail, a warm L2, the clock).
  const size_t parts_end = cases.size();
  auto sequence = [&](const char* name, size_t first, size_t last) {
    Case c{name, {}, 0, 0, std::nullopt};
    std::vector<std::function<void()>> runs;
    for (size_t i = first; i <= last; ++i) {
      runs.push_back(cases[i].run);
      c.flops += cases[i].flops;
      c.parts.push_back(i);
    }
    c.run = [runs] {
      for (const auto& r : runs) r();
    };
    cases.push_back(std::move(c));
  };
  sequence("forward_sequence", 0, 4);              // router_forward .. aggregate_rows_fwd
  sequence("backward_sequence", 5, parts_end - 1);  // scores_by_position .. aggregate_rows_bwd
  // The up-projection of an inference forward (ForwardMode::Inference): A
  // alone is written, H is not kept. Beside up_proj it says what storing H
  // costs, but timed last in the list it reads up to 20% faster than alone:
  // compare the two with --only, one at a time (docs/NOTES.md: 8% on
  // 7b-n256 alone and under ncu's locked clock).
  cases.push_back({"up_proj_inference", [&] { engine.up_proj(L, r, W, x, nullptr, a, s); },
                   2.0 * Nd * double(R) * dd, 0, Dense{N, R, d, false, false, y, W.w1, h}});

  progress(tag, std::to_string(cases.size()) + " kernels, each " + std::to_string(st.warmup) +
                    " warm-up + " + std::to_string(st.iters) +
                    " timed runs (median), L2 flushed before each run");
  // --only: the named cases alone, heat included (what a profiler or a
  // power trace of one kernel needs).
  std::vector<bool> timed(cases.size(), true);
  for (size_t i = 0; i < cases.size(); ++i) {
    if (std::find(std::begin(kKernelNames), std::end(kKernelNames), cases[i].name) ==
        std::end(kKernelNames))
      throw std::logic_error("sonicmoe-bench: kernel '" + cases[i].name +
                             "' is missing from kKernelNames");
    if (!st.only.empty())
      timed[i] = std::find(st.only.begin(), st.only.end(), cases[i].name) != st.only.end();
  }
  if (st.heat_ms > 0) {
    progress(tag, "heat: the list for " + std::to_string(int(st.heat_ms)) +
                      " ms of device time (the clock under sustained load)");
    heat(s, st.heat_ms, [&] {
      for (size_t i = 0; i < cases.size(); ++i)
        if (timed[i]) cases[i].run();
    });
  }
  std::vector<KernelResult> results;
  std::vector<double> case_ms(cases.size(), 0.0);
  for (size_t ci = 0; ci < cases.size(); ++ci) {
    if (!timed[ci]) continue;
    const Case& c = cases[ci];
    KernelResult k;
    k.config = p.name;
    k.kernel = c.name;
    k.engine = engine.name();
    k.device = prop.name;
    k.ms = median(timer.time(st.warmup, st.iters, c.run));
    const double secs = k.ms * 1e-3;
    if (c.flops > 0) k.tflops = c.flops / secs / 1e12;
    if (c.bytes > 0) k.gbps = c.bytes / secs / 1e9;
    if (c.dense) {
      const Dense& dn = *c.dense;
      const double dense_ms =
          median(timer.time(st.warmup, st.iters, [&] { dn.run(cublas.h); }));
      k.dense_tflops = dn.flops() / (dense_ms * 1e-3) / 1e12;
      k.ratio = *k.tflops / *k.dense_tflops;
      k.dense_shape = dn.shape();
    }
    k.paper_tflops = paper_target(p, c.name);
    if (timer.gaps())
      progress(tag, c.name + ": warning: a hold of the stream timed out; the times may include "
                             "launch gaps");
    char buf[160];
    if (k.tflops)
      std::snprintf(buf, sizeof buf, "%-19s %9.4f ms  %7.1f TFLOPS  (cuBLAS %s: %.1f)",
                    c.name.c_str(), k.ms, *k.tflops, k.dense_shape.c_str(),
                    k.dense_tflops.value_or(0.0));
    else
      std::snprintf(buf, sizeof buf, "%-19s %9.1f us  %7.1f GB/s", c.name.c_str(), k.ms * 1e3,
                    k.gbps.value_or(0.0));
    progress(tag, buf);
    case_ms[ci] = k.ms;
    if (!c.parts.empty() &&
        std::all_of(c.parts.begin(), c.parts.end(), [&](size_t i) { return bool(timed[i]); })) {
      double sum = 0;
      for (size_t i : c.parts) sum += case_ms[i];
      std::snprintf(buf, sizeof buf, "%-19s %9.4f ms  the sum of its parts' medians (x%.3f)",
                    c.name.c_str(), sum, k.ms / sum);
      progress(tag, buf);
    }
    results.push_back(std::move(k));
  }
  return results;
}

}  // namespace sonicmoe::bench
