// The GPU MoE layer as plain host code: which products and kernels run, in
// what order, on which buffers. Kernels live in src/gemm and src/kernels.
#pragma once

#include <sonicmoe/sonicmoe.hpp>

#include "gemm/engine.hpp"

namespace sonicmoe::moe {

size_t forward_workspace_bytes(const gemm::Engine& engine, const MoeProblem& p, ForwardMode mode);
void forward(gemm::Engine& engine, const MoeForwardArgs& args, const MoeProblem& p,
             cudaStream_t stream);

size_t backward_workspace_bytes(const gemm::Engine& engine, const MoeProblem& p);
void backward(gemm::Engine& engine, const MoeBackwardArgs& args, const MoeProblem& p,
              cudaStream_t stream);

}  // namespace sonicmoe::moe
