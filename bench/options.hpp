// The command line of sonicmoe-bench.
#pragma once

#include <cstdint>
#include <optional>
#include <ostream>
#include <stdexcept>
#include <string>
#include <vector>

#include <sonicmoe/types.hpp>

#include "problem.hpp"

namespace sonicmoe::bench {

enum class DeviceChoice { Auto, Cpu, Cuda };

struct Options {
  std::vector<std::string> configs;  // canonical names in run order; empty: the default
  bool explicit_shape = false;       // --T --H --I --E --K given (all five)
  int64_t T = 0, H = 0, I = 0, E = 0, K = 0;
  Activation act = Activation::SwiGLU;
  bool bias = false;
  RouterOrder order = RouterOrder::TopKThenSoftmax;
  RoutingChoice routing;  // --routing, --rounding-tile
  DeviceChoice device = DeviceChoice::Auto;
  int warmup = 5;
  int iters = 20;
  double heat_ms = 2000;  // GPU: sustained load before each timed phase
  std::optional<CheckMode> check;  // unset: full for small shapes, sampled otherwise
  double tol = 2e-2;
  uint64_t seed = 1;
  double expert_bias_std = 0.5;
  bool force = false;
  bool kernels = false;  // --kernels: each GPU kernel timed alone (kernels.hpp)
  std::vector<std::string> only;  // --only: the kernels --kernels times; empty: all
  bool list = false;
  bool help = false;
};

// A command line that cannot be run as given: main prints it and exits 2.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

Options parse_options(int argc, char** argv);
void print_usage(std::ostream& os);
void print_config_list(std::ostream& os);

}  // namespace sonicmoe::bench
