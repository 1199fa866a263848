// sonicmoe-bench --kernels: every kernel of the GPU layer timed alone on one
// config's shape, the grouped GEMMs next to a dense cuBLAS product of the
// same (M, N, K) measured in the same run. Where the layer bench says how
// fast the whole layer is, this says which kernel to work on.
#pragma once

#include <string_view>
#include <vector>

#include "problem.hpp"
#include "report.hpp"
#include "runner.hpp"

namespace sonicmoe::bench {

// What --kernels times, in its order (--only picks among them).
inline constexpr std::string_view kKernelNames[] = {
    "router_forward", "routing_from_topk", "up_proj",          "down_proj",
    "aggregate_rows_fwd", "scores_by_position", "dh",           "reduce_dscores",
    "dw2",            "dx_tilde",          "dw1",              "aggregate_rows_bwd",
    "forward_sequence", "backward_sequence", "up_proj_inference"};

// On GPU 0, with the engine gemm::engine_for_device picks for it. Throws
// sonicmoe::Error from the library (Unsupported: no GPU backend or engine)
// and std::runtime_error for CUDA, cuBLAS and memory.
std::vector<KernelResult> run_kernels(const Problem& p, const RunSettings& s);

}  // namespace sonicmoe::bench
