// Validation of routing_workspace_size, routing_from_topk and routing_from_pairs.
// (validation.hpp: what every validation test asserts.)
#include "validation.hpp"

namespace sonicmoe {
namespace {

using namespace validation_test;

// ============================================== routing_workspace_size =====

TEST(ValidationRoutingWorkspaceSize, ValidArgumentsRun) {
  EXPECT_NO_THROW(routing_workspace_size(kCpu, 4, 3, 0));
  EXPECT_GE(routing_workspace_size(kCpu, 4, 3, 8), 3 * sizeof(int32_t));
}

TEST(ValidationRoutingWorkspaceSize, Counts) {
  const char* call = "routing_workspace_size";
  expect_error([] { routing_workspace_size(kCpu, 0, 3, 8); }, Status::InvalidArgument, call,
               {"argument 'num_tokens'", "expected a value in [1, 2147483646]", "got 0"});
  expect_error([] { routing_workspace_size(kCpu, int64_t{1} << 31, 3, 8); },
               Status::InvalidArgument, call, {"argument 'num_tokens'", "got 2147483648"});
  expect_error([] { routing_workspace_size(kCpu, 4, 0, 8); }, Status::InvalidArgument, call,
               {"argument 'num_experts'", "expected a value in [1, 2147483646]", "got 0"});
  expect_error([] { routing_workspace_size(kCpu, 4, 3, -1); }, Status::InvalidArgument, call,
               {"argument 'num_pairs'", "expected a value in [0, 2147483647]", "got -1"});
  expect_error([] { routing_workspace_size(kCpu, 4, 3, int64_t{1} << 31); },
               Status::InvalidArgument, call, {"argument 'num_pairs'", "got 2147483648"});
}

TEST(ValidationRoutingWorkspaceSize, CudaWithoutGpuBackend) {
  SKIP_IF_CUDA_DEVICE_PRESENT();
  expect_error([] { routing_workspace_size(kCuda0, 4, 3, 8); }, Status::Unsupported,
               "routing_workspace_size", {"CUDA tensors cannot run"});
}

// =================================================== routing_from_topk =====

class ValidationRoutingFromTopk : public Validation {
 protected:
  static constexpr int64_t T = 5, K = 2, E = 4, N = T * K;
  DevTensor ids = ids_2d({0, 3, 1, 2, 2, 0, 3, 1, 0, 2});
  RoutingTensors out{kCpu, T, E, N};
  size_t need = routing_workspace_size(kCpu, T, E, N);
  Buffer ws{kCpu, need};

  static DevTensor ids_2d(const std::vector<int32_t>& v) {
    DevTensor d = from_ints(kCpu, v);
    d.t = Tensor::contiguous(d.t.data, DType::I32, {T, K});
    return d;
  }
  void expect_fail(const Tensor& e, int64_t experts, const Routing& r, Workspace w,
                   const std::vector<std::string>& parts,
                   Status status = Status::InvalidArgument) {
    expect_error([&] { routing_from_topk(e, experts, r, w); }, status, "routing_from_topk",
                 parts);
    EXPECT_TRUE(all_poisoned(out)) << "routing written by a failed call";
  }
  void expect_fail_routing(const Routing& r, const std::vector<std::string>& parts) {
    expect_fail(ids.t, E, r, ws.workspace(), parts);
  }
};

TEST_F(ValidationRoutingFromTopk, ValidArgumentsRun) {
  ASSERT_GT(need, 0u);
  EXPECT_NO_THROW(routing_from_topk(ids.t, E, out.routing(), ws.workspace()));
  EXPECT_FALSE(out.counts.buf == nullptr || poisoned(out.counts));
  EXPECT_FALSE(poisoned(out.pair_position));
}

TEST_F(ValidationRoutingFromTopk, MissingExpertIds) {
  expect_fail(Tensor{}, E, out.routing(), ws.workspace(), {"argument 'expert_ids' is required"});
}

TEST_F(ValidationRoutingFromTopk, ExpertIdsWrongRank) {
  expect_fail(fresh(DType::I32, {N}), E, out.routing(), ws.workspace(),
              {"argument 'expert_ids'", "expected 2 dimensions", "got 1 dimensions"});
}

TEST_F(ValidationRoutingFromTopk, NumExperts) {
  expect_fail(ids.t, 0, out.routing(), ws.workspace(),
              {"argument 'num_experts'", "expected a value in [1, 2147483646]", "got 0"});
  expect_fail(ids.t, -4, out.routing(), ws.workspace(), {"argument 'num_experts'", "got -4"});
}

TEST_F(ValidationRoutingFromTopk, ZeroTokens) {
  expect_fail(fresh(DType::I32, {0, K}), E, out.routing(), ws.workspace(),
              {"argument 'expert_ids.shape[0] (tokens)'", "expected a value in [1, 2147483646]",
               "got 0"});
}

TEST_F(ValidationRoutingFromTopk, KZero) {
  expect_fail(fresh(DType::I32, {T, 0}), E, out.routing(), ws.workspace(),
              {"argument 'expert_ids.shape[1] (k)'", "expected a value in [1, 4]", "got 0"});
}

TEST_F(ValidationRoutingFromTopk, KGreaterThanE) {
  expect_fail(fresh(DType::I32, {T, E + 1}), E, out.routing(), ws.workspace(),
              {"argument 'expert_ids.shape[1] (k)'", "expected a value in [1, 4]", "got 5"});
}

TEST_F(ValidationRoutingFromTopk, ExpertIdsWrongDtype) {
  expect_fail(fresh(DType::F32, {T, K}), E, out.routing(), ws.workspace(),
              {"argument 'expert_ids'", "expected dtype i32", "got dtype f32"});
}

TEST_F(ValidationRoutingFromTopk, ExpertIdsNotContiguous) {
  expect_fail(transposed(ids.t), E, out.routing(), ws.workspace(),
              {"argument 'expert_ids'", "expected a contiguous (row-major) tensor",
               "got strides [1, 5]"});
}

TEST_F(ValidationRoutingFromTopk, ExpertIdsMisalignedOrNull) {
  expect_fail(misaligned(ids.t, 2), E, out.routing(), ws.workspace(),
              {"argument 'expert_ids'", "expected 4-byte aligned data", "(offset 2)"});
  expect_fail(null_data(ids.t), E, out.routing(), ws.workspace(),
              {"argument 'expert_ids'", "expected a data pointer", "got nullptr"});
}

TEST_F(ValidationRoutingFromTopk, RoutingShapes) {
  Routing r = out.routing();
  r.expert_counts = fresh(DType::I32, {E + 1});
  expect_fail_routing(r, {"argument 'routing.expert_counts'", "expected shape [4]", "got [5]"});
  r = out.routing();
  r.expert_offsets = fresh(DType::I32, {E});
  expect_fail_routing(r, {"argument 'routing.expert_offsets'", "expected shape [5]", "got [4]"});
  r = out.routing();
  r.token_offsets = fresh(DType::I32, {T});
  expect_fail_routing(r, {"argument 'routing.token_offsets'", "expected shape [6]", "got [5]"});
  r = out.routing();
  r.sorted_token = fresh(DType::I32, {N - 1});
  expect_fail_routing(r, {"argument 'routing.sorted_token'", "expected shape [10]", "got [9]"});
  r = out.routing();
  r.sorted_pair = fresh(DType::I32, {T, K});
  expect_fail_routing(r, {"argument 'routing.sorted_pair'", "expected shape [10]", "got [5, 2]"});
  r = out.routing();
  r.pair_position = fresh(DType::I32, {N + 1});
  expect_fail_routing(r, {"argument 'routing.pair_position'", "expected shape [10]", "got [11]"});
}

TEST_F(ValidationRoutingFromTopk, RoutingDtypesAndPresence) {
  Routing r = out.routing();
  r.sorted_pair = fresh(DType::F32, {N});
  expect_fail_routing(r, {"argument 'routing.sorted_pair'", "expected dtype i32", "got dtype f32"});
  r = out.routing();
  r.pair_position = Tensor{};
  expect_fail_routing(r, {"argument 'routing.pair_position' is required"});
  r = out.routing();
  r.expert_counts = Tensor{};
  expect_fail_routing(r, {"argument 'routing.expert_counts' is required"});
}

TEST_F(ValidationRoutingFromTopk, RoutingLayoutAndDevice) {
  Routing r = out.routing();
  r.pair_position = misaligned(out.pair_position.t, 2);
  expect_fail_routing(r, {"argument 'routing.pair_position'", "expected 4-byte aligned data",
                          "(offset 2)"});
  r = out.routing();
  r.token_offsets = null_data(out.token_offsets.t);
  expect_fail_routing(r, {"argument 'routing.token_offsets'", "expected a data pointer",
                          "got nullptr"});
  r = out.routing();
  r.sorted_token = strided1d(DType::I32, N);
  expect_fail_routing(r, {"argument 'routing.sorted_token'",
                          "expected a contiguous (row-major) tensor", "got strides [2]"});
  r = out.routing();
  r.sorted_pair = on(out.sorted_pair.t, kCuda0);
  expect_fail_routing(r, {"argument 'routing.sorted_pair'",
                          "expected a tensor on cpu:0 like the others", "got one on cuda:0"});
}

TEST_F(ValidationRoutingFromTopk, WorkspaceTooSmall) {
  expect_fail(ids.t, E, out.routing(), Workspace{ws.get(), need - 1},
              {"argument 'workspace'", "expected at least " + std::to_string(need) + " bytes",
               "got " + std::to_string(need - 1) + " bytes"});
  expect_fail(ids.t, E, out.routing(), Workspace{},
              {"argument 'workspace'", "expected at least " + std::to_string(need) + " bytes",
               "got 0 bytes"});
}

TEST_F(ValidationRoutingFromTopk, WorkspaceNull) {
  expect_fail(ids.t, E, out.routing(), Workspace{nullptr, need},
              {"argument 'workspace'", "expected a data pointer", "got nullptr"});
}

TEST_F(ValidationRoutingFromTopk, WorkspaceMisaligned) {
  const Workspace w = workspace_at(need, 16);
  expect_fail(ids.t, E, out.routing(), w,
              {"argument 'workspace'", "expected 256-byte aligned data",
               "got address " + std::to_string(reinterpret_cast<uintptr_t>(w.data))});
}

TEST_F(ValidationRoutingFromTopk, CudaTensorsWithoutGpuBackend) {
  SKIP_IF_CUDA_DEVICE_PRESENT();
  Routing r = out.routing();
  for (Tensor* t : {&r.expert_counts, &r.expert_offsets, &r.token_offsets, &r.sorted_token,
                    &r.sorted_pair, &r.pair_position})
    t->device = kCuda0;
  expect_fail(on(ids.t, kCuda0), E, r, ws.workspace(), {"CUDA tensors cannot run"},
              Status::Unsupported);
}

TEST_F(ValidationRoutingFromTopk, ExpertIdOutOfRange) {
  static_cast<int32_t*>(ids.t.data)[3] = static_cast<int32_t>(E);
  expect_fail(ids.t, E, out.routing(), ws.workspace(),
              {"argument 'expert_ids'", "expected values in [0, 4)", "got 4 at flat index 3"});
  static_cast<int32_t*>(ids.t.data)[3] = 0;
  static_cast<int32_t*>(ids.t.data)[9] = -1;
  expect_fail(ids.t, E, out.routing(), ws.workspace(),
              {"argument 'expert_ids'", "expected values in [0, 4)", "got -1 at flat index 9"});
}

// ================================================== routing_from_pairs =====

class ValidationRoutingFromPairs : public Validation {
 protected:
  static constexpr int64_t T = 4, E = 3, N = 6;
  DevTensor tokens = from_ints(kCpu, {0, 0, 1, 2, 2, 3});
  DevTensor experts = from_ints(kCpu, {2, 0, 1, 1, 0, 2});
  RoutingTensors out{kCpu, T, E, N};
  size_t need = routing_workspace_size(kCpu, T, E, N);
  Buffer ws{kCpu, need};

  struct Call {
    Tensor tok, exp;
    int64_t T, E;
    Routing r;
    Workspace w;
  };
  Call call() const { return Call{tokens.t, experts.t, T, E, out.routing(), ws.workspace()}; }
  void expect_fail(const Call& c, const std::vector<std::string>& parts,
                   Status status = Status::InvalidArgument) {
    expect_error([&] { routing_from_pairs(c.tok, c.exp, c.T, c.E, c.r, c.w); }, status,
                 "routing_from_pairs", parts);
    EXPECT_TRUE(all_poisoned(out)) << "routing written by a failed call";
  }
  int32_t* tok() { return static_cast<int32_t*>(tokens.t.data); }
  int32_t* exp() { return static_cast<int32_t*>(experts.t.data); }
};

TEST_F(ValidationRoutingFromPairs, ValidArgumentsRun) {
  const Call c = call();
  EXPECT_NO_THROW(routing_from_pairs(c.tok, c.exp, c.T, c.E, c.r, c.w));
  EXPECT_FALSE(poisoned(out.token_offsets));
}

TEST_F(ValidationRoutingFromPairs, ZeroPairsWithNullDataRun) {
  // A present tensor with zero elements may have a null data pointer.
  RoutingTensors empty(kCpu, T, E, 0);
  const Tensor none = Tensor::contiguous(nullptr, DType::I32, {0});
  EXPECT_NO_THROW(routing_from_pairs(none, none, T, E, empty.routing(), ws.workspace()));
}

TEST_F(ValidationRoutingFromPairs, MissingTensors) {
  Call c = call();
  c.tok = Tensor{};
  expect_fail(c, {"argument 'token_ids' is required"});
  c = call();
  c.exp = Tensor{};
  expect_fail(c, {"argument 'expert_ids' is required"});
}

TEST_F(ValidationRoutingFromPairs, TokenIdsWrongRank) {
  Call c = call();
  c.tok = fresh(DType::I32, {2, 3});
  expect_fail(c, {"argument 'token_ids'", "expected 1 dimensions", "got 2 dimensions"});
}

TEST_F(ValidationRoutingFromPairs, Counts) {
  Call c = call();
  c.T = 0;
  expect_fail(c, {"argument 'num_tokens'", "expected a value in [1, 2147483646]", "got 0"});
  c = call();
  c.E = 0;
  expect_fail(c, {"argument 'num_experts'", "expected a value in [1, 2147483646]", "got 0"});
  c = call();
  c.E = int64_t{1} << 31;
  expect_fail(c, {"argument 'num_experts'", "got 2147483648"});
}

TEST_F(ValidationRoutingFromPairs, WrongDtypes) {
  Call c = call();
  c.tok = fresh(DType::F32, {N});
  expect_fail(c, {"argument 'token_ids'", "expected dtype i32", "got dtype f32"});
  c = call();
  c.exp = fresh(DType::BF16, {N});
  expect_fail(c, {"argument 'expert_ids'", "expected dtype i32", "got dtype bf16"});
}

TEST_F(ValidationRoutingFromPairs, ExpertIdsWrongShape) {
  Call c = call();
  c.exp = fresh(DType::I32, {N + 1});
  expect_fail(c, {"argument 'expert_ids'", "expected shape [6]", "got [7]"});
  c.exp = fresh(DType::I32, {2, 3});
  expect_fail(c, {"argument 'expert_ids'", "expected shape [6]", "got [2, 3]"});
}

TEST_F(ValidationRoutingFromPairs, NotContiguousMisalignedNull) {
  Call c = call();
  c.exp = strided1d(DType::I32, N);
  expect_fail(c, {"argument 'expert_ids'", "expected a contiguous (row-major) tensor",
                  "got strides [2]"});
  c = call();
  c.tok = misaligned(tokens.t, 2);
  expect_fail(c, {"argument 'token_ids'", "expected 4-byte aligned data", "(offset 2)"});
  c = call();
  c.tok = null_data(tokens.t);
  expect_fail(c, {"argument 'token_ids'", "expected a data pointer", "got nullptr"});
}

TEST_F(ValidationRoutingFromPairs, RoutingShapes) {
  Call c = call();
  c.r.token_offsets = fresh(DType::I32, {T});
  expect_fail(c, {"argument 'routing.token_offsets'", "expected shape [5]", "got [4]"});
  c = call();
  c.r.sorted_token = fresh(DType::I32, {N - 1});
  expect_fail(c, {"argument 'routing.sorted_token'", "expected shape [6]", "got [5]"});
  c = call();
  c.r.expert_counts = fresh(DType::I32, {T});
  expect_fail(c, {"argument 'routing.expert_counts'", "expected shape [3]", "got [4]"});
}

TEST_F(ValidationRoutingFromPairs, Workspace) {
  Call c = call();
  c.w = Workspace{ws.get(), need - 4};
  expect_fail(c, {"argument 'workspace'", "expected at least " + std::to_string(need) + " bytes",
                  "got " + std::to_string(need - 4) + " bytes"});
  c.w = Workspace{nullptr, need};
  expect_fail(c, {"argument 'workspace'", "expected a data pointer", "got nullptr"});
  c.w = workspace_at(need, 128);
  expect_fail(c, {"argument 'workspace'", "expected 256-byte aligned data", "got address"});
}

TEST_F(ValidationRoutingFromPairs, Devices) {
  Call c = call();
  c.exp = on(experts.t, kCuda0);
  expect_fail(c, {"argument 'expert_ids'", "expected a tensor on cpu:0 like the others",
                  "got one on cuda:0"});
}

TEST_F(ValidationRoutingFromPairs, CudaTensorsWithoutGpuBackend) {
  SKIP_IF_CUDA_DEVICE_PRESENT();
  Call c = call();
  c.tok = on(tokens.t, kCuda0);
  c.exp = on(experts.t, kCuda0);
  for (Tensor* t : {&c.r.expert_counts, &c.r.expert_offsets, &c.r.token_offsets,
                    &c.r.sorted_token, &c.r.sorted_pair, &c.r.pair_position})
    t->device = kCuda0;
  expect_fail(c, {"CUDA tensors cannot run"}, Status::Unsupported);
}

TEST_F(ValidationRoutingFromPairs, TokenIdOutOfRange) {
  tok()[5] = static_cast<int32_t>(T);
  expect_fail(call(), {"argument 'token_ids'", "expected values in [0, 4)",
                       "got 4 at flat index 5"});
  tok()[5] = 3;
  tok()[0] = -1;
  expect_fail(call(), {"argument 'token_ids'", "expected values in [0, 4)",
                       "got -1 at flat index 0"});
}

TEST_F(ValidationRoutingFromPairs, ExpertIdOutOfRange) {
  exp()[2] = static_cast<int32_t>(E);
  expect_fail(call(), {"argument 'expert_ids'", "expected values in [0, 3)",
                       "got 3 at flat index 2"});
  exp()[2] = 1;
  exp()[4] = -2;
  expect_fail(call(), {"argument 'expert_ids'", "expected values in [0, 3)",
                       "got -2 at flat index 4"});
}

TEST_F(ValidationRoutingFromPairs, UnsortedTokenIds) {
  // {0, 0, 2, 1, 2, 3}: pair 3 goes back from token 2 to token 1.
  tok()[2] = 2;
  tok()[3] = 1;
  expect_fail(call(), {"argument 'token_ids'",
                       "expected non-decreasing token ids (pairs sorted by token), at least 2",
                       "got 1 at flat index 3"});
}

// ------------------------------------------------------- regressions ---
// Each of these failed before the fix that came with it.

// A device type other than cpu or cuda given to a *_workspace_size query
// was reported as Unsupported ("no GPU backend") instead of a bad argument.
TEST(ValidationRoutingWorkspaceSize, InvalidDeviceTypeIsAnInvalidArgument) {
  const Device bad{static_cast<DeviceType>(7), 0};
  expect_error([&] { routing_workspace_size(bad, 4, 3, 8); }, Status::InvalidArgument,
               "routing_workspace_size", {"device", "got 7"});
  expect_error(
      [&] {
        moe_forward_workspace_size(bad, MoeProblem{4, 16, 8, 3, 8, Activation::SwiGLU},
                                   ForwardMode::Training);
      },
      Status::InvalidArgument, "moe_forward_workspace_size", {"device", "got 7"});
}

}  // namespace
}  // namespace sonicmoe
