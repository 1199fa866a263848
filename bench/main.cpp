// sonicmoe-bench: picks the device and the shapes, runs each, prints one
// JSON line per run (per kernel with --kernels) on stdout and a summary
// table on stderr.
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include <sonicmoe/sonicmoe.hpp>

#include "configs.hpp"
#include "kernels.hpp"
#include "options.hpp"
#include "runner.hpp"

namespace sb = sonicmoe::bench;

namespace {

// Above this T*K*H*I the CPU reference backend needs minutes per run (tiny
// is 2^22, 7b-n256 about 2^36); --force runs it anyway.
constexpr double kCpuMaxWork = double(1 << 28);
// The default check: the whole-layer fp64 oracle is single-threaded and
// costs about 12*T*K*H*I multiply-adds, a few seconds at 2^27.
constexpr double kFullCheckMaxWork = double(1 << 27);

constexpr int kExitCheckFailed = 1;
constexpr int kExitUsage = 2;
constexpr int kExitError = 3;

int usage_error(const std::string& message) {
  std::fprintf(stderr, "sonicmoe-bench: %s\n(run sonicmoe-bench --help for usage)\n", message.c_str());
  return kExitUsage;
}

sb::Problem problem_of(const sb::ShapeConfig& c, const sb::Options& o) {
  sb::Problem p;
  p.name = std::string(c.name);
  p.T = c.T, p.H = c.H, p.I = c.I, p.E = c.E, p.K = c.K;
  p.act = o.act;
  p.bias = o.bias;
  p.order = o.order;
  p.routing = o.routing;
  p.seed = o.seed;
  p.expert_bias_std = o.expert_bias_std;
  // The paper's figures are for SwiGLU without bias: quote them only then.
  if (o.act == sonicmoe::Activation::SwiGLU && !o.bias) {
    p.paper_fwd = c.paper_fwd;
    p.paper_bwd = c.paper_bwd;
  }
  return p;
}

// The library failed on p: report it; true when every other shape would
// fail the same way (Unsupported) and the run should stop.
bool report_library_error(const sb::Problem& p, const sonicmoe::Error& e, bool gpu) {
  std::fprintf(stderr, "sonicmoe-bench: %s: the library failed: %s\n", p.name.c_str(), e.what());
  if (e.status() != sonicmoe::Status::Unsupported) return false;
  std::fprintf(stderr,
               "sonicmoe-bench: this build of sonicmoe cannot run it on the %s (status "
               "Unsupported)%s\n",
               gpu ? "GPU" : "CPU", gpu ? "; --device cpu runs the CPU reference backend" : "");
  return true;
}

// --kernels: one JSON line per kernel as each config finishes, one table of
// every config's kernels at the end.
int run_kernel_mode(const std::vector<sb::Problem>& problems, const sb::RunSettings& settings) {
  std::vector<sb::KernelResult> all;
  bool error = false;
  for (const auto& p : problems) {
    try {
      const std::vector<sb::KernelResult> results = sb::run_kernels(p, settings);
      for (const auto& k : results) std::cout << sb::to_json(k) << '\n';
      std::cout.flush();
      all.insert(all.end(), results.begin(), results.end());
    } catch (const sonicmoe::Error& e) {
      error = true;
      if (report_library_error(p, e, true)) break;
    } catch (const std::exception& e) {
      error = true;
      std::fprintf(stderr, "sonicmoe-bench: %s: %s\n", p.name.c_str(), e.what());
    }
  }
  if (!all.empty()) {
    std::cerr << '\n';
    sb::print_kernel_table(std::cerr, all);
  }
  return error ? kExitError : 0;
}

}  // namespace

int main(int argc, char** argv) {
  sb::Options o;
  try {
    o = sb::parse_options(argc, argv);
  } catch (const sb::UsageError& e) {
    return usage_error(e.what());
  }
  if (o.help) {
    sb::print_usage(std::cout);
    return 0;
  }
  if (o.list) {
    sb::print_config_list(std::cout);
    return 0;
  }

  const int gpus = sonicmoe::cuda_device_count();
  if (o.device == sb::DeviceChoice::Cuda && gpus == 0)
    return usage_error("--device cuda: no CUDA device is visible (sonicmoe::cuda_device_count() == 0)");
  const bool gpu = o.device == sb::DeviceChoice::Cuda || (o.device == sb::DeviceChoice::Auto && gpus > 0);
  if (o.kernels && !gpu)
    return usage_error(o.device == sb::DeviceChoice::Cpu
                           ? "--kernels times GPU kernels: it cannot run with --device cpu"
                           : "--kernels times GPU kernels and needs a CUDA device; none is visible "
                             "(sonicmoe::cuda_device_count() == 0)");

  std::vector<sb::Problem> problems;
  if (o.explicit_shape) {
    problems.push_back(problem_of(sb::ShapeConfig{"custom", o.T, o.H, o.I, o.E, o.K, 0, 0}, o));
  } else if (!o.configs.empty()) {
    for (const auto& name : o.configs) problems.push_back(problem_of(*sb::find_config(name), o));
  } else if (gpu) {
    std::fprintf(stderr, "sonicmoe-bench: no config given: running '%s' on the GPU\n",
                 std::string(sb::kDefaultGpuConfig).c_str());
    problems.push_back(problem_of(*sb::find_config(sb::kDefaultGpuConfig), o));
  } else {
    if (o.device == sb::DeviceChoice::Auto)
      std::fprintf(stderr, "sonicmoe-bench: no GPU found: running the CPU reference backend on config 'tiny'\n");
    else
      std::fprintf(stderr, "sonicmoe-bench: no config given: running the CPU reference backend on config 'tiny'\n");
    problems.push_back(problem_of(sb::kTiny, o));
  }

  const sb::RunSettings settings{o.warmup, o.iters, o.tol, o.heat_ms, o.only};
  if (o.kernels) return run_kernel_mode(problems, settings);

  for (auto& p : problems) {
    p.check = o.check.value_or(p.work() <= kFullCheckMaxWork ? sb::CheckMode::Full : sb::CheckMode::Sampled);
    if (!gpu && p.work() > kCpuMaxWork && !o.force) {
      char buf[512];
      std::snprintf(buf, sizeof buf,
                    "config '%s' is too large for the CPU reference backend (T*K*H*I = %.2g, "
                    "%.0f GFLOP per forward+backward, minutes to hours per run); use a GPU, a "
                    "smaller shape (e.g. --config tiny) or --force",
                    p.name.c_str(), p.work(), (p.fwd_flops() + p.bwd_flops()) / 1e9);
      return usage_error(buf);
    }
    if (p.check == sb::CheckMode::Full && p.work() > 8 * kFullCheckMaxWork)
      std::fprintf(stderr,
                   "sonicmoe-bench: warning: '%s': the full fp64 check is single-threaded and will "
                   "take long at this size; --check sampled is the quick one\n",
                   p.name.c_str());
  }

  std::vector<sb::RunResult> results;
  bool check_failed = false, error = false;
  for (const auto& p : problems) {
    try {
      sb::RunResult r = gpu ? sb::run_gpu(p, settings) : sb::run_cpu(p, settings);
      std::cout << sb::to_json(r) << std::endl;
      if (const auto failed = r.failures(o.tol); !failed.empty()) {
        std::string names;
        for (const auto& n : failed) names += (names.empty() ? "" : ", ") + n;
        std::fprintf(stderr, "sonicmoe-bench: %s: CHECK FAILED: %s above the tolerance %.1e\n",
                     p.name.c_str(), names.c_str(), o.tol);
        check_failed = true;
      }
      results.push_back(std::move(r));
    } catch (const sonicmoe::Error& e) {
      error = true;
      if (report_library_error(p, e, gpu)) break;
    } catch (const std::exception& e) {
      error = true;
      std::fprintf(stderr, "sonicmoe-bench: %s: %s\n", p.name.c_str(), e.what());
    }
  }
  if (!results.empty()) {
    std::cerr << '\n';
    sb::print_table(std::cerr, results);
  }
  if (error) return kExitError;
  return check_failed ? kExitCheckFailed : 0;
}
