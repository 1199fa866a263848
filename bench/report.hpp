// What one run measured, and how it is reported: a JSON object per line on
// stdout (BENCHMARK.md's keys, nothing else), progress lines and a summary
// table on stderr.
#pragma once

#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "check.hpp"
#include "problem.hpp"

namespace sonicmoe::bench {

struct RunResult {
  Problem problem;
  std::string device;                // GPU name, or "cpu (N threads)"
  double fwd_ms = 0, bwd_ms = 0;     // medians
  std::optional<double> dense_ms;    // cuBLAS reference of the forward's FLOPs (GPU only)
  // Token rounding: the pairs the layer computed (read back after timing)
  // and round_routing's own median time, part of fwd_ms.
  int64_t computed_pairs = -1;       // -1: T*K
  std::optional<double> round_ms;
  bool checked = false;
  std::vector<TensorError> errors;   // empty when not checked

  int64_t pairs() const { return computed_pairs >= 0 ? computed_pairs : problem.pairs(); }
  // Over the FLOPs actually computed: T*K pairs, or the rounded count.
  double fwd_tflops() const { return problem.fwd_flops(pairs()) / (fwd_ms * 1e-3) / 1e12; }
  double bwd_tflops() const { return problem.bwd_flops(pairs()) / (bwd_ms * 1e-3) / 1e12; }
  std::optional<double> dense_tflops() const;
  std::optional<double> max_rel_err() const;
  // Names of the tensors whose error exceeds tol.
  std::vector<std::string> failures(double tol) const;
};

// One line, no trailing newline. BENCHMARK.md's keys; a rounded routing adds
// "routing", "tile", "pairs" (computed), "topk_pairs", "round_ms" and
// "router_backward": "skipped".
std::string to_json(const RunResult& r);

void print_table(std::ostream& os, const std::vector<RunResult>& results);

// One kernel of --kernels, timed alone: a grouped GEMM (tflops, and the
// dense cuBLAS product of the same M, N, K in the same run) or a
// memory-bound kernel (gbps from the bytes it must move at least).
struct KernelResult {
  std::string config, kernel, engine, device;
  double ms = 0;  // median
  std::optional<double> tflops, gbps, dense_tflops, ratio;  // ratio = tflops / dense_tflops
  std::string dense_shape;             // "MxNxK" of the dense reference, for the table
  std::optional<double> paper_tflops;  // the SonicMoE paper's H100 figure, where it has one
};

// {"config", "kernel", "engine", "device", "ms", "tflops", "gbps",
//  "dense_tflops", "ratio"}, null where not applicable; one line.
std::string to_json(const KernelResult& r);

void print_kernel_table(std::ostream& os, const std::vector<KernelResult>& results);

// "[  1.2s] tiny/cpu: warm-up (5 runs)" on stderr, flushed.
void progress(const std::string& tag, const std::string& message);

double median(std::vector<double> v);

}  // namespace sonicmoe::bench
