#include "options.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <iomanip>
#include <string_view>

#include "configs.hpp"
#include "kernels.hpp"

namespace sonicmoe::bench {

namespace {

constexpr std::pair<std::string_view, Activation> kActivations[] = {
    {"swiglu", Activation::SwiGLU}, {"geglu", Activation::GeGLU}, {"reglu", Activation::ReGLU},
    {"gelu", Activation::GeLU},     {"relu", Activation::ReLU},   {"relu2", Activation::ReLU2},
    {"silu", Activation::SiLU},
};

int64_t parse_int(std::string_view flag, std::string_view v, int64_t lo, int64_t hi) {
  int64_t out = 0;
  const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
  if (ec != std::errc() || end != v.data() + v.size() || out < lo || out > hi)
    throw UsageError(std::string(flag) + " expects an integer in [" + std::to_string(lo) + ", " +
                     std::to_string(hi) + "], got '" + std::string(v) + "'");
  return out;
}

double parse_number(std::string_view flag, std::string_view v, bool zero_ok) {
  const std::string s(v);
  char* end = nullptr;
  const double out = std::strtod(s.c_str(), &end);
  if (s.empty() || *end != '\0' || !std::isfinite(out) || out < 0 || (out == 0 && !zero_ok))
    throw UsageError(std::string(flag) + " expects a " + (zero_ok ? "non-negative" : "positive") +
                     " number, got '" + s + "'");
  return out;
}

std::vector<std::string> parse_config_names(std::string_view v) {
  if (v == "all") {
    std::vector<std::string> all;
    for (const auto& c : kConfigs) all.emplace_back(c.name);
    return all;
  }
  std::vector<std::string> names;
  while (!v.empty()) {
    const size_t comma = v.find(',');
    const std::string_view name = v.substr(0, comma);
    if (!find_config(name))
      throw UsageError("unknown config '" + std::string(name) +
                       "' (--list shows the canonical configs; 'all' runs them all)");
    names.emplace_back(name);
    v = comma == std::string_view::npos ? std::string_view() : v.substr(comma + 1);
  }
  if (names.empty()) throw UsageError("--config expects a name, a comma-separated list or 'all'");
  return names;
}

std::vector<std::string> parse_kernel_names(std::string_view v) {
  std::vector<std::string> names;
  while (!v.empty()) {
    const size_t comma = v.find(',');
    const std::string_view name = v.substr(0, comma);
    if (std::find(std::begin(kKernelNames), std::end(kKernelNames), name) == std::end(kKernelNames)) {
      std::string known;
      for (std::string_view k : kKernelNames) known += (known.empty() ? "" : ", ") + std::string(k);
      throw UsageError("--only: unknown kernel '" + std::string(name) + "' (one of: " + known + ")");
    }
    names.emplace_back(name);
    v = comma == std::string_view::npos ? std::string_view() : v.substr(comma + 1);
  }
  if (names.empty()) throw UsageError("--only expects a kernel name or a comma-separated list");
  return names;
}

constexpr std::pair<std::string_view, TokenRounding> kRoundings[] = {
    {"round-nearest", TokenRounding::Nearest},
    {"round-up", TokenRounding::Up},
    {"round-down", TokenRounding::Down},
};

}  // namespace

std::string routing_name(const RoutingChoice& r) {
  if (!r.rounding) return "topk";
  for (const auto& [name, mode] : kRoundings)
    if (mode == *r.rounding) return std::string(name);
  return "?";
}

Options parse_options(int argc, char** argv) {
  Options o;
  bool shape_given[5] = {false, false, false, false, false};
  int64_t* shape_field[5] = {&o.T, &o.H, &o.I, &o.E, &o.K};
  constexpr std::string_view shape_flag[5] = {"--T", "--H", "--I", "--E", "--K"};

  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    std::string_view flag = arg, inline_value;
    bool has_inline = false;
    if (const size_t eq = arg.find('='); arg.starts_with("--") && eq != std::string_view::npos) {
      flag = arg.substr(0, eq);
      inline_value = arg.substr(eq + 1);
      has_inline = true;
    }
    auto value = [&]() -> std::string_view {
      if (has_inline) return inline_value;
      if (i + 1 >= argc) throw UsageError(std::string(flag) + " expects a value");
      return argv[++i];
    };
    auto no_value = [&] {
      if (has_inline) throw UsageError(std::string(flag) + " takes no value");
    };

    if (flag == "--help" || flag == "-h") no_value(), o.help = true;
    else if (flag == "--list") no_value(), o.list = true;
    else if (flag == "--bias") no_value(), o.bias = true;
    else if (flag == "--force") no_value(), o.force = true;
    else if (flag == "--kernels") no_value(), o.kernels = true;
    else if (flag == "--config") o.configs = parse_config_names(value());
    else if (flag == "--only") o.only = parse_kernel_names(value());
    else if (flag == "--warmup") o.warmup = static_cast<int>(parse_int(flag, value(), 0, 100000));
    else if (flag == "--iters") o.iters = static_cast<int>(parse_int(flag, value(), 1, 100000));
    else if (flag == "--heat-ms") o.heat_ms = parse_number(flag, value(), true);
    else if (flag == "--seed") o.seed = static_cast<uint64_t>(parse_int(flag, value(), 0, INT64_MAX));
    else if (flag == "--tol") o.tol = parse_number(flag, value(), false);
    else if (flag == "--expert-bias-std") o.expert_bias_std = parse_number(flag, value(), true);
    else if (flag == "--activation") {
      const std::string_view v = value();
      bool found = false;
      for (const auto& [name, act] : kActivations)
        if (v == name) o.act = act, found = true;
      if (!found)
        throw UsageError("--activation expects swiglu|geglu|reglu|gelu|relu|relu2|silu, got '" +
                         std::string(v) + "'");
    } else if (flag == "--router") {
      const std::string_view v = value();
      if (v == "topk_then_softmax") o.order = RouterOrder::TopKThenSoftmax;
      else if (v == "softmax_then_topk") o.order = RouterOrder::SoftmaxThenTopK;
      else
        throw UsageError("--router expects topk_then_softmax|softmax_then_topk, got '" +
                         std::string(v) + "'");
    } else if (flag == "--routing") {
      const std::string_view v = value();
      bool found = v == "topk";
      if (found) o.routing.rounding.reset();
      for (const auto& [name, mode] : kRoundings)
        if (v == name) o.routing.rounding = mode, found = true;
      if (!found)
        throw UsageError("--routing expects topk|round-nearest|round-up|round-down, got '" +
                         std::string(v) + "'");
    } else if (flag == "--rounding-tile") {
      o.routing.tile = parse_int(flag, value(), 1, 1 << 20);
    } else if (flag == "--device") {
      const std::string_view v = value();
      if (v == "auto") o.device = DeviceChoice::Auto;
      else if (v == "cpu") o.device = DeviceChoice::Cpu;
      else if (v == "cuda") o.device = DeviceChoice::Cuda;
      else throw UsageError("--device expects auto|cpu|cuda, got '" + std::string(v) + "'");
    } else if (flag == "--check") {
      const std::string_view v = value();
      if (v == "full") o.check = CheckMode::Full;
      else if (v == "sampled") o.check = CheckMode::Sampled;
      else if (v == "none") o.check = CheckMode::None;
      else throw UsageError("--check expects full|sampled|none, got '" + std::string(v) + "'");
    } else {
      bool matched = false;
      for (int s = 0; s < 5; ++s)
        if (flag == shape_flag[s]) {
          // int32 routing metadata bounds every count; the library checks
          // the products (T*K pairs), we only keep each factor sane here.
          *shape_field[s] = parse_int(flag, value(), 1, INT32_MAX);
          shape_given[s] = matched = true;
        }
      if (!matched) throw UsageError("unknown option '" + std::string(arg) + "'");
    }
  }

  int given = 0;
  for (bool g : shape_given) given += g;
  if (given > 0 && !o.configs.empty())
    throw UsageError("give either --config or an explicit shape (--T --H --I --E --K), not both");
  if (given > 0 && given < 5) {
    std::string missing;
    for (int s = 0; s < 5; ++s)
      if (!shape_given[s]) missing += std::string(missing.empty() ? "" : " ") + std::string(shape_flag[s]);
    throw UsageError("an explicit shape needs all of --T --H --I --E --K; missing: " + missing);
  }
  o.explicit_shape = given == 5;
  if (!o.only.empty() && !o.kernels) throw UsageError("--only picks kernels of --kernels; add --kernels");
  if (o.kernels && o.routing.rounding)
    throw UsageError("--kernels times the top-K layer's kernels; --routing " +
                     routing_name(o.routing) + " applies to the layer bench only");
  if (o.explicit_shape) {
    if (o.K > o.E) throw UsageError("--K (" + std::to_string(o.K) + ") exceeds --E (" +
                                    std::to_string(o.E) + ")");
    // The library moves 16-byte rows: d and n must be multiples of 8 bf16.
    if (o.H % 8 != 0) throw UsageError("--H must be a multiple of 8, got " + std::to_string(o.H));
    if (o.I % 8 != 0) throw UsageError("--I must be a multiple of 8, got " + std::to_string(o.I));
    if (o.T * o.K > INT32_MAX)
      throw UsageError("T*K must fit int32 routing metadata, got " + std::to_string(o.T * o.K));
  }
  return o;
}

void print_usage(std::ostream& os) {
  os << R"(sonicmoe-bench: time the SonicMoE layer (router + routing + MoE forward/backward)
and check it against an fp64 oracle.

Usage: sonicmoe-bench [--config NAME[,NAME...]|all | --T N --H N --I N --E N --K N]
                      [--activation A] [--bias] [--router R] [--device D]
                      [--routing M] [--rounding-tile N] [--expert-bias-std X] [--warmup N] [--iters N] [--check C]
                      [--tol X] [--seed N]
                      [--force] [--list] [--help]
       sonicmoe-bench --kernels [--only K[,K...]] [--config NAME[,NAME...]|all | --T .. --K ..]
                      [--activation A] [--bias] [--router R] [--expert-bias-std X]
                      [--warmup N] [--iters N] [--seed N]

Shape
  --config NAME      a canonical config (--list), a comma-separated list, or 'all'
                     (every canonical config in order; 'tiny' is not part of it)
  --T --H --I --E --K  an explicit shape: tokens, hidden, expert intermediate,
                     experts, experts per token (H and I multiples of 8)
  --activation A     swiglu (default) | geglu | reglu | gelu | relu | relu2 | silu
  --bias             add b1 / b2 (and time their gradients)
  --router R         topk_then_softmax (default) | softmax_then_topk
  --routing M        topk (default) | round-nearest | round-up | round-down:
                     token rounding (round_routing) after the router, each
                     expert's count rounded to a multiple of the tile; the
                     layer then runs the rounded general routing (N = the
                     capacity, padding pairs dropped). The forward time
                     includes round_routing; the router's backward is not
                     defined for added pairs and is skipped (and said so).
                     TF/s count the pairs actually computed (read back after
                     timing); compare modes by their ms.
  --rounding-tile N  the tile of --routing round-* (default 128, the M tile)
  --expert-bias-std X  the random router's logits are N(0,1) plus a per-expert
                     offset ~ N(0, X), so that loads are uneven as in training
                     (default 0.5: the hottest expert gets ~5x the mean load;
                     0: nearly uniform loads)

Run
  --device D         auto (default: cuda when sonicmoe::cuda_device_count() > 0,
                     else cpu) | cpu | cuda
  --warmup N         untimed runs before timing (default 5)
  --iters N          timed runs; the median is reported (default 20)
  --heat-ms X        GPU: before each timed phase (forward, the dense reference,
                     and once before --kernels' list) run it untimed for X ms
                     of device time, so that timing starts at the clock the
                     GPU holds under sustained load, not at its idle boost
                     (default 2000; 0: no heating)
  --check C          full | sampled | none. Default: full when T*K*H*I <= 2^27,
                     else sampled (16 tokens' rows and 2 experts' gradients)
  --tol X            max relative error a tensor may have (default 2e-2)
  --seed N           seed of the random inputs (default 1)
  --force            run a large shape on the CPU reference backend anyway

Kernels (GPU only)
  --kernels          time each kernel of the GPU layer alone instead of the layer:
                     the six grouped products (TFLOPS, and a dense cuBLAS bf16
                     GEMM of the same M, N, K in the same run), aggregate_rows
                     forward and backward, reduce_dscores, router_forward and
                     routing_from_topk (GB/s from the bytes each must move at
                     least), the layer's kernel sequences, and the inference
                     up-projection (up_proj_inference: A written, H not
                     kept). Median of --iters runs after --warmup, L2 flushed
                     before each run. Engine: SONICMOE_ENGINE=portable|hopper, or
                     the device's default. Output: one JSON object per kernel
                     {"config", "kernel", "engine", "device", "ms", "tflops",
                     "gbps", "dense_tflops", "ratio"} on stdout, a table on stderr.
                     No check runs; --check, --tol and --force do not apply.
  --only K[,K...]    with --kernels: time (and heat) only these kernels, e.g.
                     up_proj or dw1,forward_sequence (the names of the table)

Without arguments: config 7b-n256 on a GPU; without a GPU the CPU reference
backend on config 'tiny'.

Output: one JSON object per run on stdout; progress, per-tensor errors and a
summary table on stderr.
FLOPs: forward 6*T*K*H*I, backward 12*T*K*H*I for gated activations
(4 and 8 for non-gated ones, whose up-projection has I columns, not 2I).
Exit status: 0 all checks passed, 1 a check failed, 2 bad command line, a
shape refused or --kernels without a GPU, 3 the library or CUDA reported an
error (Unsupported included).
)";
}

void print_config_list(std::ostream& os) {
  os << std::left << std::setw(15) << "config" << std::right << std::setw(7) << "T"
     << std::setw(6) << "H" << std::setw(6) << "I" << std::setw(5) << "E" << std::setw(4) << "K"
     << "   SonicMoE H100 fwd/bwd TFLOPS (paper)\n";
  auto row = [&](const ShapeConfig& c, const char* remark) {
    os << std::left << std::setw(15) << c.name << std::right << std::setw(7) << c.T
       << std::setw(6) << c.H << std::setw(6) << c.I << std::setw(5) << c.E << std::setw(4)
       << c.K << "   ";
    if (c.has_paper()) os << c.paper_fwd << " / " << c.paper_bwd;
    else os << "-";
    os << remark << '\n';
  };
  for (const auto& c : kConfigs) row(c, "");
  row(kTiny, "   (smoke test and the CPU default; not part of 'all')");
}

}  // namespace sonicmoe::bench
