// The fast fused top-K + softmax router: one warp per row, a bitonic network
// in registers over packed (value, index) keys (bitonic_topk.cuh). It gives
// exactly the ids and the bits of the scores of the first version
// (routing.cu, router_forward_kernel), which stays the fallback and the
// reference: rows with near-ties are redone by it inside the kernel.
#pragma once

#include <cuda_runtime.h>

#include <sonicmoe/sonicmoe.hpp>

namespace sonicmoe::cuda {

// f32 logits, E <= 512, 1 <= K <= 16; both router orders.
bool bitonic_router_applies(const RouterArgs& args);
void bitonic_router_forward(const RouterArgs& args, cudaStream_t stream);

}  // namespace sonicmoe::cuda
