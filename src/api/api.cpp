// The C++ entry points: validate every argument, derive the problem sizes,
// then hand the call to the backend of the tensors' device.
#include <algorithm>
#include <climits>
#include <string>

#include "api/validate.hpp"
#include "backend/backend.hpp"

namespace sonicmoe {

using detail::Checker;

const char* to_string(Activation a) {
  switch (a) {
    case Activation::SwiGLU: return "swiglu";
    case Activation::GeGLU: return "geglu";
    case Activation::ReGLU: return "reglu";
    case Activation::GeLU: return "gelu";
    case Activation::ReLU: return "relu";
    case Activation::ReLU2: return "relu2";
    case Activation::SiLU: return "silu";
  }
  return "unknown";
}

const char* to_string(DType t) {
  switch (t) {
    case DType::BF16: return "bf16";
    case DType::F32: return "f32";
    case DType::I32: return "i32";
  }
  return "unknown";
}

const char* to_string(RouterOrder o) {
  switch (o) {
    case RouterOrder::TopKThenSoftmax: return "topk_then_softmax";
    case RouterOrder::SoftmaxThenTopK: return "softmax_then_topk";
  }
  return "unknown";
}

const char* to_string(TokenRounding r) {
  switch (r) {
    case TokenRounding::Nearest: return "nearest";
    case TokenRounding::Up: return "up";
    case TokenRounding::Down: return "down";
  }
  return "unknown";
}

const char* version() { return "0.1.0"; }

int cuda_device_count() { return detail::cuda_device_count_impl(); }

namespace {

constexpr int64_t kMaxIndex = INT32_MAX;  // metadata is int32

void check_order(Checker& c, RouterOrder order) {
  const auto v = static_cast<int>(order);
  c.require(v == 0 || v == 1, "order", "0 (topk_then_softmax) or 1 (softmax_then_topk)",
            std::to_string(v));
}

void check_activation(Checker& c, Activation a) {
  const auto v = static_cast<int>(a);
  c.require(v >= 0 && v <= 6, "activation", "a value in [0, 6]", std::to_string(v));
}

void check_count(Checker& c, const char* name, int64_t v, int64_t lo, int64_t hi) {
  c.require(v >= lo && v <= hi, name,
            "a value in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]",
            std::to_string(v));
}

// d and n: GPU loaders move 16-byte rows, so every row is a multiple of 8 bf16.
// At most 2^20, so that an offset inside a tile (at most 256 rows of at most
// 2n columns) fits 32 bits: the portable loader keeps row widths in 32 bits.
constexpr int64_t kMaxFeature = int64_t{1} << 20;
void check_feature(Checker& c, const char* name, int64_t v) {
  c.require(v >= 8 && v % 8 == 0, name, "a positive multiple of 8", std::to_string(v));
  c.require(v <= kMaxFeature, name, "at most 1048576 (2^20)", std::to_string(v));
}

// Scores: f32, [N] in pair order, or [T, K] with T*K == N (top-K routing).
void check_scores(Checker& c, const Tensor& s, const char* name, int64_t num_tokens,
                  int64_t num_pairs) {
  c.present(s, name);
  c.require(s.ndim == 1 || s.ndim == 2, name, "1 or 2 dimensions",
            std::to_string(s.ndim) + " dimensions");
  if (s.ndim == 1) {
    c.tensor(s, name, DType::F32, {num_pairs});
    return;
  }
  const int64_t k = num_pairs / num_tokens;
  c.require(k * num_tokens == num_pairs, name,
            "shape [" + std::to_string(num_pairs) + "] (" + std::to_string(num_pairs) +
                " pairs are not K per token for " + std::to_string(num_tokens) + " tokens)",
            detail::shape_string(s.shape, 2));
  c.tensor(s, name, DType::F32, {num_tokens, k});
}

struct Sizes {
  int64_t T, d, n, E, R, N;
};

Sizes layer_sizes(Checker& c, const Tensor& x, const Tensor& w1, const Tensor& w2,
                  const Routing& routing, Activation act) {
  check_activation(c, act);
  c.rank(x, "x", 2);
  c.rank(w1, "w1", 3);
  c.rank(w2, "w2", 3);
  c.rank(routing.sorted_token, "routing.sorted_token", 1);
  Sizes s{x.shape[0], x.shape[1], w2.shape[2], w1.shape[0], w1.shape[1],
          routing.sorted_token.shape[0]};
  check_count(c, "x.shape[0] (tokens)", s.T, 1, kMaxIndex - 1);
  check_feature(c, "x.shape[1] (hidden size)", s.d);
  check_feature(c, "w2.shape[2] (intermediate size)", s.n);
  check_count(c, "w1.shape[0] (experts)", s.E, 1, kMaxIndex - 1);
  check_count(c, "routing.sorted_token.shape[0] (pairs)", s.N, 0, kMaxIndex);
  const int64_t rows = is_gated(act) ? 2 * s.n : s.n;
  c.require(s.R == rows, "w1",
            "shape[1] == " + std::to_string(rows) + (is_gated(act) ? " (2n, gated " : " (n, ") +
                to_string(act) + ")",
            std::to_string(s.R));
  c.tensor(x, "x", DType::BF16, {s.T, s.d});
  c.tensor(w1, "w1", DType::BF16, {s.E, s.R, s.d});
  c.tensor(w2, "w2", DType::BF16, {s.E, s.d, s.n});
  c.routing(routing, s.T, s.E, s.N);
  return s;
}

MoeProblem problem_of(const Sizes& s, Activation act) {
  return MoeProblem{s.T, s.d, s.n, s.E, s.N, act};
}

void check_problem(Checker& c, const MoeProblem& p) {
  check_activation(c, p.activation);
  check_count(c, "problem.num_tokens", p.num_tokens, 1, kMaxIndex - 1);
  check_feature(c, "problem.hidden", p.hidden);
  check_feature(c, "problem.intermediate", p.intermediate);
  check_count(c, "problem.num_experts", p.num_experts, 1, kMaxIndex - 1);
  check_count(c, "problem.num_pairs", p.num_pairs, 0, kMaxIndex);
}

}  // namespace

namespace detail {

int64_t checked_h_stored_column(int64_t column, int64_t width, Activation activation) {
  Checker c("h_stored_column");
  check_activation(c, activation);
  const int64_t unit = is_gated(activation) ? 16 : 8;
  c.require(width > 0 && width % unit == 0, "width",
            "a positive multiple of " + std::to_string(unit), std::to_string(width));
  check_count(c, "column", column, 0, width - 1);
  return h_stored_column(column, width, activation);
}

}  // namespace detail

// ------------------------------------------------------------------ router --

void router_forward(const RouterArgs& a, Stream stream) {
  Checker c("router_forward");
  check_order(c, a.order);
  c.rank(a.logits, "logits", 2);
  const int64_t T = a.logits.shape[0], E = a.logits.shape[1];
  check_count(c, "logits.shape[0] (tokens)", T, 1, kMaxIndex - 1);
  check_count(c, "logits.shape[1] (experts)", E, 1, kMaxIndex - 1);
  check_count(c, "k", a.k, 1, E);
  c.require(a.logits.dtype == DType::F32 || a.logits.dtype == DType::BF16, "logits",
            "dtype f32 or bf16", to_string(a.logits.dtype));
  c.tensor(a.logits, "logits", a.logits.dtype, {T, E});
  c.tensor(a.scores, "scores", DType::F32, {T, a.k});
  c.tensor(a.expert_ids, "expert_ids", DType::I32, {T, a.k});
  detail::backend_for(c.device(), c.call()).router_forward(a, stream);
}

void router_backward(const RouterBackwardArgs& a, Stream stream) {
  Checker c("router_backward");
  check_order(c, a.order);
  c.rank(a.logits, "logits", 2);
  c.rank(a.expert_ids, "expert_ids", 2);
  const int64_t T = a.logits.shape[0], E = a.logits.shape[1], K = a.expert_ids.shape[1];
  check_count(c, "logits.shape[0] (tokens)", T, 1, kMaxIndex - 1);
  check_count(c, "logits.shape[1] (experts)", E, 1, kMaxIndex - 1);
  check_count(c, "expert_ids.shape[1] (k)", K, 1, E);
  c.require(a.logits.dtype == DType::F32 || a.logits.dtype == DType::BF16, "logits",
            "dtype f32 or bf16", to_string(a.logits.dtype));
  c.tensor(a.logits, "logits", a.logits.dtype, {T, E});
  c.tensor(a.expert_ids, "expert_ids", DType::I32, {T, K});
  c.tensor(a.dscores, "dscores", DType::F32, {T, K});
  c.tensor(a.dlogits, "dlogits", a.logits.dtype, {T, E});
  detail::backend_for(c.device(), c.call()).router_backward(a, stream);
}

// --------------------------------------------------------------- routing --

size_t routing_workspace_size(Device device, int64_t num_tokens, int64_t num_experts,
                              int64_t num_pairs) {
  Checker c("routing_workspace_size");
  check_count(c, "num_tokens", num_tokens, 1, kMaxIndex - 1);
  check_count(c, "num_experts", num_experts, 1, kMaxIndex - 1);
  check_count(c, "num_pairs", num_pairs, 0, kMaxIndex);
  return detail::backend_for(device, c.call()).routing_workspace_size(num_tokens, num_experts, num_pairs);
}

void routing_from_topk(const Tensor& expert_ids, int64_t num_experts, const Routing& out,
                       Workspace ws, Stream stream) {
  Checker c("routing_from_topk");
  c.rank(expert_ids, "expert_ids", 2);
  const int64_t T = expert_ids.shape[0], K = expert_ids.shape[1];
  check_count(c, "num_experts", num_experts, 1, kMaxIndex - 1);
  check_count(c, "expert_ids.shape[0] (tokens)", T, 1, kMaxIndex - 1);
  check_count(c, "expert_ids.shape[1] (k)", K, 1, num_experts);
  c.require(T * K <= kMaxIndex, "expert_ids", "at most 2^31-1 pairs",
            std::to_string(T * K) + " pairs");
  c.tensor(expert_ids, "expert_ids", DType::I32, {T, K});
  c.routing(out, T, num_experts, T * K);
  auto& b = detail::backend_for(c.device(), c.call());
  c.workspace(ws, b.routing_workspace_size(T, num_experts, T * K));
  b.routing_from_topk(expert_ids, num_experts, out, ws, stream);
}

void routing_from_pairs(const Tensor& token_ids, const Tensor& expert_ids, int64_t num_tokens,
                        int64_t num_experts, const Routing& out, Workspace ws, Stream stream) {
  Checker c("routing_from_pairs");
  c.rank(token_ids, "token_ids", 1);
  const int64_t N = token_ids.shape[0];
  check_count(c, "num_tokens", num_tokens, 1, kMaxIndex - 1);
  check_count(c, "num_experts", num_experts, 1, kMaxIndex - 1);
  check_count(c, "token_ids.shape[0] (pairs)", N, 0, kMaxIndex);
  c.tensor(token_ids, "token_ids", DType::I32, {N});
  c.tensor(expert_ids, "expert_ids", DType::I32, {N});
  c.routing(out, num_tokens, num_experts, N);
  auto& b = detail::backend_for(c.device(), c.call());
  c.workspace(ws, b.routing_workspace_size(num_tokens, num_experts, N));
  b.routing_from_pairs(token_ids, expert_ids, num_tokens, num_experts, out, ws, stream);
}

// -------------------------------------------------------- token rounding --

namespace {

void check_rounding(Checker& c, TokenRounding mode) {
  const auto v = static_cast<int>(mode);
  c.require(v >= 0 && v <= 2, "mode", "0 (nearest), 1 (up) or 2 (down)", std::to_string(v));
}

// Capacity in int64 arithmetic; callers check that it fits the int32 ids.
int64_t capacity_of(int64_t T, int64_t E, int64_t K, int64_t tile, TokenRounding mode) {
  if (mode == TokenRounding::Down) return T * K;
  const int64_t grow = mode == TokenRounding::Up ? tile - 1 : tile / 2;
  return std::min(T * K + E * grow, T * E);
}

}  // namespace

int64_t round_routing_capacity(int64_t num_tokens, int64_t num_experts, int64_t k, int64_t tile,
                               TokenRounding mode) {
  Checker c("round_routing_capacity");
  check_rounding(c, mode);
  check_count(c, "num_tokens", num_tokens, 1, kMaxIndex - 1);
  check_count(c, "num_experts", num_experts, 1, kMaxIndex - 1);
  check_count(c, "k", k, 1, num_experts);
  check_count(c, "tile", tile, 1, kMaxIndex);
  return capacity_of(num_tokens, num_experts, k, tile, mode);
}

size_t round_routing_workspace_size(Device device, int64_t num_tokens, int64_t num_experts) {
  Checker c("round_routing_workspace_size");
  check_count(c, "num_tokens", num_tokens, 1, kMaxIndex - 1);
  check_count(c, "num_experts", num_experts, 1, kMaxIndex - 1);
  return detail::backend_for(device, c.call()).round_routing_workspace_size(num_tokens, num_experts);
}

void round_routing(const RoundRoutingArgs& a, Stream stream) {
  Checker c("round_routing");
  check_rounding(c, a.mode);
  c.rank(a.logits, "logits", 2);
  c.rank(a.topk_ids, "topk_ids", 2);
  const int64_t T = a.logits.shape[0], E = a.logits.shape[1], K = a.topk_ids.shape[1];
  check_count(c, "logits.shape[0] (tokens)", T, 1, kMaxIndex - 1);
  check_count(c, "logits.shape[1] (experts)", E, 1, kMaxIndex - 1);
  check_count(c, "topk_ids.shape[1] (k)", K, 1, E);
  check_count(c, "tile", a.tile, 1, kMaxIndex);
  c.require(a.logits.dtype == DType::F32 || a.logits.dtype == DType::BF16, "logits",
            "dtype f32 or bf16", to_string(a.logits.dtype));
  c.tensor(a.logits, "logits", a.logits.dtype, {T, E});
  c.tensor(a.topk_ids, "topk_ids", DType::I32, {T, K});
  c.tensor(a.topk_scores, "topk_scores", DType::F32, {T, K});
  const int64_t C = capacity_of(T, E, K, a.tile, a.mode);
  c.require(C <= kMaxIndex, "tile",
            "a capacity of at most 2^31-1 pairs (round_routing_capacity)",
            std::to_string(C) + " pairs");
  c.tensor(a.token_ids, "token_ids", DType::I32, {C});
  c.tensor(a.expert_ids, "expert_ids", DType::I32, {C});
  c.tensor(a.scores, "scores", DType::F32, {C});
  c.tensor(a.num_pairs, "num_pairs", DType::I32, {1});
  auto& b = detail::backend_for(c.device(), c.call());
  c.workspace(a.workspace, b.round_routing_workspace_size(T, E));
  b.round_routing(a, stream);
}

// ---------------------------------------------------------------- layer --

size_t moe_forward_workspace_size(Device device, const MoeProblem& p, ForwardMode mode) {
  Checker c("moe_forward_workspace_size");
  check_problem(c, p);
  const auto m = static_cast<int>(mode);
  c.require(m == 0 || m == 1, "mode", "0 (training) or 1 (inference)", std::to_string(m));
  return detail::backend_for(device, c.call()).forward_workspace_size(p, mode);
}

size_t moe_backward_workspace_size(Device device, const MoeProblem& p) {
  Checker c("moe_backward_workspace_size");
  check_problem(c, p);
  return detail::backend_for(device, c.call()).backward_workspace_size(p);
}

void moe_forward(const MoeForwardArgs& a, Stream stream) {
  Checker c("moe_forward");
  const Sizes s = layer_sizes(c, a.x, a.w1, a.w2, a.routing, a.activation);
  c.optional(a.b1, "b1", DType::BF16, {s.E, s.R});
  c.optional(a.b2, "b2", DType::BF16, {s.E, s.d});
  check_scores(c, a.scores, "scores", s.T, s.N);
  c.tensor(a.out, "out", DType::BF16, {s.T, s.d});
  const auto m = static_cast<int>(a.mode);
  c.require(m == 0 || m == 1, "mode", "0 (training) or 1 (inference)", std::to_string(m));
  if (a.mode == ForwardMode::Training) c.tensor(a.h, "h", DType::BF16, {s.N, s.R});
  else c.absent(a.h, "h", "in inference mode (nothing is kept for backward)");
  const MoeProblem p = problem_of(s, a.activation);
  auto& b = detail::backend_for(c.device(), c.call());
  c.workspace(a.workspace, b.forward_workspace_size(p, a.mode));
  b.moe_forward(a, p, stream);
}

void moe_backward(const MoeBackwardArgs& a, Stream stream) {
  Checker c("moe_backward");
  const Sizes s = layer_sizes(c, a.x, a.w1, a.w2, a.routing, a.activation);
  c.optional(a.b1, "b1", DType::BF16, {s.E, s.R});
  c.optional(a.b2, "b2", DType::BF16, {s.E, s.d});
  check_scores(c, a.scores, "scores", s.T, s.N);
  c.tensor(a.h, "h", DType::BF16, {s.N, s.R});
  c.tensor(a.dout, "dout", DType::BF16, {s.T, s.d});
  // Every gradient is optional: an absent one is not computed (frozen
  // weights skip their products, an input that needs no gradient its own).
  c.optional(a.dx, "dx", DType::BF16, {s.T, s.d});
  c.optional(a.dw1, "dw1", DType::BF16, {s.E, s.R, s.d});
  c.optional(a.dw2, "dw2", DType::BF16, {s.E, s.d, s.n});
  if (a.b1.present()) c.optional(a.db1, "db1", DType::BF16, {s.E, s.R});
  else c.absent(a.db1, "db1", "when b1 is absent");
  if (a.b2.present()) c.optional(a.db2, "db2", DType::BF16, {s.E, s.d});
  else c.absent(a.db2, "db2", "when b2 is absent");
  // dscores has the shape of scores (checked above: [N] or [T, K]).
  if (a.scores.ndim == 1) c.optional(a.dscores, "dscores", DType::F32, {s.N});
  else c.optional(a.dscores, "dscores", DType::F32, {a.scores.shape[0], a.scores.shape[1]});
  const MoeProblem p = problem_of(s, a.activation);
  auto& b = detail::backend_for(c.device(), c.call());
  c.workspace(a.workspace, b.backward_workspace_size(p));
  b.moe_backward(a, p, stream);
}

// ------------------------------------------------------------- utilities --

namespace {

void permute_gate_up(const char* call, const Tensor& src, const Tensor& dst, int direction,
                     Stream stream) {
  Checker c(call);
  c.present(src, "src");
  c.require(src.ndim == 2 || src.ndim == 3, "src", "2 dimensions [E, 2n] or 3 [E, 2n, d]",
            std::to_string(src.ndim) + " dimensions");
  c.require(src.dtype == DType::BF16 || src.dtype == DType::F32, "src", "dtype bf16 or f32",
            to_string(src.dtype));
  c.require(src.shape[0] >= 1, "src", "shape[0] (experts) >= 1", std::to_string(src.shape[0]));
  c.require(src.shape[1] % 2 == 0 && src.shape[1] > 0, "src",
            "an even, positive shape[1] (2n rows: gate then up)", std::to_string(src.shape[1]));
  if (src.ndim == 3)
    c.require(src.shape[2] >= 1, "src", "shape[2] (hidden size) >= 1", std::to_string(src.shape[2]));
  if (src.ndim == 2) {
    c.tensor(src, "src", src.dtype, {src.shape[0], src.shape[1]});
    c.tensor(dst, "dst", src.dtype, {src.shape[0], src.shape[1]});
  } else {
    c.tensor(src, "src", src.dtype, {src.shape[0], src.shape[1], src.shape[2]});
    c.tensor(dst, "dst", src.dtype, {src.shape[0], src.shape[1], src.shape[2]});
  }
  const auto bytes = src.numel() * (src.dtype == DType::BF16 ? 2 : 4);
  const auto s0 = reinterpret_cast<uintptr_t>(src.data), d0 = reinterpret_cast<uintptr_t>(dst.data);
  c.require(bytes == 0 || s0 + bytes <= d0 || d0 + bytes <= s0, "dst",
            "memory that does not overlap src", "an overlapping range");
  detail::backend_for(c.device(), c.call()).permute_gate_up(src, dst, direction, stream);
}

}  // namespace

void interleave_gate_up(const Tensor& src, const Tensor& dst, Stream stream) {
  permute_gate_up("interleave_gate_up", src, dst, +1, stream);
}

void deinterleave_gate_up(const Tensor& src, const Tensor& dst, Stream stream) {
  permute_gate_up("deinterleave_gate_up", src, dst, -1, stream);
}

}  // namespace sonicmoe
