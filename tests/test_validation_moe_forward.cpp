// Validation of the moe_*_workspace_size queries and moe_forward.
// (validation.hpp: what every validation test asserts.)
#include "validation_layer.hpp"

namespace sonicmoe {
namespace {

using namespace validation_test;

// ======================================== moe_*_workspace_size ============

class ValidationMoeWorkspaceSize : public ::testing::Test {
 protected:
  MoeProblem problem{4, 16, 8, 3, 8, Activation::SwiGLU};

  void expect_fail_both(const MoeProblem& p, const std::vector<std::string>& parts) {
    expect_error([&] { moe_forward_workspace_size(kCpu, p, ForwardMode::Training); },
                 Status::InvalidArgument, "moe_forward_workspace_size", parts);
    expect_error([&] { moe_backward_workspace_size(kCpu, p); }, Status::InvalidArgument,
                 "moe_backward_workspace_size", parts);
  }
};

TEST_F(ValidationMoeWorkspaceSize, ValidArgumentsRun) {
  EXPECT_GT(moe_forward_workspace_size(kCpu, problem, ForwardMode::Training), 0u);
  EXPECT_NO_THROW(moe_forward_workspace_size(kCpu, problem, ForwardMode::Inference));
  EXPECT_GT(moe_backward_workspace_size(kCpu, problem), 0u);
  MoeProblem empty = problem;
  empty.num_pairs = 0;
  EXPECT_NO_THROW(moe_forward_workspace_size(kCpu, empty, ForwardMode::Training));
  EXPECT_NO_THROW(moe_backward_workspace_size(kCpu, empty));
}

TEST_F(ValidationMoeWorkspaceSize, InvalidActivation) {
  MoeProblem p = problem;
  p.activation = static_cast<Activation>(7);
  expect_fail_both(p, {"argument 'activation'", "expected a value in [0, 6]", "got 7"});
  p.activation = static_cast<Activation>(-1);
  expect_fail_both(p, {"argument 'activation'", "got -1"});
}

TEST_F(ValidationMoeWorkspaceSize, Sizes) {
  MoeProblem p = problem;
  p.num_tokens = 0;
  expect_fail_both(p, {"argument 'problem.num_tokens'", "expected a value in [1, 2147483646]",
                       "got 0"});
  p = problem;
  p.hidden = 12;
  expect_fail_both(p, {"argument 'problem.hidden'", "expected a positive multiple of 8",
                       "got 12"});
  p.hidden = 0;
  expect_fail_both(p, {"argument 'problem.hidden'", "got 0"});
  p.hidden = -8;
  expect_fail_both(p, {"argument 'problem.hidden'", "got -8"});
  p = problem;
  p.intermediate = 20;
  expect_fail_both(p, {"argument 'problem.intermediate'", "expected a positive multiple of 8",
                       "got 20"});
  p.intermediate = (1 << 20) + 8;  // kernels address a tile's rows by 32-bit offsets
  expect_fail_both(p, {"argument 'problem.intermediate'", "expected at most 1048576 (2^20)",
                       "got 1048584"});
  p = problem;
  p.hidden = 1 << 21;
  expect_fail_both(p, {"argument 'problem.hidden'", "expected at most 1048576 (2^20)",
                       "got 2097152"});
  p = problem;
  p.num_experts = 0;
  expect_fail_both(p, {"argument 'problem.num_experts'", "expected a value in [1, 2147483646]",
                       "got 0"});
  p = problem;
  p.num_pairs = -1;
  expect_fail_both(p, {"argument 'problem.num_pairs'", "expected a value in [0, 2147483647]",
                       "got -1"});
}

TEST_F(ValidationMoeWorkspaceSize, InvalidMode) {
  expect_error([&] { moe_forward_workspace_size(kCpu, problem, static_cast<ForwardMode>(5)); },
               Status::InvalidArgument, "moe_forward_workspace_size",
               {"argument 'mode'", "expected 0 (training) or 1 (inference)", "got 5"});
}

TEST_F(ValidationMoeWorkspaceSize, CudaWithoutGpuBackend) {
  SKIP_IF_CUDA_DEVICE_PRESENT();
  expect_error([&] { moe_forward_workspace_size(kCuda0, problem, ForwardMode::Training); },
               Status::Unsupported, "moe_forward_workspace_size", {"CUDA tensors cannot run"});
  expect_error([&] { moe_backward_workspace_size(kCuda0, problem); }, Status::Unsupported,
               "moe_backward_workspace_size", {"CUDA tensors cannot run"});
}

// ------------------------------------------------------- moe_forward ------

using ValidationMoeForward = ValidationLayer;

TEST_F(ValidationMoeForward, ValidArgumentsRun) {
  MoeForwardArgs a = fwd();
  EXPECT_NO_THROW(moe_forward(a));
  EXPECT_FALSE(poisoned(out));
  EXPECT_FALSE(poisoned(h));
  // Without biases, scores as [N], and in inference mode without h.
  a.b1 = Tensor{};
  a.b2 = Tensor{};
  a.scores = scores1d.t;
  EXPECT_NO_THROW(moe_forward(a));
  a.mode = ForwardMode::Inference;
  a.h = Tensor{};
  EXPECT_NO_THROW(moe_forward(a));
}

TEST_F(ValidationMoeForward, InvalidActivation) {
  MoeForwardArgs a = fwd();
  a.activation = static_cast<Activation>(7);
  expect_fwd_fail(a, {"argument 'activation'", "expected a value in [0, 6]", "got 7"});
}

TEST_F(ValidationMoeForward, InvalidMode) {
  MoeForwardArgs a = fwd();
  a.mode = static_cast<ForwardMode>(5);
  expect_fwd_fail(a, {"argument 'mode'", "expected 0 (training) or 1 (inference)", "got 5"});
}

TEST_F(ValidationMoeForward, MissingRequiredTensors) {
  for (auto [field, name] : std::vector<std::pair<Tensor MoeForwardArgs::*, std::string>>{
           {&MoeForwardArgs::x, "x"},
           {&MoeForwardArgs::w1, "w1"},
           {&MoeForwardArgs::w2, "w2"},
           {&MoeForwardArgs::scores, "scores"},
           {&MoeForwardArgs::out, "out"},
           {&MoeForwardArgs::h, "h"}}) {
    MoeForwardArgs a = fwd();
    a.*field = Tensor{};
    SCOPED_TRACE(name);
    expect_fwd_fail(a, {"argument '" + name + "' is required"});
  }
  for (auto [field, name] : std::vector<std::pair<Tensor Routing::*, std::string>>{
           {&Routing::expert_counts, "routing.expert_counts"},
           {&Routing::expert_offsets, "routing.expert_offsets"},
           {&Routing::token_offsets, "routing.token_offsets"},
           {&Routing::sorted_token, "routing.sorted_token"},
           {&Routing::sorted_pair, "routing.sorted_pair"},
           {&Routing::pair_position, "routing.pair_position"}}) {
    MoeForwardArgs a = fwd();
    a.routing.*field = Tensor{};
    SCOPED_TRACE(name);
    expect_fwd_fail(a, {"argument '" + name + "' is required"});
  }
}

TEST_F(ValidationMoeForward, WrongRanks) {
  MoeForwardArgs a = fwd();
  a.x = fresh(DType::BF16, {T, d, 1});
  expect_fwd_fail(a, {"argument 'x'", "expected 2 dimensions", "got 3 dimensions"});
  a = fwd();
  a.w1 = fresh(DType::BF16, {E * R, d});
  expect_fwd_fail(a, {"argument 'w1'", "expected 3 dimensions", "got 2 dimensions"});
  a = fwd();
  a.w2 = fresh(DType::BF16, {E, d, n, 1});
  expect_fwd_fail(a, {"argument 'w2'", "expected 3 dimensions", "got 4 dimensions"});
  a = fwd();
  a.routing.sorted_token = fresh(DType::I32, {N, 1});
  expect_fwd_fail(a, {"argument 'routing.sorted_token'", "expected 1 dimensions",
                      "got 2 dimensions"});
}

TEST_F(ValidationMoeForward, ZeroTokens) {
  MoeForwardArgs a = fwd();
  a.x = fresh(DType::BF16, {0, d});
  expect_fwd_fail(a, {"argument 'x.shape[0] (tokens)'", "expected a value in [1, 2147483646]",
                      "got 0"});
}

TEST_F(ValidationMoeForward, HiddenNotMultipleOf8) {
  MoeForwardArgs a = fwd();
  a.x = fresh(DType::BF16, {T, 12});
  expect_fwd_fail(a, {"argument 'x.shape[1] (hidden size)'", "expected a positive multiple of 8",
                      "got 12"});
}

TEST_F(ValidationMoeForward, IntermediateNotMultipleOf8) {
  MoeForwardArgs a = fwd();
  a.w2 = fresh(DType::BF16, {E, d, 12});
  expect_fwd_fail(a, {"argument 'w2.shape[2] (intermediate size)'",
                      "expected a positive multiple of 8", "got 12"});
}

// Too wide for the kernels' 32-bit offsets inside a tile: refused by its
// shape alone (the tensor's storage is never read, so it stays small).
TEST_F(ValidationMoeForward, IntermediateTooLarge) {
  MoeForwardArgs a = fwd();
  a.w2 = fresh(DType::BF16, {E, d, 8});
  a.w2.shape[2] = (1 << 20) + 8;
  a.w2.strides[1] = a.w2.shape[2];
  a.w2.strides[0] = d * a.w2.shape[2];
  expect_fwd_fail(a, {"argument 'w2.shape[2] (intermediate size)'",
                      "expected at most 1048576 (2^20)", "got 1048584"});
}

TEST_F(ValidationMoeForward, ZeroExperts) {
  MoeForwardArgs a = fwd();
  a.w1 = fresh(DType::BF16, {0, R, d});
  expect_fwd_fail(a, {"argument 'w1.shape[0] (experts)'", "expected a value in [1, 2147483646]",
                      "got 0"});
}

TEST_F(ValidationMoeForward, TooManyPairs) {
  // A descriptor only: the count is rejected before any data is read.
  MoeForwardArgs a = fwd();
  a.routing.sorted_token.shape[0] = int64_t{1} << 31;
  expect_fwd_fail(a, {"argument 'routing.sorted_token.shape[0] (pairs)'",
                      "expected a value in [0, 2147483647]", "got 2147483648"});
}

TEST_F(ValidationMoeForward, GatedW1RowsMustBe2n) {
  MoeForwardArgs a = fwd();
  a.w1 = fresh(DType::BF16, {E, n, d});
  expect_fwd_fail(a, {"argument 'w1'", "expected shape[1] == 16 (2n, gated swiglu)", "got 8"});
  a.activation = Activation::GeGLU;
  expect_fwd_fail(a, {"argument 'w1'", "expected shape[1] == 16 (2n, gated geglu)", "got 8"});
}

TEST_F(ValidationMoeForward, PlainW1RowsMustBeN) {
  MoeForwardArgs a = fwd();
  a.activation = Activation::ReLU;
  expect_fwd_fail(a, {"argument 'w1'", "expected shape[1] == 8 (n, relu)", "got 16"});
}

TEST_F(ValidationMoeForward, WeightShapes) {
  MoeForwardArgs a = fwd();
  a.w1 = fresh(DType::BF16, {E, R, d + 8});
  expect_fwd_fail(a, {"argument 'w1'", "expected shape [3, 16, 16]", "got [3, 16, 24]"});
  a = fwd();
  a.w2 = fresh(DType::BF16, {E, d + 8, n});
  expect_fwd_fail(a, {"argument 'w2'", "expected shape [3, 16, 8]", "got [3, 24, 8]"});
  a = fwd();
  a.w2 = fresh(DType::BF16, {E - 1, d, n});
  expect_fwd_fail(a, {"argument 'w2'", "expected shape [3, 16, 8]", "got [2, 16, 8]"});
}

TEST_F(ValidationMoeForward, WrongDtypes) {
  MoeForwardArgs a = fwd();
  a.x = fresh(DType::F32, {T, d});
  expect_fwd_fail(a, {"argument 'x'", "expected dtype bf16", "got dtype f32"});
  a = fwd();
  a.w1 = fresh(DType::F32, {E, R, d});
  expect_fwd_fail(a, {"argument 'w1'", "expected dtype bf16", "got dtype f32"});
  a = fwd();
  a.w2 = fresh(DType::I32, {E, d, n});
  expect_fwd_fail(a, {"argument 'w2'", "expected dtype bf16", "got dtype i32"});
  a = fwd();
  a.out = fresh(DType::F32, {T, d});
  expect_fwd_fail(a, {"argument 'out'", "expected dtype bf16", "got dtype f32"});
  a = fwd();
  a.h = fresh(DType::F32, {N, R});
  expect_fwd_fail(a, {"argument 'h'", "expected dtype bf16", "got dtype f32"});
  a = fwd();
  a.routing.pair_position = fresh(DType::F32, {N});
  expect_fwd_fail(a, {"argument 'routing.pair_position'", "expected dtype i32", "got dtype f32"});
}

TEST_F(ValidationMoeForward, NotContiguous) {
  MoeForwardArgs a = fwd();
  a.w2 = transposed(w2.t);
  expect_fwd_fail(a, {"argument 'w2'", "expected a contiguous (row-major) tensor",
                      "got strides [128, 1, 16]"});
  a = fwd();
  a.x = transposed(x.t);
  expect_fwd_fail(a, {"argument 'x'", "expected a contiguous (row-major) tensor",
                      "got strides [1, 4]"});
  a = fwd();
  a.out = transposed(out.t);
  expect_fwd_fail(a, {"argument 'out'", "expected a contiguous (row-major) tensor",
                      "got strides [1, 4]"});
}

TEST_F(ValidationMoeForward, Misaligned) {
  MoeForwardArgs a = fwd();
  a.x = misaligned(x.t, 2);
  expect_fwd_fail(a, {"argument 'x'", "expected 16-byte aligned data", "(offset 2)"});
  a = fwd();
  a.w1 = misaligned(w1.t, 8);
  expect_fwd_fail(a, {"argument 'w1'", "expected 16-byte aligned data", "(offset 8)"});
  a = fwd();
  a.out = misaligned(out.t, 2);
  expect_fwd_fail(a, {"argument 'out'", "expected 16-byte aligned data", "(offset 2)"});
  a = fwd();
  a.h = misaligned(h.t, 2);
  expect_fwd_fail(a, {"argument 'h'", "expected 16-byte aligned data", "(offset 2)"});
  a = fwd();
  a.routing.sorted_pair = misaligned(meta.sorted_pair.t, 2);
  expect_fwd_fail(a, {"argument 'routing.sorted_pair'", "expected 4-byte aligned data",
                      "(offset 2)"});
}

TEST_F(ValidationMoeForward, NullData) {
  MoeForwardArgs a = fwd();
  a.w1 = null_data(w1.t);
  expect_fwd_fail(a, {"argument 'w1'", "expected a data pointer", "got nullptr"});
  a = fwd();
  a.out = null_data(out.t);
  expect_fwd_fail(a, {"argument 'out'", "expected a data pointer", "got nullptr"});
  a = fwd();
  a.b2 = null_data(b2.t);  // still present: ndim != 0
  expect_fwd_fail(a, {"argument 'b2'", "expected a data pointer", "got nullptr"});
}

TEST_F(ValidationMoeForward, RoutingShapes) {
  MoeForwardArgs a = fwd();
  a.routing.expert_counts = fresh(DType::I32, {E + 1});
  expect_fwd_fail(a, {"argument 'routing.expert_counts'", "expected shape [3]", "got [4]"});
  a = fwd();
  a.routing.expert_offsets = fresh(DType::I32, {E});
  expect_fwd_fail(a, {"argument 'routing.expert_offsets'", "expected shape [4]", "got [3]"});
  a = fwd();
  a.routing.token_offsets = fresh(DType::I32, {T});
  expect_fwd_fail(a, {"argument 'routing.token_offsets'", "expected shape [5]", "got [4]"});
  a = fwd();
  a.routing.sorted_pair = fresh(DType::I32, {N - 1});
  expect_fwd_fail(a, {"argument 'routing.sorted_pair'", "expected shape [8]", "got [7]"});
  a = fwd();
  a.routing.pair_position = fresh(DType::I32, {N + 1});
  expect_fwd_fail(a, {"argument 'routing.pair_position'", "expected shape [8]", "got [9]"});
}

TEST_F(ValidationMoeForward, Biases) {
  MoeForwardArgs a = fwd();
  a.b1 = fresh(DType::BF16, {E, n});
  expect_fwd_fail(a, {"argument 'b1'", "expected shape [3, 16]", "got [3, 8]"});
  a = fwd();
  a.b1 = fresh(DType::F32, {E, R});
  expect_fwd_fail(a, {"argument 'b1'", "expected dtype bf16", "got dtype f32"});
  a = fwd();
  a.b1 = misaligned(b1.t, 2);
  expect_fwd_fail(a, {"argument 'b1'", "expected 16-byte aligned data", "(offset 2)"});
  a = fwd();
  a.b2 = fresh(DType::BF16, {E, n});
  expect_fwd_fail(a, {"argument 'b2'", "expected shape [3, 16]", "got [3, 8]"});
  a = fwd();
  a.b2 = fresh(DType::BF16, {E * d});
  expect_fwd_fail(a, {"argument 'b2'", "expected shape [3, 16]", "got [48]"});
}

TEST_F(ValidationMoeForward, Scores) {
  MoeForwardArgs a = fwd();
  a.scores = fresh(DType::F32, {T, K, 1});
  expect_fwd_fail(a, {"argument 'scores'", "expected 1 or 2 dimensions", "got 3 dimensions"});
  a.scores = fresh(DType::F32, {T, K + 1});
  expect_fwd_fail(a, {"argument 'scores'", "expected shape [4, 2]", "got [4, 3]"});
  // [T, K] is the only 2-D shape: [1, 8] has the right count but not the shape.
  a.scores = fresh(DType::F32, {1, N});
  expect_fwd_fail(a, {"argument 'scores'", "expected shape [4, 2]", "got [1, 8]"});
  a.scores = fresh(DType::F32, {N + 1});
  expect_fwd_fail(a, {"argument 'scores'", "expected shape [8]", "got [9]"});
  a.scores = fresh(DType::BF16, {T, K});
  expect_fwd_fail(a, {"argument 'scores'", "expected dtype f32", "got dtype bf16"});
  a.scores = fresh(DType::BF16, {N});
  expect_fwd_fail(a, {"argument 'scores'", "expected dtype f32", "got dtype bf16"});
  a.scores = transposed(scores.t);
  expect_fwd_fail(a, {"argument 'scores'", "expected a contiguous (row-major) tensor",
                      "got strides [1, 4]"});
  a.scores = misaligned(scores.t, 2);
  expect_fwd_fail(a, {"argument 'scores'", "expected 4-byte aligned data", "(offset 2)"});
  a.scores = null_data(scores1d.t);
  expect_fwd_fail(a, {"argument 'scores'", "expected a data pointer", "got nullptr"});
}

TEST_F(ValidationMoeForward, OutAndH) {
  MoeForwardArgs a = fwd();
  a.out = fresh(DType::BF16, {T, d + 8});
  expect_fwd_fail(a, {"argument 'out'", "expected shape [4, 16]", "got [4, 24]"});
  a = fwd();
  a.h = fresh(DType::BF16, {N, n});
  expect_fwd_fail(a, {"argument 'h'", "expected shape [8, 16]", "got [8, 8]"});
  a = fwd();
  a.h = fresh(DType::BF16, {T, K, R});
  expect_fwd_fail(a, {"argument 'h'", "expected shape [8, 16]", "got [4, 2, 16]"});
}

TEST_F(ValidationMoeForward, HPresentInInference) {
  MoeForwardArgs a = fwd();
  a.mode = ForwardMode::Inference;
  expect_fwd_fail(a, {"argument 'h' must be absent in inference mode"});
}

TEST_F(ValidationMoeForward, Workspace) {
  ASSERT_GT(fneed, 0u);
  MoeForwardArgs a = fwd();
  a.workspace = Workspace{fws.get(), fneed - 1};
  expect_fwd_fail(a, {"argument 'workspace'", "expected at least " + std::to_string(fneed) +
                                                  " bytes",
                      "got " + std::to_string(fneed - 1) + " bytes"});
  a.workspace = Workspace{};
  expect_fwd_fail(a, {"argument 'workspace'", "got 0 bytes"});
  a.workspace = Workspace{nullptr, fneed};
  expect_fwd_fail(a, {"argument 'workspace'", "expected a data pointer", "got nullptr"});
  a.workspace = workspace_at(fneed, 64);
  expect_fwd_fail(a, {"argument 'workspace'", "expected 256-byte aligned data", "got address"});
}

TEST_F(ValidationMoeForward, TensorsOnDifferentDevices) {
  MoeForwardArgs a = fwd();
  a.w2 = on(w2.t, kCuda0);
  expect_fwd_fail(a, {"argument 'w2'", "expected a tensor on cpu:0 like the others",
                      "got one on cuda:0"});
  a = fwd();
  a.h = on(h.t, kCuda0);
  expect_fwd_fail(a, {"argument 'h'", "expected a tensor on cpu:0 like the others",
                      "got one on cuda:0"});
  a = fwd();
  a.routing.expert_offsets = on(meta.expert_offsets.t, kCuda0);
  expect_fwd_fail(a, {"argument 'routing.expert_offsets'",
                      "expected a tensor on cpu:0 like the others", "got one on cuda:0"});
  a = fwd();
  a.b1 = on(b1.t, Device{static_cast<DeviceType>(3), 0});
  expect_fwd_fail(a, {"argument 'b1'", "expected device type cpu (0) or cuda (1)", "got 3"});
}

TEST_F(ValidationMoeForward, CudaTensorsWithoutGpuBackend) {
  SKIP_IF_CUDA_DEVICE_PRESENT();
  MoeForwardArgs a = fwd();
  for (Tensor* t : {&a.x, &a.w1, &a.b1, &a.w2, &a.b2, &a.scores, &a.out, &a.h,
                    &a.routing.expert_counts, &a.routing.expert_offsets,
                    &a.routing.token_offsets, &a.routing.sorted_token, &a.routing.sorted_pair,
                    &a.routing.pair_position})
    t->device = kCuda0;
  expect_fwd_fail(a, {"CUDA tensors cannot run"}, Status::Unsupported);
}

// Routing metadata that would send the kernels out of bounds.
TEST_F(ValidationMoeForward, ExpertOffsetsNotEndingAtN) {
  offsets()[E] = N - 1;
  expect_fwd_fail(fwd(), {"argument 'routing.expert_offsets'", "expected 8",
                          "got 7 at flat index 3"});
}

TEST_F(ValidationMoeForward, ExpertOffsetsNotStartingAtZero) {
  offsets()[0] = 1;
  expect_fwd_fail(fwd(), {"argument 'routing.expert_offsets'", "expected 0",
                          "got 1 at flat index 0"});
}

TEST_F(ValidationMoeForward, ExpertOffsetsDecreasing) {
  offsets()[1] = 6;  // [0, 6, 5, 8]
  expect_fwd_fail(fwd(), {"argument 'routing.expert_offsets'",
                          "expected non-decreasing values in [6, 8]", "got 5 at flat index 2"});
}

TEST_F(ValidationMoeForward, ExpertOffsetsBeyondN) {
  offsets()[1] = 9;
  expect_fwd_fail(fwd(), {"argument 'routing.expert_offsets'",
                          "expected non-decreasing values in [0, 8]", "got 9 at flat index 1"});
}

TEST_F(ValidationMoeForward, TokenOffsetsCorrupt) {
  token_offsets()[T] = N + 1;
  expect_fwd_fail(fwd(), {"argument 'routing.token_offsets'",
                          "expected non-decreasing values in [6, 8]", "got 9 at flat index 4"});
  token_offsets()[T] = N;
  token_offsets()[0] = -1;
  expect_fwd_fail(fwd(), {"argument 'routing.token_offsets'", "expected 0",
                          "got -1 at flat index 0"});
}

TEST_F(ValidationMoeForward, SortedTokenOutOfRange) {
  sorted_token()[5] = static_cast<int32_t>(T);
  expect_fwd_fail(fwd(), {"argument 'routing.sorted_token'", "expected values in [0, 4)",
                          "got 4 at flat index 5"});
  sorted_token()[5] = -1;
  expect_fwd_fail(fwd(), {"argument 'routing.sorted_token'", "expected values in [0, 4)",
                          "got -1 at flat index 5"});
}

TEST_F(ValidationMoeForward, SortedPairOutOfRange) {
  sorted_pair()[0] = static_cast<int32_t>(N);
  expect_fwd_fail(fwd(), {"argument 'routing.sorted_pair'", "expected values in [0, 8)",
                          "got 8 at flat index 0"});
}

TEST_F(ValidationMoeForward, PairPositionOutOfRange) {
  pair_position()[7] = -2;
  expect_fwd_fail(fwd(), {"argument 'routing.pair_position'", "expected values in [-1, 8)",
                          "got -2 at flat index 7"});
  pair_position()[7] = 8;
  expect_fwd_fail(fwd(), {"argument 'routing.pair_position'", "expected values in [-1, 8)",
                          "got 8 at flat index 7"});
}

// -1 drops a pair (a padding pair of token rounding); the expert offsets must
// then end one earlier.
TEST_F(ValidationMoeForward, DroppedPairNeedsShorterOffsets) {
  pair_position()[7] = -1;
  expect_fwd_fail(fwd(), {"argument 'routing.expert_offsets'",
                          "expected 7 (8 pairs, 1 dropped with pair_position -1)",
                          "got 8 at flat index 3"});
}

TEST_F(ValidationMoeForward, ZeroPairsRun) {
  // N = 0: every token gets nothing; the routing tensors may have null data.
  RoutingTensors empty(kCpu, T, E, 0);
  const Tensor none = Tensor::contiguous(nullptr, DType::I32, {0});
  Buffer rws(kCpu, routing_workspace_size(kCpu, T, E, 0));
  routing_from_pairs(none, none, T, E, empty.routing(), rws.workspace());
  MoeForwardArgs a = fwd();
  a.routing = empty.routing();
  a.scores = Tensor::contiguous(nullptr, DType::F32, {0});
  a.h = Tensor::contiguous(nullptr, DType::BF16, {0, R});
  a.workspace = Workspace{};
  ASSERT_NO_THROW(moe_forward(a));
  for (double v : testing::to_doubles(out)) EXPECT_EQ(v, 0.0);
}

// ------------------------------------------------------- regressions ---
// Each of these failed before the fix that came with it.

// Negative dimensions passed validation where a size was read from a
// tensor and not range-checked (check_scores and permute_gate_up in
// src/api/api.cpp): [-2, -4] has 8 "elements".
TEST_F(ValidationMoeForward, NegativeScoreDimsAreRejected) {
  MoeForwardArgs a = fwd();
  a.scores.shape[0] = -2;
  a.scores.shape[1] = -4;
  a.scores.strides[0] = -4;
  a.scores.strides[1] = 1;
  expect_fwd_fail(a, {"argument 'scores'", "got [-2, -4]"});
}

}  // namespace
}  // namespace sonicmoe
