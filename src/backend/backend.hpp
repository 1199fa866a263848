// The seam between the public API and the code that computes.
//
// src/api validates every argument (shapes, dtypes, strides, alignment,
// devices, sizes) and then calls exactly one Backend, chosen by the device of
// the call's tensors. A backend may therefore assume well-formed
// descriptors; it still owns the checks that depend on tensor *contents*
// (index ranges), since only it can read them where they live.
//
// Backends: the CPU reference (src/cpu) and the GPU backend (src/cuda),
// which itself chooses between engines (portable sm_80, Hopper sm_90a).
#pragma once

#include <sonicmoe/sonicmoe.hpp>

namespace sonicmoe::detail {

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;

  virtual void router_forward(const RouterArgs& args, Stream stream) = 0;
  virtual void router_backward(const RouterBackwardArgs& args, Stream stream) = 0;

  virtual size_t routing_workspace_size(int64_t num_tokens, int64_t num_experts,
                                        int64_t num_pairs) = 0;
  virtual void routing_from_topk(const Tensor& expert_ids, int64_t num_experts,
                                 const Routing& out, Workspace ws, Stream stream) = 0;
  virtual void routing_from_pairs(const Tensor& token_ids, const Tensor& expert_ids,
                                  int64_t num_tokens, int64_t num_experts, const Routing& out,
                                  Workspace ws, Stream stream) = 0;

  virtual size_t round_routing_workspace_size(int64_t num_tokens, int64_t num_experts) = 0;
  // The capacity C = args.token_ids.shape[0] is validated by src/api.
  virtual void round_routing(const RoundRoutingArgs& args, Stream stream) = 0;

  virtual size_t forward_workspace_size(const MoeProblem& p, ForwardMode mode) = 0;
  virtual void moe_forward(const MoeForwardArgs& args, const MoeProblem& p, Stream stream) = 0;
  virtual size_t backward_workspace_size(const MoeProblem& p) = 0;
  virtual void moe_backward(const MoeBackwardArgs& args, const MoeProblem& p, Stream stream) = 0;

  // direction: +1 concatenated -> interleaved, -1 the reverse.
  virtual void permute_gate_up(const Tensor& src, const Tensor& dst, int direction,
                               Stream stream) = 0;
};

// The backend serving `device` for the call named `call`; throws
// Error(InvalidArgument) for an unknown device type or index and
// Error(Unsupported) when the machine has no device of that type.
Backend& backend_for(Device device, const char* call);

Backend& cpu_backend();
// nullptr when the build has no GPU backend.
Backend* cuda_backend();
int cuda_device_count_impl();

}  // namespace sonicmoe::detail
