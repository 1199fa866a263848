// One benchmarked layer: its shape and options, and the figures that follow
// from the shape alone (FLOPs, activation memory).
#pragma once

#include <cstdint>
#include <string>

#include <optional>

#include <sonicmoe/sonicmoe.hpp>

namespace sonicmoe::bench {

enum class CheckMode { Full, Sampled, None };

// --routing: plain token-choice top-K, or top-K then round_routing (token
// rounding to multiples of `tile`), which feeds the layer a general routing
// of `capacity()` pairs whose padding tail the layer drops.
struct RoutingChoice {
  std::optional<TokenRounding> rounding;  // empty: top-K
  int64_t tile = 128;
};
std::string routing_name(const RoutingChoice& r);  // "topk", "round-nearest", ...

struct Problem {
  std::string name;  // canonical config name, or "custom"
  int64_t T = 0, H = 0, I = 0, E = 0, K = 0;
  Activation act = Activation::SwiGLU;
  bool bias = false;
  RouterOrder order = RouterOrder::TopKThenSoftmax;
  uint64_t seed = 1;
  double expert_bias_std = 0.5;  // router logit offset per expert (random.hpp)
  RoutingChoice routing;
  CheckMode check = CheckMode::Full;
  double paper_fwd = 0, paper_bwd = 0;  // SonicMoE on H100, 0 when unknown

  int64_t pairs() const { return T * K; }  // token-choice pairs
  bool rounded() const { return routing.rounding.has_value(); }
  // Pairs the layer's buffers hold: T*K, or round_routing's capacity.
  int64_t capacity() const {
    return rounded() ? round_routing_capacity(T, E, K, routing.tile, *routing.rounding) : pairs();
  }
  int64_t R() const { return is_gated(act) ? 2 * I : I; }
  // T*K*H*I: the size measure that decides the default check and what the
  // CPU backend accepts.
  double work() const { return double(T) * double(K) * double(H) * double(I); }

  // BENCHMARK.md counts 6 (forward) and 12 (backward) FLOPs per T*K*H*I for
  // gated activations, whose up-projection has 2I columns. A non-gated
  // up-projection has I columns, so the same products count 4 and 8.
  double fwd_flops() const { return fwd_flops(pairs()); }
  double bwd_flops() const { return bwd_flops(pairs()); }
  // With token rounding the layer computes the rounded pair count, not T*K.
  double fwd_flops(int64_t n) const { return (is_gated(act) ? 6.0 : 4.0) * flop_unit(n); }
  double bwd_flops(int64_t n) const { return (is_gated(act) ? 12.0 : 8.0) * flop_unit(n); }
  double flop_unit(int64_t n) const { return double(n) * double(H) * double(I); }

  // What the training forward leaves alive for backward, parameters, input
  // and output excluded: H [N, R] bf16, the scores [T, K] f32, the expert
  // ids [T, K] i32 and the six int32 routing arrays. The library allocates
  // nothing, so these are exactly the caller's buffers. With token rounding
  // N is the capacity (static shapes), not the pairs actually computed.
  int64_t act_mem_bytes() const {
    const int64_t N = capacity();
    const int64_t h = N * R() * 2;
    const int64_t scores_and_ids = N * 4 + N * 4;
    const int64_t routing = (E + (E + 1) + (T + 1) + 3 * N) * 4;
    return h + scores_and_ids + routing;
  }
};

}  // namespace sonicmoe::bench
