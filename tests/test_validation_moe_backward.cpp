// Validation of moe_backward.
// (validation.hpp: what every validation test asserts.)
#include "validation_layer.hpp"

namespace sonicmoe {
namespace {

using namespace validation_test;

// ------------------------------------------------------ moe_backward ------

using ValidationMoeBackward = ValidationLayer;

TEST_F(ValidationMoeBackward, ValidArgumentsRun) {
  MoeBackwardArgs a = bwd();
  EXPECT_NO_THROW(moe_backward(a));
  EXPECT_FALSE(poisoned(dx));
  EXPECT_FALSE(poisoned(db1));
  EXPECT_FALSE(poisoned(dscores));
  // Without biases (and their gradients), scores and dscores as [N].
  DevTensor ds1 = make(kCpu, DType::F32, {N});
  a.b1 = a.b2 = a.db1 = a.db2 = Tensor{};
  a.scores = scores1d.t;
  a.dscores = ds1.t;
  EXPECT_NO_THROW(moe_backward(a));
}

TEST_F(ValidationMoeBackward, InvalidActivation) {
  MoeBackwardArgs a = bwd();
  a.activation = static_cast<Activation>(7);
  expect_bwd_fail(a, {"argument 'activation'", "expected a value in [0, 6]", "got 7"});
}

TEST_F(ValidationMoeBackward, GatedW1RowsMustBe2n) {
  MoeBackwardArgs a = bwd();
  a.w1 = fresh(DType::BF16, {E, n, d});
  expect_bwd_fail(a, {"argument 'w1'", "expected shape[1] == 16 (2n, gated swiglu)", "got 8"});
}

TEST_F(ValidationMoeBackward, SizesFromInputs) {
  MoeBackwardArgs a = bwd();
  a.x = fresh(DType::BF16, {T, 20});
  expect_bwd_fail(a, {"argument 'x.shape[1] (hidden size)'", "expected a positive multiple of 8",
                      "got 20"});
  a = bwd();
  a.w2 = fresh(DType::BF16, {E, d, 4});
  expect_bwd_fail(a, {"argument 'w2.shape[2] (intermediate size)'", "got 4"});
}

TEST_F(ValidationMoeBackward, MissingRequiredTensors) {
  for (auto [field, name] : std::vector<std::pair<Tensor MoeBackwardArgs::*, std::string>>{
           {&MoeBackwardArgs::x, "x"},
           {&MoeBackwardArgs::w1, "w1"},
           {&MoeBackwardArgs::w2, "w2"},
           {&MoeBackwardArgs::scores, "scores"},
           {&MoeBackwardArgs::h, "h"},
           {&MoeBackwardArgs::dout, "dout"}}) {
    MoeBackwardArgs a = bwd();
    a.*field = Tensor{};
    SCOPED_TRACE(name);
    expect_bwd_fail(a, {"argument '" + name + "' is required"});
  }
  MoeBackwardArgs a = bwd();
  a.routing.token_offsets = Tensor{};
  expect_bwd_fail(a, {"argument 'routing.token_offsets' is required"});
}

// Gradients are optional (test_layer_optional_grads.cpp checks their
// values): an absent one is accepted and not written, a present one is
// still checked.
TEST_F(ValidationMoeBackward, AbsentGradientsAreAccepted) {
  MoeBackwardArgs a = bwd();  // first: the failure must leave every output poisoned
  a.dx = Tensor{};
  a.dw1 = fresh(DType::BF16, {E, R, d + 8});
  expect_bwd_fail(a, {"argument 'dw1'", "expected shape [3, 16, 16]", "got [3, 16, 24]"});
  a = bwd();
  a.dx = a.dw1 = a.db1 = a.dw2 = a.db2 = a.dscores = Tensor{};
  EXPECT_NO_THROW(moe_backward(a));
  EXPECT_TRUE(backward_outputs_poisoned());
  a = bwd();
  a.dw1 = a.db1 = a.dw2 = a.db2 = Tensor{};
  EXPECT_NO_THROW(moe_backward(a));
  EXPECT_FALSE(poisoned(dx));
  EXPECT_FALSE(poisoned(dscores));
  EXPECT_TRUE(poisoned(dw1) && poisoned(db1) && poisoned(dw2) && poisoned(db2));
}

TEST_F(ValidationMoeBackward, BiasGradientWithoutBias) {
  MoeBackwardArgs a = bwd();
  a.b1 = Tensor{};
  expect_bwd_fail(a, {"argument 'db1' must be absent when b1 is absent"});
  a = bwd();
  a.b2 = Tensor{};
  expect_bwd_fail(a, {"argument 'db2' must be absent when b2 is absent"});
}

TEST_F(ValidationMoeBackward, WrongShapes) {
  MoeBackwardArgs a = bwd();
  a.h = fresh(DType::BF16, {N, n});
  expect_bwd_fail(a, {"argument 'h'", "expected shape [8, 16]", "got [8, 8]"});
  a = bwd();
  a.dout = fresh(DType::BF16, {T + 1, d});
  expect_bwd_fail(a, {"argument 'dout'", "expected shape [4, 16]", "got [5, 16]"});
  a = bwd();
  a.dx = fresh(DType::BF16, {T, d + 8});
  expect_bwd_fail(a, {"argument 'dx'", "expected shape [4, 16]", "got [4, 24]"});
  a = bwd();
  a.dw1 = fresh(DType::BF16, {E, n, d});
  expect_bwd_fail(a, {"argument 'dw1'", "expected shape [3, 16, 16]", "got [3, 8, 16]"});
  a = bwd();
  a.dw2 = fresh(DType::BF16, {E, d, d});
  expect_bwd_fail(a, {"argument 'dw2'", "expected shape [3, 16, 8]", "got [3, 16, 16]"});
  a = bwd();
  a.db1 = fresh(DType::BF16, {E, n});
  expect_bwd_fail(a, {"argument 'db1'", "expected shape [3, 16]", "got [3, 8]"});
  a = bwd();
  a.db2 = fresh(DType::BF16, {E + 1, d});
  expect_bwd_fail(a, {"argument 'db2'", "expected shape [3, 16]", "got [4, 16]"});
}

TEST_F(ValidationMoeBackward, DscoresShapedLikeScores) {
  MoeBackwardArgs a = bwd();
  a.dscores = fresh(DType::F32, {N});
  expect_bwd_fail(a, {"argument 'dscores'", "expected shape [4, 2]", "got [8]"});
  a.scores = scores1d.t;
  a.dscores = fresh(DType::F32, {T, K});
  expect_bwd_fail(a, {"argument 'dscores'", "expected shape [8]", "got [4, 2]"});
  a = bwd();
  a.dscores = fresh(DType::BF16, {T, K});
  expect_bwd_fail(a, {"argument 'dscores'", "expected dtype f32", "got dtype bf16"});
}

TEST_F(ValidationMoeBackward, WrongDtypes) {
  MoeBackwardArgs a = bwd();
  a.h = fresh(DType::F32, {N, R});
  expect_bwd_fail(a, {"argument 'h'", "expected dtype bf16", "got dtype f32"});
  a = bwd();
  a.dout = fresh(DType::F32, {T, d});
  expect_bwd_fail(a, {"argument 'dout'", "expected dtype bf16", "got dtype f32"});
  a = bwd();
  a.dw2 = fresh(DType::F32, {E, d, n});
  expect_bwd_fail(a, {"argument 'dw2'", "expected dtype bf16", "got dtype f32"});
  a = bwd();
  a.db2 = fresh(DType::F32, {E, d});
  expect_bwd_fail(a, {"argument 'db2'", "expected dtype bf16", "got dtype f32"});
}

TEST_F(ValidationMoeBackward, LayoutAndPointers) {
  MoeBackwardArgs a = bwd();
  a.dx = misaligned(dx.t, 2);
  expect_bwd_fail(a, {"argument 'dx'", "expected 16-byte aligned data", "(offset 2)"});
  a = bwd();
  a.dw1 = null_data(dw1.t);
  expect_bwd_fail(a, {"argument 'dw1'", "expected a data pointer", "got nullptr"});
  a = bwd();
  a.dout = transposed(dout.t);
  expect_bwd_fail(a, {"argument 'dout'", "expected a contiguous (row-major) tensor",
                      "got strides [1, 4]"});
  a = bwd();
  a.dscores = misaligned(dscores.t, 2);
  expect_bwd_fail(a, {"argument 'dscores'", "expected 4-byte aligned data", "(offset 2)"});
}

TEST_F(ValidationMoeBackward, Workspace) {
  ASSERT_GT(bneed, 0u);
  MoeBackwardArgs a = bwd();
  a.workspace = Workspace{bws.get(), bneed - 1};
  expect_bwd_fail(a, {"argument 'workspace'", "expected at least " + std::to_string(bneed) +
                                                  " bytes",
                      "got " + std::to_string(bneed - 1) + " bytes"});
  a.workspace = Workspace{nullptr, bneed};
  expect_bwd_fail(a, {"argument 'workspace'", "expected a data pointer", "got nullptr"});
  a.workspace = workspace_at(bneed, 32);
  expect_bwd_fail(a, {"argument 'workspace'", "expected 256-byte aligned data", "got address"});
}

TEST_F(ValidationMoeBackward, TensorsOnDifferentDevices) {
  MoeBackwardArgs a = bwd();
  a.dw2 = on(dw2.t, kCuda0);
  expect_bwd_fail(a, {"argument 'dw2'", "expected a tensor on cpu:0 like the others",
                      "got one on cuda:0"});
}

TEST_F(ValidationMoeBackward, CudaTensorsWithoutGpuBackend) {
  SKIP_IF_CUDA_DEVICE_PRESENT();
  MoeBackwardArgs a = bwd();
  for (Tensor* t : {&a.x, &a.w1, &a.b1, &a.w2, &a.b2, &a.scores, &a.h, &a.dout, &a.dx, &a.dw1,
                    &a.db1, &a.dw2, &a.db2, &a.dscores, &a.routing.expert_counts,
                    &a.routing.expert_offsets, &a.routing.token_offsets,
                    &a.routing.sorted_token, &a.routing.sorted_pair, &a.routing.pair_position})
    t->device = kCuda0;
  expect_bwd_fail(a, {"CUDA tensors cannot run"}, Status::Unsupported);
}

TEST_F(ValidationMoeBackward, CorruptRouting) {
  offsets()[E] = N - 2;
  expect_bwd_fail(bwd(), {"argument 'routing.expert_offsets'", "expected 8",
                          "got 6 at flat index 3"});
  offsets()[E] = N;
  sorted_token()[0] = 100;
  expect_bwd_fail(bwd(), {"argument 'routing.sorted_token'", "expected values in [0, 4)",
                          "got 100 at flat index 0"});
  sorted_token()[0] = 0;
  sorted_pair()[3] = -5;
  expect_bwd_fail(bwd(), {"argument 'routing.sorted_pair'", "expected values in [0, 8)",
                          "got -5 at flat index 3"});
}

}  // namespace
}  // namespace sonicmoe
