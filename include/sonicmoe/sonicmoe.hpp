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
// i32 in [0, E). A token may have any number of pairs, zero included.
void routing_from_pairs(const Tensor& token_ids, const Tensor& expert_ids, int64_t num_tokens,
                        int64_t num_experts, const Routing& out, Workspace workspace,
                        Stream stream = nullptr);

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
  Training = 0,   // writes the pre-activation H [N, R] for backward
  Inference = 1,  // keeps nothing; h must be absent
};

// x [T, d] bf16; w1 [E, R, d] bf16; b1 [E, R] bf16 (optional);
// w2 [E, d, n] bf16; b2 [E, d] bf16 (optional); scores f32 with N elements
// ([T, K] or [N], in pair order); out [T, d] bf16; h [N, R] bf16.
// d and n must be multiples of 8 (16-byte rows).
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
// required exactly when b1 / b2 are present; dscores f32 shaped like scores.
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
