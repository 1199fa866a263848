// The C ABI: convert the plain structs to the C++ ones, call, and turn
// exceptions into status codes with a thread-local message.
#include <sonicmoe/sonicmoe.h>

#include <cstddef>
#include <exception>
#include <new>
#include <string>

#include <sonicmoe/sonicmoe.hpp>

#include "api/validate.hpp"

namespace sonicmoe {
namespace {

thread_local std::string g_last_error;

static_assert(sizeof(smoe_tensor_t) == sizeof(Tensor));
static_assert(offsetof(smoe_tensor_t, shape) == offsetof(Tensor, shape));
static_assert(offsetof(smoe_tensor_t, strides) == offsetof(Tensor, strides));
static_assert(SMOE_NO_EXPERT == kNoExpert);

Tensor to_cpp(const smoe_tensor_t& t) {
  Tensor r;
  r.data = t.data;
  r.dtype = static_cast<DType>(t.dtype);
  r.device = Device{static_cast<DeviceType>(t.device_type), t.device_index};
  r.ndim = t.ndim;
  for (int i = 0; i < kMaxDims; ++i) {
    r.shape[i] = t.shape[i];
    r.strides[i] = t.strides[i];
  }
  return r;
}

Routing to_cpp(const smoe_routing_t& r) {
  return Routing{to_cpp(r.expert_counts), to_cpp(r.expert_offsets), to_cpp(r.token_offsets),
                 to_cpp(r.sorted_token),  to_cpp(r.sorted_pair),    to_cpp(r.pair_position)};
}

Workspace to_cpp(smoe_workspace_t w) { return Workspace{w.data, w.bytes}; }

Device device_of(int32_t type, int32_t index) {
  return Device{static_cast<DeviceType>(type), index};
}

MoeProblem to_cpp(const smoe_problem_t& p) {
  return MoeProblem{p.num_tokens,  p.hidden,    p.intermediate,
                    p.num_experts, p.num_pairs, static_cast<Activation>(p.activation)};
}

template <class F>
smoe_status_t guarded(F&& f) {
  try {
    f();
    return SMOE_STATUS_OK;
  } catch (const Error& e) {
    g_last_error = e.what();
    return static_cast<smoe_status_t>(e.status());
  } catch (const std::bad_alloc&) {
    g_last_error = "sonicmoe: out of host memory";
    return SMOE_STATUS_INTERNAL;
  } catch (const std::exception& e) {
    g_last_error = std::string("sonicmoe: internal error: ") + e.what();
    return SMOE_STATUS_INTERNAL;
  } catch (...) {
    g_last_error = "sonicmoe: unknown internal error";
    return SMOE_STATUS_INTERNAL;
  }
}

// Null struct pointers are bad arguments, not crashes. Each entry point
// names itself in kCall.
#define SMOE_REQUIRE_PTR(p)                                                                   \
  do {                                                                                        \
    if ((p) == nullptr)                                                                       \
      throw Error(Status::InvalidArgument,                                                    \
                  std::string("sonicmoe::") + kCall + ": argument '" + #p +                      \
                      "': expected a pointer, got NULL");                                    \
  } while (0)

}  // namespace
}  // namespace sonicmoe

using namespace sonicmoe;

extern "C" {

smoe_status_t smoe_router_forward(const smoe_tensor_t* logits, int64_t k, int32_t order,
                                  int32_t renormalize, const smoe_tensor_t* scores,
                                  const smoe_tensor_t* expert_ids, void* stream) {
  constexpr const char* kCall = "router_forward";
  return guarded([&] {
    SMOE_REQUIRE_PTR(logits);
    SMOE_REQUIRE_PTR(scores);
    SMOE_REQUIRE_PTR(expert_ids);
    router_forward(RouterArgs{to_cpp(*logits), k, static_cast<RouterOrder>(order),
                              renormalize != 0, to_cpp(*scores), to_cpp(*expert_ids)},
                   stream);
  });
}

smoe_status_t smoe_router_backward(const smoe_tensor_t* logits, const smoe_tensor_t* expert_ids,
                                   const smoe_tensor_t* dscores, int32_t order,
                                   int32_t renormalize, const smoe_tensor_t* dlogits,
                                   void* stream) {
  constexpr const char* kCall = "router_backward";
  return guarded([&] {
    SMOE_REQUIRE_PTR(logits);
    SMOE_REQUIRE_PTR(expert_ids);
    SMOE_REQUIRE_PTR(dscores);
    SMOE_REQUIRE_PTR(dlogits);
    router_backward(RouterBackwardArgs{to_cpp(*logits), to_cpp(*expert_ids), to_cpp(*dscores),
                                       static_cast<RouterOrder>(order), renormalize != 0,
                                       to_cpp(*dlogits)},
                    stream);
  });
}

smoe_status_t smoe_routing_workspace_size(int32_t device_type, int32_t device_index,
                                          int64_t num_tokens, int64_t num_experts,
                                          int64_t num_pairs, size_t* bytes) {
  constexpr const char* kCall = "routing_workspace_size";
  return guarded([&] {
    SMOE_REQUIRE_PTR(bytes);
    *bytes = routing_workspace_size(device_of(device_type, device_index), num_tokens,
                                    num_experts, num_pairs);
  });
}

smoe_status_t smoe_routing_from_topk(const smoe_tensor_t* expert_ids, int64_t num_experts,
                                     const smoe_routing_t* out, smoe_workspace_t workspace,
                                     void* stream) {
  constexpr const char* kCall = "routing_from_topk";
  return guarded([&] {
    SMOE_REQUIRE_PTR(expert_ids);
    SMOE_REQUIRE_PTR(out);
    routing_from_topk(to_cpp(*expert_ids), num_experts, to_cpp(*out), to_cpp(workspace), stream);
  });
}

smoe_status_t smoe_routing_from_pairs(const smoe_tensor_t* token_ids,
                                      const smoe_tensor_t* expert_ids, int64_t num_tokens,
                                      int64_t num_experts, const smoe_routing_t* out,
                                      smoe_workspace_t workspace, void* stream) {
  constexpr const char* kCall = "routing_from_pairs";
  return guarded([&] {
    SMOE_REQUIRE_PTR(token_ids);
    SMOE_REQUIRE_PTR(expert_ids);
    SMOE_REQUIRE_PTR(out);
    routing_from_pairs(to_cpp(*token_ids), to_cpp(*expert_ids), num_tokens, num_experts,
                       to_cpp(*out), to_cpp(workspace), stream);
  });
}

smoe_status_t smoe_round_routing_capacity(int64_t num_tokens, int64_t num_experts, int64_t k,
                                          int64_t tile, int32_t mode, int64_t* capacity) {
  constexpr const char* kCall = "round_routing_capacity";
  return guarded([&] {
    SMOE_REQUIRE_PTR(capacity);
    *capacity = round_routing_capacity(num_tokens, num_experts, k, tile,
                                       static_cast<TokenRounding>(mode));
  });
}

smoe_status_t smoe_round_routing_workspace_size(int32_t device_type, int32_t device_index,
                                                int64_t num_tokens, int64_t num_experts,
                                                size_t* bytes) {
  constexpr const char* kCall = "round_routing_workspace_size";
  return guarded([&] {
    SMOE_REQUIRE_PTR(bytes);
    *bytes = round_routing_workspace_size(device_of(device_type, device_index), num_tokens,
                                          num_experts);
  });
}

smoe_status_t smoe_round_routing(const smoe_round_routing_args_t* args, void* stream) {
  constexpr const char* kCall = "round_routing";
  return guarded([&] {
    SMOE_REQUIRE_PTR(args);
    RoundRoutingArgs a;
    a.logits = to_cpp(args->logits);
    a.topk_ids = to_cpp(args->topk_ids);
    a.topk_scores = to_cpp(args->topk_scores);
    a.tile = args->tile;
    a.mode = static_cast<TokenRounding>(args->mode);
    a.token_ids = to_cpp(args->token_ids);
    a.expert_ids = to_cpp(args->expert_ids);
    a.scores = to_cpp(args->scores);
    a.num_pairs = to_cpp(args->num_pairs);
    a.workspace = to_cpp(args->workspace);
    round_routing(a, stream);
  });
}

smoe_status_t smoe_moe_forward_workspace_size(int32_t device_type, int32_t device_index,
                                              const smoe_problem_t* problem, int32_t mode,
                                              size_t* bytes) {
  constexpr const char* kCall = "moe_forward_workspace_size";
  return guarded([&] {
    SMOE_REQUIRE_PTR(problem);
    SMOE_REQUIRE_PTR(bytes);
    *bytes = moe_forward_workspace_size(device_of(device_type, device_index), to_cpp(*problem),
                                        static_cast<ForwardMode>(mode));
  });
}

smoe_status_t smoe_moe_forward(const smoe_forward_args_t* args, void* stream) {
  constexpr const char* kCall = "moe_forward";
  return guarded([&] {
    SMOE_REQUIRE_PTR(args);
    MoeForwardArgs a;
    a.x = to_cpp(args->x);
    a.w1 = to_cpp(args->w1);
    a.b1 = to_cpp(args->b1);
    a.w2 = to_cpp(args->w2);
    a.b2 = to_cpp(args->b2);
    a.scores = to_cpp(args->scores);
    a.routing = to_cpp(args->routing);
    a.activation = static_cast<Activation>(args->activation);
    a.mode = static_cast<ForwardMode>(args->mode);
    a.out = to_cpp(args->out);
    a.h = to_cpp(args->h);
    a.workspace = to_cpp(args->workspace);
    moe_forward(a, stream);
  });
}

smoe_status_t smoe_moe_backward_workspace_size(int32_t device_type, int32_t device_index,
                                               const smoe_problem_t* problem, size_t* bytes) {
  constexpr const char* kCall = "moe_backward_workspace_size";
  return guarded([&] {
    SMOE_REQUIRE_PTR(problem);
    SMOE_REQUIRE_PTR(bytes);
    *bytes = moe_backward_workspace_size(device_of(device_type, device_index), to_cpp(*problem));
  });
}

smoe_status_t smoe_moe_backward(const smoe_backward_args_t* args, void* stream) {
  constexpr const char* kCall = "moe_backward";
  return guarded([&] {
    SMOE_REQUIRE_PTR(args);
    MoeBackwardArgs a;
    a.x = to_cpp(args->x);
    a.w1 = to_cpp(args->w1);
    a.b1 = to_cpp(args->b1);
    a.w2 = to_cpp(args->w2);
    a.b2 = to_cpp(args->b2);
    a.scores = to_cpp(args->scores);
    a.routing = to_cpp(args->routing);
    a.activation = static_cast<Activation>(args->activation);
    a.h = to_cpp(args->h);
    a.dout = to_cpp(args->dout);
    a.dx = to_cpp(args->dx);
    a.dw1 = to_cpp(args->dw1);
    a.db1 = to_cpp(args->db1);
    a.dw2 = to_cpp(args->dw2);
    a.db2 = to_cpp(args->db2);
    a.dscores = to_cpp(args->dscores);
    a.workspace = to_cpp(args->workspace);
    moe_backward(a, stream);
  });
}

smoe_status_t smoe_interleave_gate_up(const smoe_tensor_t* src, const smoe_tensor_t* dst,
                                      void* stream) {
  constexpr const char* kCall = "interleave_gate_up";
  return guarded([&] {
    SMOE_REQUIRE_PTR(src);
    SMOE_REQUIRE_PTR(dst);
    interleave_gate_up(to_cpp(*src), to_cpp(*dst), stream);
  });
}

smoe_status_t smoe_deinterleave_gate_up(const smoe_tensor_t* src, const smoe_tensor_t* dst,
                                        void* stream) {
  constexpr const char* kCall = "deinterleave_gate_up";
  return guarded([&] {
    SMOE_REQUIRE_PTR(src);
    SMOE_REQUIRE_PTR(dst);
    deinterleave_gate_up(to_cpp(*src), to_cpp(*dst), stream);
  });
}

smoe_status_t smoe_h_stored_column(int64_t column, int64_t width, int32_t activation,
                                   int64_t* stored) {
  constexpr const char* kCall = "h_stored_column";
  return guarded([&] {
    SMOE_REQUIRE_PTR(stored);
    *stored = detail::checked_h_stored_column(column, width, static_cast<Activation>(activation));
  });
}

int32_t smoe_cuda_device_count(void) { return cuda_device_count(); }
const char* smoe_version(void) { return version(); }
int32_t smoe_abi_version(void) { return SMOE_ABI_VERSION; }
const char* smoe_last_error(void) { return g_last_error.c_str(); }

}  // extern "C"
