// The GPU backend: routing kernels, the layer orchestration on a grouped-GEMM
// engine, and the utilities. Calls run on the caller's stream with the
// tensors' device made current for the duration of the call only.
#include <string>

#include <cuda_runtime.h>

#include "backend/backend.hpp"
#include "gemm/engine.hpp"
#include "kernels/routing.cuh"
#include "kernels/token_rounding.cuh"
#include "kernels/utility.cuh"
#include "moe/gpu_layer.hpp"

namespace sonicmoe::detail {
namespace {

cudaStream_t stream_of(Stream s) { return static_cast<cudaStream_t>(s); }

// Makes `device` current and restores the caller's device on scope exit.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    cudaGetDevice(&previous_);
    if (previous_ != device) set(device);
  }
  ~DeviceGuard() {
    int now = 0;
    cudaGetDevice(&now);
    if (now != previous_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  static void set(int device) {
    const cudaError_t e = cudaSetDevice(device);
    if (e != cudaSuccess)
      throw Error(Status::CudaError, "sonicmoe: cudaSetDevice(" + std::to_string(device) +
                                         ") failed: " + cudaGetErrorString(e));
  }
  int previous_ = 0;
};

// Limits of the GPU kernels beyond the API's own.
void check_layer_limits(const char* call, const MoeProblem& p) {
  if (p.num_experts > 65535)
    throw Error(Status::Unsupported, std::string("sonicmoe::") + call +
                                         ": the GPU backend supports at most 65535 experts, got " +
                                         std::to_string(p.num_experts));
}

class CudaBackend final : public Backend {
 public:
  const char* name() const override { return "cuda"; }

  void router_forward(const RouterArgs& a, Stream s) override {
    DeviceGuard g(a.logits.device.index);
    cuda::router_forward(a, stream_of(s));
  }
  void router_backward(const RouterBackwardArgs& a, Stream s) override {
    DeviceGuard g(a.logits.device.index);
    cuda::router_backward(a, stream_of(s));
  }

  size_t routing_workspace_size(int64_t T, int64_t E, int64_t N) override {
    return cuda::routing_workspace_bytes(T, E, N);
  }
  void routing_from_topk(const Tensor& ids, int64_t E, const Routing& out, Workspace ws,
                         Stream s) override {
    DeviceGuard g(ids.device.index);
    cuda::routing_from_topk(ids, E, out, ws, stream_of(s));
  }
  void routing_from_pairs(const Tensor& tok, const Tensor& exp, int64_t T, int64_t E,
                          const Routing& out, Workspace ws, Stream s) override {
    DeviceGuard g(tok.device.index);
    cuda::routing_from_pairs(tok, exp, T, E, out, ws, stream_of(s));
  }

  size_t round_routing_workspace_size(int64_t T, int64_t E) override {
    return cuda::round_routing_workspace_bytes(T, E);
  }
  void round_routing(const RoundRoutingArgs& a, Stream s) override {
    DeviceGuard g(a.logits.device.index);
    cuda::round_routing(a, stream_of(s));
  }

  size_t forward_workspace_size(const MoeProblem& p, ForwardMode mode) override {
    return moe::forward_workspace_bytes(engine(), p, mode);
  }
  void moe_forward(const MoeForwardArgs& a, const MoeProblem& p, Stream s) override {
    check_layer_limits("moe_forward", p);
    DeviceGuard g(a.x.device.index);
    moe::forward(engine(), a, p, stream_of(s));
  }
  size_t backward_workspace_size(const MoeProblem& p) override {
    return moe::backward_workspace_bytes(engine(), p);
  }
  void moe_backward(const MoeBackwardArgs& a, const MoeProblem& p, Stream s) override {
    check_layer_limits("moe_backward", p);
    DeviceGuard g(a.x.device.index);
    moe::backward(engine(), a, p, stream_of(s));
  }

  void permute_gate_up(const Tensor& src, const Tensor& dst, int direction, Stream s) override {
    DeviceGuard g(src.device.index);
    kernels::permute_gate_up(src.data, dst.data, src.shape[0], src.shape[1],
                             src.ndim == 3 ? src.shape[2] : 1, src.dtype == DType::BF16 ? 2 : 4,
                             direction, stream_of(s));
  }

 private:
  gemm::Engine& engine() {
    int device = 0;
    cudaGetDevice(&device);
    return gemm::engine_for_device(device);
  }
};

}  // namespace

Backend* cuda_backend() {
  static CudaBackend backend;
  return &backend;
}

}  // namespace sonicmoe::detail
