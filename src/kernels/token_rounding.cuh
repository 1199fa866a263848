// GPU token rounding (sonicmoe.hpp, round_routing): the same result as the
// CPU reference (src/cpu/token_rounding.cpp), with no host synchronisation.
//
// Arguments arrive validated by src/api; contents are not: a top-K id outside
// [0, E) is ignored (it picks nothing), so no kernel reads or writes out of
// bounds.
#pragma once

#include <cuda_runtime.h>

#include <sonicmoe/sonicmoe.hpp>

namespace sonicmoe::cuda {

size_t round_routing_workspace_bytes(int64_t num_tokens, int64_t num_experts);
void round_routing(const RoundRoutingArgs& args, cudaStream_t stream);

}  // namespace sonicmoe::cuda
