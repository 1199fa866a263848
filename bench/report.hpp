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
  bool checked = false;
  std::vector<TensorError> errors;   // empty when not checked

  double fwd_tflops() const { return problem.fwd_flops() / (fwd_ms * 1e-3) / 1e12; }
  double bwd_tflops() const { return problem.bwd_flops() / (bwd_ms * 1e-3) / 1e12; }
  std::optional<double> dense_tflops() const;
  std::optional<double> max_rel_err() const;
  // Names of the tensors whose error exceeds tol.
  std::vector<std::string> failures(double tol) const;
};

// One line, no trailing newline.
std::string to_json(const RunResult& r);

void print_table(std::ostream& os, const std::vector<RunResult>& results);

// "[  1.2s] tiny/cpu: warm-up (5 runs)" on stderr, flushed.
void progress(const std::string& tag, const std::string& message);

double median(std::vector<double> v);

}  // namespace sonicmoe::bench
