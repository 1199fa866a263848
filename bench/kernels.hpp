// sonicmoe-bench --kernels: every kernel of the GPU layer timed alone on one
// config's shape, the grouped GEMMs next to a dense cuBLAS product of the
// same (M, N, K) measured in the same run. Where the layer bench says how
// fast the whole layer is, this says which kernel to work on.
#pragma once

#include <vector>

#include "problem.hpp"
#include "report.hpp"
#include "runner.hpp"

namespace sonicmoe::bench {

// On GPU 0, with the engine gemm::engine_for_device picks for it. Throws
// sonicmoe::Error from the library (Unsupported: no GPU backend or engine)
// and std::runtime_error for CUDA, cuBLAS and memory.
std::vector<KernelResult> run_kernels(const Problem& p, const RunSettings& s);

}  // namespace sonicmoe::bench
