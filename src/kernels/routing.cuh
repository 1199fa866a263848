// GPU routing kernels: the fused top-K + softmax router and its backward, and
// the routing metadata (counts, offsets, stable expert-sorted order, inverse
// positions) from top-K ids or from general (token, expert) pairs.
//
// Arguments arrive validated by src/api (shapes, dtypes, devices); contents
// are not: a pair whose expert or token id is out of range is dropped (not
// counted, pair_position = -1), so no kernel ever reads or writes out of
// bounds. Nothing here synchronises with the host.
#pragma once

#include <cuda_runtime.h>

#include <sonicmoe/sonicmoe.hpp>

namespace sonicmoe::cuda {

// The bitonic router (router_bitonic.cuh) where it applies (f32 logits,
// E <= 512, K <= 16), else router_forward_kernel; both give the same bits.
// SONICMOE_ROUTER=select forces the latter (read at each call).
void router_forward(const RouterArgs& args, cudaStream_t stream);
void router_backward(const RouterBackwardArgs& args, cudaStream_t stream);

size_t routing_workspace_bytes(int64_t num_tokens, int64_t num_experts, int64_t num_pairs);
void routing_from_topk(const Tensor& expert_ids, int64_t num_experts, const Routing& out,
                       Workspace ws, cudaStream_t stream);
void routing_from_pairs(const Tensor& token_ids, const Tensor& expert_ids, int64_t num_tokens,
                        int64_t num_experts, const Routing& out, Workspace ws,
                        cudaStream_t stream);

}  // namespace sonicmoe::cuda
