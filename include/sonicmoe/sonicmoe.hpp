// The sonicmoe C++ API.
//
// Contract (docs/DESIGN.md has the long form):
// - Every call is stateless and ordered on the given stream. Tensors live on
//   one device; CPU tensors run on the CPU reference backend, CUDA tensors on
//   the GPU backend of the build.
// - The caller allocates every tensor, and a workspace whose size the
//   matching *_workspace_size function reports. The library allocates nothing.
// - Bad input throws sonicmoe::Error naming the call, the argument, the
//   expected and the given value. Nothing is written before validation passes.
//
// Notation as in ../shared/SONICMOE.md: T tokens, d hidden size, n expert
// intermediate size, E experts, K experts per token, N routed (token, expert)
// pairs (N = T*K for top-K routing). W1 has R = 2n rows for gated activations
// (interleaved gate/up columns) and R = n otherwise.
#pragma once

#include <sonicmoe/bfloat16.hpp>
#include <sonicmoe/types.hpp>

namespace sonicmoe {

// ---------------------------------------------------------------- router ---
// logits [T, E] (f32 or bf16) -> scores [T, K] f32, expert_ids [T, K] i32.
// Slots are ordered by descending logit; ties go to the lower expert id.
// `renormalize` divides the K probabilities of SoftmaxThenTopK by their sum;
// TopKThenSoftmax scores already sum to one and ignore it.
struct RouterArgs {
  Tensor logits;
  int64_t k = 0;
  RouterOrder order = RouterOrder::TopKThenSoftmax;
  bool renormalize = false;
  Tensor scores;      // out
  Tensor expert_ids;  // out
};
void router_forward(const RouterArgs& args, Stream stream = nullptr);

// dscores [T, K] f32 -> dlogits [T, E] (dtype of logits). The scores are
// recomputed from the logits and the chosen ids.
struct RouterBackwardArgs {
  Tensor logits;
  Tensor expert_ids;
  Tensor dscores;
  RouterOrder order = RouterOrder::TopKThenSoftmax;
  bool renormalize = false;
  Tensor dlogits;  // out
};
void router_backward(const RouterBackwardArgs& args, Stream stream = nullptr);

// ------------------------------------------------------- routing metadata ---
// All int32, caller-allocated, filled by routing_from_topk/routing_from_pairs.
// Pair i is the i-th (token, expert) pair in token order (i = t*K + k for
// top-K). Position p indexes the expert-sorted order: positions
// [expert_offsets[e], expert_offsets[e+1]) belong to expert e, sorted stably
// by pair index.
struct Routing {
  Tensor expert_counts;   // [E]    pairs routed to expert e
  Tensor expert_offsets;  // [E+1]  exclusive prefix sum of the counts
  Tensor token_offsets;   // [T+1]  pairs of token t are [token_offsets[t], token_offsets[t+1])
  Tensor sorted_token;    // [N]    token of position p (the gather index)
  Tensor sorted_pair;     // [N]    pair index of position p
  Tensor pair_position;   // [N]    position of pair i (inverse of sorted_pair)
};

size_t routing_workspace_size(Device device, int64_t num_tokens, int64_t num_experts,
                              int64_t num_pairs);

// expert_ids [T, K] i32 in [0, E).
void routing_from_topk(const Tensor& expert_ids, int64_t num_experts, const Routing& out,
                       Workspace workspace, Stream stream = nullptr);

// General routing: token_ids [N] i32 non-decreasing in [0, T), expert_ids [N]
// i32 in [0, E), or kNoExpert for a padding pair. A token may have any number
// of pairs, zero included. Padding pairs (what round_routing writes past its
// pair count) are dropped: they belong to no expert (not in expert_counts,
// pair_position -1), the layer computes nothing for them and writes dscores 0.
void routing_from_pairs(const Tensor& token_ids, const Tensor& expert_ids, int64_t num_tokens,
                        int64_t num_experts, const Routing& out, Workspace workspace,
                        Stream stream = nullptr);

// ---------------------------------------------------------- token rounding ---
// Tile-aware routing (../shared/SONICMOE.md, Routing 4): after token-choice
// top-K, each expert's count is rounded to a multiple of `tile`, so that no
// grouped-GEMM M tile is partly empty.
//   count_e   the tokens that picked e (a token listing e twice counts once)
//   target_e  count_e rounded to a multiple of tile: to nearest (ties to
//             even), up or down; capped at T, the most an expert can take
//   Each expert keeps its target_e best tokens in the order: every pick
//   before every non-pick, then the score descending, then the token id
//   ascending. A pick's score is its top-K score; a non-pick's is the raw
//   probability softmax(logits[t])[e] over all E, which is also the score of
//   an added pair. Round-up therefore never takes a pick away, round-down
//   never adds one.
// The result is a general routing sorted by token, then by expert id.
//
// The pair count depends on the data and is never read back to the host:
// the outputs are sized to round_routing_capacity(), the count goes to the
// device int num_pairs, and the tail [num_pairs, capacity) holds padding
// pairs (token T-1, expert kNoExpert, score 0). Pass the whole capacity to
// routing_from_pairs and the layer (N = capacity): padding pairs are dropped
// there, so shapes stay static and nothing synchronises.
enum class TokenRounding : int32_t { Nearest = 0, Up = 1, Down = 2 };

inline constexpr int32_t kNoExpert = -1;

const char* to_string(TokenRounding r);

// The number of pairs the outputs must hold: min(T*K + E*(tile-1), T*E) for
// Up, min(T*K + E*floor(tile/2), T*E) for Nearest, T*K for Down.
int64_t round_routing_capacity(int64_t num_tokens, int64_t num_experts, int64_t k, int64_t tile,
                               TokenRounding mode);

// logits [T, E] f32 or bf16 (the router's input); topk_ids [T, K] i32 in
// [0, E); topk_scores [T, K] f32 (the router's outputs). Outputs, C the
// capacity: token_ids [C] i32, expert_ids [C] i32, scores [C] f32,
// num_pairs [1] i32.
struct RoundRoutingArgs {
  Tensor logits, topk_ids, topk_scores;
  int64_t tile = 128;
  TokenRounding mode = TokenRounding::Nearest;
  Tensor token_ids, expert_ids, scores, num_pairs;  // out
  Workspace workspace;
};
size_t round_routing_workspace_size(Device device, int64_t num_tokens, int64_t num_experts);
void round_routing(const RoundRoutingArgs& args, Stream stream = nullptr);

// --------------------------------------------------------------- MoE layer ---
// The sizes that fix workspace requirements.
struct MoeProblem {
  int64_t num_tokens = 0;    // T
  int64_t hidden = 0;        // d
  int64_t intermediate = 0;  // n
  int64_t num_experts = 0;   // E
  int64_t num_pairs = 0;     // N
  Activation activation = Activation::SwiGLU;
};

enum class ForwardMode : int32_t {
  Training = 0,   // writes the pre-activation H [N, R] for backward (h)
  Inference = 1,  // keeps nothing; h must be absent
};

// x [T, d] bf16; w1 [E, R, d] bf16; b1 [E, R] bf16 (optional);
// w2 [E, d, n] bf16; b2 [E, d] bf16 (optional); scores f32 with N elements
// ([T, K] or [N], in pair order); out [T, d] bf16; h [N, R] bf16, its rows
// in position order and its columns in the library's layout
// (h_stored_column, types.hpp: the same on every backend).
// d and n must be multiples of 8 (16-byte rows) and at most 2^20 (32-bit
// offsets inside a tile).
struct MoeForwardArgs {
  Tensor x, w1, b1, w2, b2, scores;
  Routing routing;
  Activation activation = Activation::SwiGLU;
  ForwardMode mode = ForwardMode::Training;
  Tensor out;  // out
  Tensor h;    // out, Training only
  Workspace workspace;
};
size_t moe_forward_workspace_size(Device device, const MoeProblem& problem, ForwardMode mode);
void moe_forward(const MoeForwardArgs& args, Stream stream = nullptr);

// Gradients of the forward above from dout [T, d] bf16 and the saved h.
// Outputs: dx [T, d], dw1 [E, R, d], dw2 [E, d, n] bf16; db1 / db2 bf16,
// allowed only when b1 / b2 are present; dscores f32 shaped like scores.
// Each output is optional: an absent one (Tensor{}) is not computed, and
// the work only it needs is skipped (without dw1 and dw2, as for frozen
// experts, the two weight-gradient products; without dx, dX~ and its
// aggregation); the outputs given are the same bits either way.
// Experts with no pairs get exactly zero weight gradients.
struct MoeBackwardArgs {
  Tensor x, w1, b1, w2, b2, scores;
  Routing routing;
  Activation activation = Activation::SwiGLU;
  Tensor h, dout;
  Tensor dx, dw1, db1, dw2, db2, dscores;  // out
  Workspace workspace;
};
size_t moe_backward_workspace_size(Device device, const MoeProblem& problem);
void moe_backward(const MoeBackwardArgs& args, Stream stream = nullptr);

// ------------------------------------------------------------- utilities ---
// HF-style concatenated [gate; up] rows -> interleaved (gate_j at row 2j,
// up_j at 2j+1), and back. src and dst: [E, 2n, d] (W1) or [E, 2n] (b1),
// same dtype (bf16 or f32), same shape, not overlapping.
void interleave_gate_up(const Tensor& src, const Tensor& dst, Stream stream = nullptr);
void deinterleave_gate_up(const Tensor& src, const Tensor& dst, Stream stream = nullptr);

// Number of CUDA devices visible to the library (0 on a machine without a
// GPU); never throws.
int cuda_device_count();

const char* version();

}  // namespace sonicmoe
