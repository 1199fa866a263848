// Forward (../shared/SONICMOE.md):
//   tile_offsets -> up_proj (H kept, A temporary) -> down_proj (Y temporary)
//   -> aggregate O[t] = sum_k s Y.
// Backward:
//   tile_offsets, experts by load -> dh (dH, A' = s A, dS partials)
//   -> reduce dS (+ bias term)
//   -> dw2 (varlen-K over dO[gather], A') -> db2 -> dx_tilde (dX~ = dH W1)
//   -> dw1 (varlen-K over dH, X[gather]) -> db1 -> aggregate dX[t] = sum dX~;
//   a gradient the caller leaves absent skips the steps only it needs.
// Every temporary comes from the workspace; nothing synchronises with the host.
#include "moe/gpu_layer.hpp"

#include "common/workspace.hpp"
#include "kernels/layer_kernels.cuh"

namespace sonicmoe::moe {
namespace {

using detail::WorkspaceCarver;
using gemm::bf16_t;

template <class T>
T* ptr(const Tensor& t) {
  return static_cast<T*>(t.data);
}
template <class T>
const T* opt(const Tensor& t) {
  return t.present() ? static_cast<const T*>(t.data) : nullptr;
}

gemm::LayerDims dims_of(const MoeProblem& p) {
  return {p.num_tokens, p.hidden, p.intermediate, p.num_experts, p.num_pairs, p.activation};
}

constexpr int64_t kMinDhNTile = 64;

int64_t dh_tiles(const gemm::Engine& e, const MoeProblem& p) {
  const int tile = e.dh_n_tile(dims_of(p));
  return (p.intermediate + tile - 1) / tile;
}

struct ForwardBuffers {
  int32_t* tile_offsets;
  bf16_t* a;
  bf16_t* y;
};
ForwardBuffers carve_forward(WorkspaceCarver& w, const MoeProblem& p) {
  ForwardBuffers b;
  b.tile_offsets = w.take<int32_t>(kernels::tile_offsets_count(p.num_experts));
  b.a = w.take<bf16_t>(p.num_pairs * p.intermediate);
  b.y = w.take<bf16_t>(p.num_pairs * p.hidden);
  return b;
}

struct BackwardBuffers {
  int32_t* tile_offsets;
  int32_t* expert_order;
  bf16_t* dh;
  bf16_t* ap;
  float* ds_part;
  float* pos_scores;
  bf16_t* dxt;
};
BackwardBuffers carve_backward(WorkspaceCarver& w, const MoeProblem& p) {
  const int64_t R = is_gated(p.activation) ? 2 * p.intermediate : p.intermediate;
  BackwardBuffers b;
  b.tile_offsets = w.take<int32_t>(kernels::tile_offsets_count(p.num_experts));
  b.expert_order = w.take<int32_t>(p.num_experts);
  b.dh = w.take<bf16_t>(p.num_pairs * R);
  b.ap = w.take<bf16_t>(p.num_pairs * p.intermediate);
  // Sized for the narrowest N tile any engine uses, so that the size query
  // does not depend on which engine a device will pick.
  b.ds_part = w.take<float>(p.num_pairs * ((p.intermediate + kMinDhNTile - 1) / kMinDhNTile));
  b.pos_scores = w.take<float>(p.num_pairs);
  b.dxt = w.take<bf16_t>(p.num_pairs * p.hidden);
  return b;
}

gemm::RoutingPtrs routing_ptrs(const Routing& r, const int32_t* tile_offsets,
                               const int32_t* expert_order = nullptr) {
  return {ptr<const int32_t>(r.expert_offsets), tile_offsets, ptr<const int32_t>(r.sorted_token),
          ptr<const int32_t>(r.sorted_pair), expert_order};
}

}  // namespace

size_t forward_workspace_bytes(const gemm::Engine&, const MoeProblem& p, ForwardMode) {
  WorkspaceCarver w;
  carve_forward(w, p);
  return w.bytes();
}

void forward(gemm::Engine& engine, const MoeForwardArgs& a, const MoeProblem& p,
             cudaStream_t st) {
  WorkspaceCarver w(a.workspace.data);
  const ForwardBuffers b = carve_forward(w, p);
  const gemm::LayerDims L = dims_of(p);
  const gemm::Weights W{ptr<const bf16_t>(a.w1), opt<bf16_t>(a.b1), ptr<const bf16_t>(a.w2),
                        opt<bf16_t>(a.b2)};
  kernels::tile_offsets(ptr<const int32_t>(a.routing.expert_offsets), p.num_experts,
                        engine.m_tile(), b.tile_offsets, st);
  const gemm::RoutingPtrs r = routing_ptrs(a.routing, b.tile_offsets);
  bf16_t* h = a.mode == ForwardMode::Training ? ptr<bf16_t>(a.h) : nullptr;
  engine.up_proj(L, r, W, ptr<const bf16_t>(a.x), h, b.a, st);
  engine.down_proj(L, r, W, b.a, b.y, st);
  kernels::aggregate_rows(b.y, ptr<const float>(a.scores), ptr<const int32_t>(a.routing.token_offsets),
                          ptr<const int32_t>(a.routing.pair_position), p.num_tokens, p.num_pairs,
                          p.hidden, ptr<bf16_t>(a.out), st);
}

size_t backward_workspace_bytes(const gemm::Engine&, const MoeProblem& p) {
  WorkspaceCarver w;
  carve_backward(w, p);
  return w.bytes();
}

void backward(gemm::Engine& engine, const MoeBackwardArgs& a, const MoeProblem& p,
              cudaStream_t st) {
  WorkspaceCarver w(a.workspace.data);
  const BackwardBuffers b = carve_backward(w, p);
  const gemm::LayerDims L = dims_of(p);
  const int64_t R = L.R();
  const gemm::Weights W{ptr<const bf16_t>(a.w1), opt<bf16_t>(a.b1), ptr<const bf16_t>(a.w2),
                        opt<bf16_t>(a.b2)};
  const auto* eoff = ptr<const int32_t>(a.routing.expert_offsets);
  const auto* stok = ptr<const int32_t>(a.routing.sorted_token);
  const auto* spair = ptr<const int32_t>(a.routing.sorted_pair);
  const auto* ppos = ptr<const int32_t>(a.routing.pair_position);
  const auto* scores = ptr<const float>(a.scores);
  const auto* dout = ptr<const bf16_t>(a.dout);
  const auto* x = ptr<const bf16_t>(a.x);

  // Absent gradients are not computed (api.cpp): each product runs only
  // for the outputs that need it. db2 alone needs no dH kernel.
  const bool dx = a.dx.present(), dw1 = a.dw1.present(), db1 = a.db1.present();
  const bool dw2 = a.dw2.present(), db2 = a.db2.present(), ds = a.dscores.present();
  if (!(dx || dw1 || db1 || dw2 || db2 || ds)) return;

  kernels::tile_offsets(eoff, p.num_experts, engine.m_tile(), b.tile_offsets, st);
  kernels::experts_by_load(eoff, p.num_experts, b.expert_order, st);
  const gemm::RoutingPtrs r = routing_ptrs(a.routing, b.tile_offsets, b.expert_order);

  if (dx || dw1 || db1 || dw2 || ds) {
    kernels::scores_by_position(scores, spair, p.num_pairs, b.pos_scores, st);
    engine.dh(L, r, W, dout, ptr<const bf16_t>(a.h), b.pos_scores, b.dh, b.ap, b.ds_part, st);
  }
  if (ds)
    kernels::reduce_dscores(b.ds_part, static_cast<int>(dh_tiles(engine, p)), ppos, stok, eoff,
                            dout, W.b2, p.num_tokens, p.num_experts, p.num_pairs, p.hidden,
                            ptr<float>(a.dscores), st);
  if (dw2) engine.dw2(L, r, dout, b.ap, ptr<bf16_t>(a.dw2), st);
  if (db2)
    kernels::expert_column_sums(dout, p.num_tokens, stok, scores, spair, eoff, p.num_experts,
                                p.num_pairs, p.hidden, ptr<bf16_t>(a.db2), st);
  if (dx) engine.dx_tilde(L, r, W, b.dh, b.dxt, st);
  if (dw1) engine.dw1(L, r, b.dh, x, ptr<bf16_t>(a.dw1), st);
  if (db1)
    kernels::expert_column_sums(b.dh, p.num_pairs, nullptr, nullptr, nullptr, eoff, p.num_experts,
                                p.num_pairs, R, ptr<bf16_t>(a.db1), st);
  if (dx)
    kernels::aggregate_rows(b.dxt, nullptr, ptr<const int32_t>(a.routing.token_offsets), ppos,
                            p.num_tokens, p.num_pairs, p.hidden, ptr<bf16_t>(a.dx), st);
}

}  // namespace sonicmoe::moe
