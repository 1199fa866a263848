// The two runners: the same phases (setup, warm-up, forward timing, backward
// timing, check; the GPU adds the dense cuBLAS reference) on the CPU
// reference backend with host buffers, or on a GPU with device buffers.
//
// Forward and backward are timed separately: the backward runs, timed on
// its own, reuse what the last forward kept (H, scores, routing), so the
// backward time is measured directly, not as (forward+backward) - forward.
#pragma once

#include <string>
#include <vector>

#include "problem.hpp"
#include "report.hpp"

namespace sonicmoe::bench {

struct RunSettings {
  int warmup = 5;
  int iters = 20;
  double tol = 2e-2;
  double heat_ms = 0;  // GPU: sustained load before each timed phase (gpu_util.cuh's heat)
  std::vector<std::string> only;  // --kernels: the kernels to time; empty: all
};

// Throws sonicmoe::Error from the library and std::runtime_error for
// everything else (CUDA, cuBLAS, memory).
RunResult run_cpu(const Problem& p, const RunSettings& s);
RunResult run_gpu(const Problem& p, const RunSettings& s);

// "cpu (N threads)", N as the CPU backend counts them.
std::string cpu_device_name();

}  // namespace sonicmoe::bench
