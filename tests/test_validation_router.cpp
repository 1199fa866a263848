// Validation of router_forward and router_backward.
// (validation.hpp: what every validation test asserts.)
#include "validation.hpp"

namespace sonicmoe {
namespace {

using namespace validation_test;

// ====================================================== router_forward =====

class ValidationRouterForward : public Validation {
 protected:
  static constexpr int64_t T = 5, E = 6, K = 2;
  DevTensor logits = from_doubles(kCpu, DType::F32, ramp(T * E, 2.0), {T, E});
  DevTensor logits16 = from_doubles(kCpu, DType::BF16, ramp(T * E, 2.0), {T, E});
  DevTensor scores = make(kCpu, DType::F32, {T, K});
  DevTensor ids = make(kCpu, DType::I32, {T, K});

  RouterArgs args() const {
    return RouterArgs{logits.t, K, RouterOrder::TopKThenSoftmax, false, scores.t, ids.t};
  }
  void expect_fail(const RouterArgs& a, const std::vector<std::string>& parts,
                   Status status = Status::InvalidArgument) {
    expect_error([&] { router_forward(a); }, status, "router_forward", parts);
    EXPECT_TRUE(poisoned(scores)) << "scores written by a failed call";
    EXPECT_TRUE(poisoned(ids)) << "expert_ids written by a failed call";
  }
};

TEST_F(ValidationRouterForward, ValidArgumentsRun) {
  for (RouterOrder o : {RouterOrder::TopKThenSoftmax, RouterOrder::SoftmaxThenTopK}) {
    RouterArgs a = args();
    a.order = o;
    EXPECT_NO_THROW(router_forward(a));
    a.logits = logits16.t;
    EXPECT_NO_THROW(router_forward(a));
  }
  EXPECT_FALSE(poisoned(scores));
  EXPECT_FALSE(poisoned(ids));
}

TEST_F(ValidationRouterForward, InvalidOrder) {
  RouterArgs a = args();
  a.order = static_cast<RouterOrder>(2);
  expect_fail(a, {"argument 'order'", "expected 0 (topk_then_softmax) or 1 (softmax_then_topk)",
                  "got 2"});
  a.order = static_cast<RouterOrder>(-1);
  expect_fail(a, {"argument 'order'", "got -1"});
}

TEST_F(ValidationRouterForward, MissingLogits) {
  RouterArgs a = args();
  a.logits = Tensor{};
  expect_fail(a, {"argument 'logits' is required"});
}

TEST_F(ValidationRouterForward, LogitsWrongRank) {
  RouterArgs a = args();
  a.logits = fresh(DType::F32, {T, E, 1});
  expect_fail(a, {"argument 'logits'", "expected 2 dimensions", "got 3 dimensions"});
}

TEST_F(ValidationRouterForward, ZeroTokens) {
  RouterArgs a = args();
  a.logits = fresh(DType::F32, {0, E});
  expect_fail(a, {"argument 'logits.shape[0] (tokens)'", "expected a value in [1, 2147483646]",
                  "got 0"});
}

TEST_F(ValidationRouterForward, ZeroExperts) {
  RouterArgs a = args();
  a.logits = fresh(DType::F32, {T, 0});
  expect_fail(a, {"argument 'logits.shape[1] (experts)'", "expected a value in [1, 2147483646]",
                  "got 0"});
}

TEST_F(ValidationRouterForward, KZero) {
  RouterArgs a = args();
  a.k = 0;
  expect_fail(a, {"argument 'k'", "expected a value in [1, 6]", "got 0"});
}

TEST_F(ValidationRouterForward, KGreaterThanE) {
  RouterArgs a = args();
  a.k = E + 1;
  a.scores = fresh(DType::F32, {T, E + 1});
  a.expert_ids = fresh(DType::I32, {T, E + 1});
  expect_fail(a, {"argument 'k'", "expected a value in [1, 6]", "got 7"});
}

TEST_F(ValidationRouterForward, LogitsWrongDtype) {
  RouterArgs a = args();
  a.logits = fresh(DType::I32, {T, E});
  expect_fail(a, {"argument 'logits'", "expected dtype f32 or bf16", "got i32"});
}

TEST_F(ValidationRouterForward, LogitsNotContiguous) {
  RouterArgs a = args();
  a.logits = transposed(logits.t);
  expect_fail(a, {"argument 'logits'", "expected a contiguous (row-major) tensor",
                  "got strides [1, 5]"});
}

TEST_F(ValidationRouterForward, LogitsNullData) {
  RouterArgs a = args();
  a.logits = null_data(logits.t);
  expect_fail(a, {"argument 'logits'", "expected a data pointer", "got nullptr"});
}

TEST_F(ValidationRouterForward, LogitsMisaligned) {
  RouterArgs a = args();
  a.logits = misaligned(logits16.t, 2);
  expect_fail(a, {"argument 'logits'", "expected 16-byte aligned data", "(offset 2)"});
  a.logits = misaligned(logits.t, 2);
  expect_fail(a, {"argument 'logits'", "expected 4-byte aligned data", "(offset 2)"});
}

TEST_F(ValidationRouterForward, MissingScores) {
  RouterArgs a = args();
  a.scores = Tensor{};
  expect_fail(a, {"argument 'scores' is required"});
}

TEST_F(ValidationRouterForward, ScoresWrongDtype) {
  RouterArgs a = args();
  a.scores = fresh(DType::BF16, {T, K});
  expect_fail(a, {"argument 'scores'", "expected dtype f32", "got dtype bf16"});
}

TEST_F(ValidationRouterForward, ScoresWrongShape) {
  RouterArgs a = args();
  a.scores = fresh(DType::F32, {T, K + 1});
  expect_fail(a, {"argument 'scores'", "expected shape [5, 2]", "got [5, 3]"});
}

TEST_F(ValidationRouterForward, ScoresWrongRank) {
  RouterArgs a = args();
  a.scores = fresh(DType::F32, {T * K});
  expect_fail(a, {"argument 'scores'", "expected shape [5, 2]", "got [10]"});
  a.scores = with_ndim(scores.t, 5);
  expect_fail(a, {"argument 'scores'", "expected shape [5, 2]", "got ndim 5"});
  a.scores = with_ndim(scores.t, -1);
  expect_fail(a, {"argument 'scores'", "expected shape [5, 2]", "got ndim -1"});
}

TEST_F(ValidationRouterForward, ScoresNotContiguous) {
  RouterArgs a = args();
  a.scores = transposed(scores.t);
  expect_fail(a, {"argument 'scores'", "expected a contiguous (row-major) tensor",
                  "got strides [1, 5]"});
}

TEST_F(ValidationRouterForward, ScoresMisaligned) {
  RouterArgs a = args();
  a.scores = misaligned(scores.t, 2);
  expect_fail(a, {"argument 'scores'", "expected 4-byte aligned data", "(offset 2)"});
}

TEST_F(ValidationRouterForward, ExpertIdsWrongDtype) {
  RouterArgs a = args();
  a.expert_ids = fresh(DType::F32, {T, K});
  expect_fail(a, {"argument 'expert_ids'", "expected dtype i32", "got dtype f32"});
}

TEST_F(ValidationRouterForward, ExpertIdsWrongShape) {
  RouterArgs a = args();
  a.expert_ids = fresh(DType::I32, {T, 1});
  expect_fail(a, {"argument 'expert_ids'", "expected shape [5, 2]", "got [5, 1]"});
}

TEST_F(ValidationRouterForward, ExpertIdsNullData) {
  RouterArgs a = args();
  a.expert_ids = null_data(ids.t);
  expect_fail(a, {"argument 'expert_ids'", "expected a data pointer", "got nullptr"});
}

TEST_F(ValidationRouterForward, TensorsOnDifferentDevices) {
  RouterArgs a = args();
  a.expert_ids = on(ids.t, kCuda0);
  expect_fail(a, {"argument 'expert_ids'", "expected a tensor on cpu:0 like the others",
                  "got one on cuda:0"});
  a = args();
  a.logits = on(logits.t, kCuda0);
  a.scores = on(scores.t, kCuda0);
  a.expert_ids = on(ids.t, kCuda1);
  expect_fail(a, {"argument 'expert_ids'", "expected a tensor on cuda:0 like the others",
                  "got one on cuda:1"});
}

TEST_F(ValidationRouterForward, InvalidDeviceType) {
  RouterArgs a = args();
  a.scores = on(scores.t, Device{static_cast<DeviceType>(7), 0});
  expect_fail(a, {"argument 'scores'", "expected device type cpu (0) or cuda (1)", "got 7"});
}

TEST_F(ValidationRouterForward, CudaTensorsWithoutGpuBackend) {
  SKIP_IF_CUDA_DEVICE_PRESENT();
  RouterArgs a = args();
  a.logits = on(logits.t, kCuda0);
  a.scores = on(scores.t, kCuda0);
  a.expert_ids = on(ids.t, kCuda0);
  expect_fail(a, {"CUDA tensors cannot run"}, Status::Unsupported);
}

// ===================================================== router_backward =====

class ValidationRouterBackward : public Validation {
 protected:
  static constexpr int64_t T = 5, E = 6, K = 2;
  DevTensor logits = from_doubles(kCpu, DType::F32, ramp(T * E, 2.0), {T, E});
  DevTensor logits16 = from_doubles(kCpu, DType::BF16, ramp(T * E, 2.0), {T, E});
  DevTensor ids = ids_2d({0, 5, 1, 2, 3, 4, 5, 0, 2, 1});
  DevTensor dscores = from_doubles(kCpu, DType::F32, ramp(T * K, 1.0), {T, K});
  DevTensor dlogits = make(kCpu, DType::F32, {T, E});
  DevTensor dlogits16 = make(kCpu, DType::BF16, {T, E});

  static DevTensor ids_2d(const std::vector<int32_t>& v) {
    DevTensor d = from_ints(kCpu, v);
    d.t = Tensor::contiguous(d.t.data, DType::I32, {T, K});
    return d;
  }
  RouterBackwardArgs args() const {
    return RouterBackwardArgs{logits.t, ids.t, dscores.t, RouterOrder::TopKThenSoftmax, false,
                              dlogits.t};
  }
  void expect_fail(const RouterBackwardArgs& a, const std::vector<std::string>& parts,
                   Status status = Status::InvalidArgument) {
    expect_error([&] { router_backward(a); }, status, "router_backward", parts);
    EXPECT_TRUE(poisoned(dlogits)) << "dlogits written by a failed call";
    EXPECT_TRUE(poisoned(dlogits16)) << "dlogits written by a failed call";
  }
};

TEST_F(ValidationRouterBackward, ValidArgumentsRun) {
  for (RouterOrder o : {RouterOrder::TopKThenSoftmax, RouterOrder::SoftmaxThenTopK})
    for (bool renorm : {false, true}) {
      RouterBackwardArgs a = args();
      a.order = o;
      a.renormalize = renorm;
      EXPECT_NO_THROW(router_backward(a));
      a.logits = logits16.t;
      a.dlogits = dlogits16.t;
      EXPECT_NO_THROW(router_backward(a));
    }
  EXPECT_FALSE(poisoned(dlogits));
  EXPECT_FALSE(poisoned(dlogits16));
}

TEST_F(ValidationRouterBackward, InvalidOrder) {
  RouterBackwardArgs a = args();
  a.order = static_cast<RouterOrder>(2);
  expect_fail(a, {"argument 'order'", "expected 0 (topk_then_softmax) or 1 (softmax_then_topk)",
                  "got 2"});
}

TEST_F(ValidationRouterBackward, MissingTensors) {
  RouterBackwardArgs a = args();
  a.logits = Tensor{};
  expect_fail(a, {"argument 'logits' is required"});
  a = args();
  a.expert_ids = Tensor{};
  expect_fail(a, {"argument 'expert_ids' is required"});
  a = args();
  a.dscores = Tensor{};
  expect_fail(a, {"argument 'dscores' is required"});
  a = args();
  a.dlogits = Tensor{};
  expect_fail(a, {"argument 'dlogits' is required"});
}

TEST_F(ValidationRouterBackward, WrongRanks) {
  RouterBackwardArgs a = args();
  a.logits = fresh(DType::F32, {T * E});
  expect_fail(a, {"argument 'logits'", "expected 2 dimensions", "got 1 dimensions"});
  a = args();
  a.expert_ids = fresh(DType::I32, {T * K});
  expect_fail(a, {"argument 'expert_ids'", "expected 2 dimensions", "got 1 dimensions"});
}

TEST_F(ValidationRouterBackward, KZero) {
  RouterBackwardArgs a = args();
  a.expert_ids = fresh(DType::I32, {T, 0});
  expect_fail(a, {"argument 'expert_ids.shape[1] (k)'", "expected a value in [1, 6]", "got 0"});
}

TEST_F(ValidationRouterBackward, KGreaterThanE) {
  RouterBackwardArgs a = args();
  a.expert_ids = fresh(DType::I32, {T, E + 1});
  a.dscores = fresh(DType::F32, {T, E + 1});
  expect_fail(a, {"argument 'expert_ids.shape[1] (k)'", "expected a value in [1, 6]", "got 7"});
}

TEST_F(ValidationRouterBackward, WrongDtypes) {
  RouterBackwardArgs a = args();
  a.logits = fresh(DType::I32, {T, E});
  expect_fail(a, {"argument 'logits'", "expected dtype f32 or bf16", "got i32"});
  a = args();
  a.expert_ids = fresh(DType::F32, {T, K});
  expect_fail(a, {"argument 'expert_ids'", "expected dtype i32", "got dtype f32"});
  a = args();
  a.dscores = fresh(DType::BF16, {T, K});
  expect_fail(a, {"argument 'dscores'", "expected dtype f32", "got dtype bf16"});
}

TEST_F(ValidationRouterBackward, DlogitsDtypeMustMatchLogits) {
  RouterBackwardArgs a = args();
  a.dlogits = dlogits16.t;
  expect_fail(a, {"argument 'dlogits'", "expected dtype f32", "got dtype bf16"});
  a.logits = logits16.t;
  a.dlogits = dlogits.t;
  expect_fail(a, {"argument 'dlogits'", "expected dtype bf16", "got dtype f32"});
}

TEST_F(ValidationRouterBackward, WrongShapes) {
  RouterBackwardArgs a = args();
  a.expert_ids = fresh(DType::I32, {T - 1, K});
  expect_fail(a, {"argument 'expert_ids'", "expected shape [5, 2]", "got [4, 2]"});
  a = args();
  a.dscores = fresh(DType::F32, {T, K + 1});
  expect_fail(a, {"argument 'dscores'", "expected shape [5, 2]", "got [5, 3]"});
  a = args();
  a.dlogits = fresh(DType::F32, {T, E + 1});
  expect_fail(a, {"argument 'dlogits'", "expected shape [5, 6]", "got [5, 7]"});
}

TEST_F(ValidationRouterBackward, NotContiguous) {
  RouterBackwardArgs a = args();
  a.dlogits = transposed(dlogits.t);
  expect_fail(a, {"argument 'dlogits'", "expected a contiguous (row-major) tensor",
                  "got strides [1, 5]"});
  a = args();
  a.expert_ids = transposed(ids.t);
  expect_fail(a, {"argument 'expert_ids'", "expected a contiguous (row-major) tensor",
                  "got strides [1, 5]"});
}

TEST_F(ValidationRouterBackward, MisalignedAndNull) {
  RouterBackwardArgs a = args();
  a.logits = logits16.t;
  a.dlogits = misaligned(dlogits16.t, 2);
  expect_fail(a, {"argument 'dlogits'", "expected 16-byte aligned data", "(offset 2)"});
  a = args();
  a.dscores = misaligned(dscores.t, 2);
  expect_fail(a, {"argument 'dscores'", "expected 4-byte aligned data", "(offset 2)"});
  a = args();
  a.dscores = null_data(dscores.t);
  expect_fail(a, {"argument 'dscores'", "expected a data pointer", "got nullptr"});
}

TEST_F(ValidationRouterBackward, TensorsOnDifferentDevices) {
  RouterBackwardArgs a = args();
  a.dscores = on(dscores.t, kCuda0);
  expect_fail(a, {"argument 'dscores'", "expected a tensor on cpu:0 like the others",
                  "got one on cuda:0"});
}

TEST_F(ValidationRouterBackward, CudaTensorsWithoutGpuBackend) {
  SKIP_IF_CUDA_DEVICE_PRESENT();
  RouterBackwardArgs a = args();
  a.logits = on(logits.t, kCuda0);
  a.expert_ids = on(ids.t, kCuda0);
  a.dscores = on(dscores.t, kCuda0);
  a.dlogits = on(dlogits.t, kCuda0);
  expect_fail(a, {"CUDA tensors cannot run"}, Status::Unsupported);
}

TEST_F(ValidationRouterBackward, ExpertIdOutOfRange) {
  static_cast<int32_t*>(ids.t.data)[3] = static_cast<int32_t>(E);
  expect_fail(args(), {"argument 'expert_ids'", "expected values in [0, 6)",
                       "got 6 at flat index 3"});
  static_cast<int32_t*>(ids.t.data)[3] = 2;
  static_cast<int32_t*>(ids.t.data)[8] = -1;
  expect_fail(args(), {"argument 'expert_ids'", "expected values in [0, 6)",
                       "got -1 at flat index 8"});
}

// ------------------------------------------------------- regressions ---
// Each of these failed before the fix that came with it.

// Errors raised while choosing the backend (src/backend/registry.cpp) did
// not name the call.
TEST_F(ValidationRouterForward, UnsupportedNamesTheCall) {
  SKIP_IF_CUDA_DEVICE_PRESENT();
  RouterArgs a = args();
  a.logits = on(logits.t, kCuda0);
  a.scores = on(scores.t, kCuda0);
  a.expert_ids = on(ids.t, kCuda0);
  expect_fail(a, {"sonicmoe::router_forward"}, Status::Unsupported);
}

// CPU tensors with different device indices were rejected with a message
// that contradicted itself ("expected a tensor on cpu:0 like the others, got
// one on cpu"): the device's string dropped the index that the check compares.
TEST_F(ValidationRouterForward, CpuDeviceIndexMismatchIsExplained) {
  RouterArgs a = args();
  a.scores.device.index = 1;
  expect_fail(a, {"argument 'scores'", "expected a tensor on cpu:0 like the others",
                  "got one on cpu:1"});
}

// An out-of-range dtype value was printed as "unknown", not as the value given.
TEST_F(ValidationRouterForward, UnknownDtypeValueIsReported) {
  RouterArgs a = args();
  a.scores.dtype = static_cast<DType>(9);
  expect_fail(a, {"argument 'scores'", "got dtype 9"});
}

}  // namespace
}  // namespace sonicmoe
