// The layer's validation fixture: one valid forward and backward argument
// set on the CPU backend (test_validation_moe_forward.cpp, _backward.cpp).
#pragma once

#include "validation.hpp"

namespace sonicmoe::validation_test {

// T = 4 tokens, d = 16, n = 8, E = 3 experts, K = 2, N = 8 pairs, SwiGLU
// (R = 16), with biases. Every expert has pairs: offsets [0, 3, 5, 8].
class ValidationLayer : public Validation {
 protected:
  static constexpr int64_t T = 4, d = 16, n = 8, E = 3, K = 2, N = 8, R = 16;
  DevTensor x = from_doubles(kCpu, DType::BF16, ramp(T * d, 1.0), {T, d});
  DevTensor w1 = from_doubles(kCpu, DType::BF16, ramp(E * R * d, 0.1), {E, R, d});
  DevTensor b1 = from_doubles(kCpu, DType::BF16, ramp(E * R, 0.1), {E, R});
  DevTensor w2 = from_doubles(kCpu, DType::BF16, ramp(E * d * n, 0.1), {E, d, n});
  DevTensor b2 = from_doubles(kCpu, DType::BF16, ramp(E * d, 0.1), {E, d});
  DevTensor scores = from_doubles(kCpu, DType::F32, {0.6, 0.4, 0.7, 0.3, 0.5, 0.5, 0.9, 0.1},
                                  {T, K});
  DevTensor scores1d = from_doubles(kCpu, DType::F32, {0.6, 0.4, 0.7, 0.3, 0.5, 0.5, 0.9, 0.1},
                                    {N});
  RoutingTensors meta{kCpu, T, E, N};
  // Forward outputs (poisoned).
  DevTensor out = make(kCpu, DType::BF16, {T, d});
  DevTensor h = make(kCpu, DType::BF16, {N, R});
  // Backward inputs and outputs.
  DevTensor h_saved = make(kCpu, DType::BF16, {N, R});
  DevTensor dout = from_doubles(kCpu, DType::BF16, ramp(T * d, 1.0), {T, d});
  DevTensor dx = make(kCpu, DType::BF16, {T, d});
  DevTensor dw1 = make(kCpu, DType::BF16, {E, R, d});
  DevTensor db1 = make(kCpu, DType::BF16, {E, R});
  DevTensor dw2 = make(kCpu, DType::BF16, {E, d, n});
  DevTensor db2 = make(kCpu, DType::BF16, {E, d});
  DevTensor dscores = make(kCpu, DType::F32, {T, K});
  const MoeProblem problem{T, d, n, E, N, Activation::SwiGLU};
  size_t fneed = moe_forward_workspace_size(kCpu, problem, ForwardMode::Training);
  size_t bneed = moe_backward_workspace_size(kCpu, problem);
  Buffer fws{kCpu, fneed};
  Buffer bws{kCpu, bneed};

  void SetUp() override {
    DevTensor ids = from_ints(kCpu, {0, 1, 1, 2, 2, 0, 0, 2});
    const Tensor ids2 = Tensor::contiguous(ids.t.data, DType::I32, {T, K});
    Buffer rws(kCpu, routing_workspace_size(kCpu, T, E, N));
    routing_from_topk(ids2, E, meta.routing(), rws.workspace());
    ASSERT_EQ(testing::to_ints(meta.expert_offsets), (std::vector<int32_t>{0, 3, 5, 8}));
    // h for the backward, from a valid forward into scratch outputs.
    DevTensor scratch_out = make(kCpu, DType::BF16, {T, d});
    MoeForwardArgs a = fwd();
    a.out = scratch_out.t;
    a.h = h_saved.t;
    moe_forward(a);
  }

  MoeForwardArgs fwd() const {
    MoeForwardArgs a;
    a.x = x.t;
    a.w1 = w1.t;
    a.b1 = b1.t;
    a.w2 = w2.t;
    a.b2 = b2.t;
    a.scores = scores.t;
    a.routing = meta.routing();
    a.activation = Activation::SwiGLU;
    a.mode = ForwardMode::Training;
    a.out = out.t;
    a.h = h.t;
    a.workspace = fws.workspace();
    return a;
  }
  MoeBackwardArgs bwd() const {
    MoeBackwardArgs a;
    a.x = x.t;
    a.w1 = w1.t;
    a.b1 = b1.t;
    a.w2 = w2.t;
    a.b2 = b2.t;
    a.scores = scores.t;
    a.routing = meta.routing();
    a.activation = Activation::SwiGLU;
    a.h = h_saved.t;
    a.dout = dout.t;
    a.dx = dx.t;
    a.dw1 = dw1.t;
    a.db1 = db1.t;
    a.dw2 = dw2.t;
    a.db2 = db2.t;
    a.dscores = dscores.t;
    a.workspace = bws.workspace();
    return a;
  }
  bool forward_outputs_poisoned() const { return poisoned(out) && poisoned(h); }
  bool backward_outputs_poisoned() const {
    return poisoned(dx) && poisoned(dw1) && poisoned(db1) && poisoned(dw2) && poisoned(db2) &&
           poisoned(dscores);
  }
  void expect_fwd_fail(const MoeForwardArgs& a, const std::vector<std::string>& parts,
                       Status status = Status::InvalidArgument) {
    expect_error([&] { moe_forward(a); }, status, "moe_forward", parts);
    EXPECT_TRUE(forward_outputs_poisoned()) << "out or h written by a failed moe_forward";
  }
  void expect_bwd_fail(const MoeBackwardArgs& a, const std::vector<std::string>& parts,
                       Status status = Status::InvalidArgument) {
    expect_error([&] { moe_backward(a); }, status, "moe_backward", parts);
    EXPECT_TRUE(backward_outputs_poisoned()) << "a gradient written by a failed moe_backward";
  }
  // Routing metadata on the host, to corrupt.
  int32_t* offsets() { return static_cast<int32_t*>(meta.expert_offsets.t.data); }
  int32_t* token_offsets() { return static_cast<int32_t*>(meta.token_offsets.t.data); }
  int32_t* sorted_token() { return static_cast<int32_t*>(meta.sorted_token.t.data); }
  int32_t* sorted_pair() { return static_cast<int32_t*>(meta.sorted_pair.t.data); }
  int32_t* pair_position() { return static_cast<int32_t*>(meta.pair_position.t.data); }
};

}  // namespace sonicmoe::validation_test
