// The six grouped products of the MoE layer as an engine interface.
//
// The orchestration (src/moe) names products, never kernels; an engine
// (portable sm_80 here, Hopper sm_90a later) implements each with its own
// scheduler, loaders, mainloop and epilogue. All pointers are device
// pointers; rows of bf16 matrices are contiguous with the leading dimension
// equal to their width. Nothing here synchronises with the host.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <sonicmoe/types.hpp>

namespace sonicmoe::gemm {

using bf16_t = __nv_bfloat16;

struct LayerDims {
  int64_t T, d, n, E, N;  // tokens, hidden, intermediate, experts, routed pairs
  Activation act;
  int64_t R() const { return is_gated(act) ? 2 * n : n; }
};

struct RoutingPtrs {
  const int32_t* expert_offsets;  // [E+1]
  const int32_t* tile_offsets;    // [3][E+1] prefixes of ceil(count_e / m_tile()), of its
                                  // whole pairs and of its odd tiles: kernels::tile_offsets()
  const int32_t* sorted_token;    // [N] position -> token
  const int32_t* sorted_pair;     // [N] position -> pair
  const int32_t* expert_order;    // [E] experts by descending load (grouped-K order), or null
};

struct Weights {
  const bf16_t* w1;  // [E][R][d]
  const bf16_t* b1;  // [E][R] or null
  const bf16_t* w2;  // [E][d][n]
  const bf16_t* b2;  // [E][d] or null
};

class Engine {
 public:
  virtual ~Engine() = default;
  virtual const char* name() const = 0;
  // Rows per M tile of the grouped-M products (what tile_offsets counts in).
  virtual int m_tile() const = 0;
  // Columns per N tile of the dH product (the dS partials per row); at least
  // 64, which the workspace is sized for.
  virtual int dh_n_tile(const LayerDims&) const = 0;

  // H = X[gather] W1_e^T + b1 (kept when h != null), A = act(H).
  virtual void up_proj(const LayerDims&, const RoutingPtrs&, const Weights&, const bf16_t* x,
                       bf16_t* h, bf16_t* a, cudaStream_t) = 0;
  // Y = A W2_e^T + b2.
  virtual void down_proj(const LayerDims&, const RoutingPtrs&, const Weights&, const bf16_t* a,
                         bf16_t* y, cudaStream_t) = 0;
  // dA' = dO[gather] W2_e in registers; writes dH, A' = s A and dS partials
  // [N][ceil(n / dh_n_tile())]. scores: [N], in position order
  // (kernels::scores_by_position).
  virtual void dh(const LayerDims&, const RoutingPtrs&, const Weights&, const bf16_t* dout,
                  const bf16_t* h, const float* scores, bf16_t* dh, bf16_t* ap, float* ds_part,
                  cudaStream_t) = 0;
  // dX~ = dH W1_e.
  virtual void dx_tilde(const LayerDims&, const RoutingPtrs&, const Weights&, const bf16_t* dh,
                        bf16_t* dxt, cudaStream_t) = 0;
  // dW2_e = sum_p dO[gather[p]]^T A'[p] (reduction over the expert's rows).
  virtual void dw2(const LayerDims&, const RoutingPtrs&, const bf16_t* dout, const bf16_t* ap,
                   bf16_t* dw2, cudaStream_t) = 0;
  // dW1_e = sum_p dH[p]^T X[gather[p]].
  virtual void dw1(const LayerDims&, const RoutingPtrs&, const bf16_t* dh, const bf16_t* x,
                   bf16_t* dw1, cudaStream_t) = 0;
};

Engine& portable_engine();
// The Hopper engine, or nullptr when the build has none.
Engine* hopper_engine();

// The engine the GPU backend uses on `device`: SONICMOE_ENGINE=portable|hopper
// when set (so tests and benches can run either), else Hopper on sm_90
// devices when built in, else the portable engine. Throws Error(Unsupported)
// for an engine the build or the device cannot run.
Engine& engine_for_device(int device);

}  // namespace sonicmoe::gemm
