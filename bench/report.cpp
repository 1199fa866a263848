#include "report.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iomanip>
#include <iostream>
#include <limits>
#include <sstream>

#include "configs.hpp"

namespace sonicmoe::bench {

namespace {

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

// JSON has no infinity: an infinite error (NaN in the output) is written as
// the largest double, which still fails any tolerance downstream.
std::string json_number(std::optional<double> v) {
  if (!v) return "null";
  double x = *v;
  if (std::isnan(x)) return "null";
  if (std::isinf(x)) x = std::copysign(std::numeric_limits<double>::max(), x);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", x);
  return buf;
}

std::string fixed(std::optional<double> v, int precision) {
  if (!v || std::isnan(*v)) return "-";
  std::ostringstream s;
  s << std::fixed << std::setprecision(precision) << *v;
  return s.str();
}

// 4 significant digits: CPU runs give thousandths of a TFLOP/s, GPUs hundreds.
std::string sig4(std::optional<double> v) {
  if (!v || std::isnan(*v)) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g", *v);
  return buf;
}

std::string sci(std::optional<double> v) {
  if (!v) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2e", *v);
  return buf;
}

}  // namespace

std::optional<double> RunResult::dense_tflops() const {
  if (!dense_ms) return std::nullopt;
  return problem.fwd_flops() / (*dense_ms * 1e-3) / 1e12;
}

std::optional<double> RunResult::max_rel_err() const {
  if (!checked) return std::nullopt;
  double worst = 0;
  for (const auto& e : errors) worst = std::max(worst, e.rel);
  return worst;
}

std::vector<std::string> RunResult::failures(double tol) const {
  std::vector<std::string> names;
  for (const auto& e : errors)
    if (!(e.rel <= tol)) names.push_back(e.name);
  return names;
}

std::string to_json(const RunResult& r) {
  const Problem& p = r.problem;
  std::ostringstream s;
  s << "{\"config\": " << json_string(p.name) << ", \"T\": " << p.T << ", \"H\": " << p.H
    << ", \"I\": " << p.I << ", \"E\": " << p.E << ", \"K\": " << p.K
    << ", \"impl\": \"sonicmoe\", \"device\": " << json_string(r.device)
    << ", \"fwd_ms\": " << json_number(r.fwd_ms) << ", \"bwd_ms\": " << json_number(r.bwd_ms)
    << ", \"fwd_tflops\": " << json_number(r.fwd_tflops())
    << ", \"bwd_tflops\": " << json_number(r.bwd_tflops())
    << ", \"act_mem_bytes\": " << p.act_mem_bytes()
    << ", \"max_rel_err\": " << json_number(r.max_rel_err())
    << ", \"dense_tflops\": " << json_number(r.dense_tflops());
  if (p.rounded())
    s << ", \"routing\": " << json_string(routing_name(p.routing)) << ", \"tile\": " << p.routing.tile
      << ", \"pairs\": " << r.pairs() << ", \"topk_pairs\": " << p.pairs()
      << ", \"round_ms\": " << json_number(r.round_ms) << ", \"router_backward\": \"skipped\"";
  s << "}";
  return s.str();
}

void print_table(std::ostream& os, const std::vector<RunResult>& results) {
  const char* head[] = {"config",    "fwd ms",    "bwd ms",  "fwd TF/s",    "bwd TF/s",
                        "dense TF/s", "fwd/dense", "act MiB", "max rel err", "paper H100 fwd/bwd"};
  const int width[] = {24, 10, 10, 9, 9, 10, 9, 9, 11, 18};
  std::vector<std::vector<std::string>> rows;
  for (const auto& r : results) {
    const auto dense = r.dense_tflops();
    const double ratio = dense ? r.fwd_tflops() / *dense : NAN;  // NAN prints "-"
    const Problem& p = r.problem;
    rows.push_back({p.name + (p.rounded() ? "/" + routing_name(p.routing) : ""), fixed(r.fwd_ms, 3), fixed(r.bwd_ms, 3), sig4(r.fwd_tflops()),
                    sig4(r.bwd_tflops()), sig4(dense), fixed(ratio, 2),
                    fixed(p.act_mem_bytes() / 1048576.0, 1), sci(r.max_rel_err()),
                    p.paper_fwd > 0 ? fixed(p.paper_fwd, 0) + " / " + fixed(p.paper_bwd, 0) : "-"});
  }
  auto line = [&](const std::vector<std::string>& cells) {
    for (size_t i = 0; i < cells.size(); ++i) {
      if (i == 0) os << std::left << std::setw(width[i]) << cells[i];
      else os << ' ' << std::right << std::setw(width[i]) << cells[i];
    }
    os << '\n';
  };
  line(std::vector<std::string>(std::begin(head), std::end(head)));
  for (const auto& r : rows) line(r);
  if (!results.empty())
    os << "device: " << results.front().device
       << "; TF/s = TFLOP/s with FLOPs 6/12*T*K*H*I (gated) or 4/8 (non-gated); "
          "act MiB = what forward keeps for backward\n";
  for (const auto& r : results) {
    const Problem& p = r.problem;
    if (!p.rounded()) continue;
    os << p.name << "/" << routing_name(p.routing) << ": " << r.pairs() << " pairs computed ("
       << std::fixed << std::setprecision(3) << double(r.pairs()) / double(p.pairs())
       << "x the " << p.pairs() << " top-K pairs, tile " << p.routing.tile << ", capacity "
       << p.capacity() << "); TF/s over the computed pairs; fwd ms includes round_routing ("
       << fixed(r.round_ms, 3) << " ms); bwd ms is moe_backward only: router_backward is not "
       << "defined for added pairs and was skipped\n";
    os << std::defaultfloat;
  }
  os.flush();
}

std::string to_json(const KernelResult& r) {
  std::ostringstream s;
  s << "{\"config\": " << json_string(r.config) << ", \"kernel\": " << json_string(r.kernel)
    << ", \"engine\": " << json_string(r.engine) << ", \"device\": " << json_string(r.device)
    << ", \"ms\": " << json_number(r.ms) << ", \"tflops\": " << json_number(r.tflops)
    << ", \"gbps\": " << json_number(r.gbps)
    << ", \"dense_tflops\": " << json_number(r.dense_tflops)
    << ", \"ratio\": " << json_number(r.ratio) << "}";
  return s.str();
}

void print_kernel_table(std::ostream& os, const std::vector<KernelResult>& results) {
  const char* head[] = {"config", "kernel", "ms",    "us",          "TF/s",
                        "GB/s",   "dense TF/s", "ratio", "dense MxNxK", "paper H100 TF/s"};
  const int width[] = {15, 19, 9, 9, 7, 7, 10, 5, 20, 15};
  auto line = [&](const std::vector<std::string>& cells) {
    for (size_t i = 0; i < cells.size(); ++i) {
      if (i < 2) os << (i ? " " : "") << std::left << std::setw(width[i]) << cells[i];
      else os << ' ' << std::right << std::setw(width[i]) << cells[i];
    }
    os << '\n';
  };
  line(std::vector<std::string>(std::begin(head), std::end(head)));
  for (const auto& r : results)
    line({r.config, r.kernel, fixed(r.ms, 4), fixed(r.ms * 1e3, 1), fixed(r.tflops, 1),
          fixed(r.gbps, 0), fixed(r.dense_tflops, 1), fixed(r.ratio, 2),
          r.dense_shape.empty() ? "-" : r.dense_shape, fixed(r.paper_tflops, 0)});
  if (results.empty()) return;
  os << "device: " << results.front().device << "; engine: " << results.front().engine
     << "\nTF/s: 2 FLOPs per multiply-add of the routed pairs (tile padding not counted); "
        "GB/s: the bytes each kernel must move at least (bench/kernels.cu); ratio = TF/s / "
        "dense TF/s, cuBLAS bf16 on the same (M, N, K); L2 flushed before every run\n";
  // The paper's single-kernel figures, for the configs it measured.
  std::vector<std::string> quoted;
  for (const auto& r : results) {
    if (std::find(quoted.begin(), quoted.end(), r.config) != quoted.end()) continue;
    quoted.push_back(r.config);
    std::string targets;
    for (const auto& t : kPaperKernelTargets) {
      if (t.config != r.config) continue;
      // Appended piece by piece: GCC 12 warns (-Wrestrict, falsely) on
      // const char* + std::string here.
      if (!targets.empty()) targets += "; ";
      targets.append(t.what).append(" ").append(fixed(t.tflops, 0)).append(" TFLOPS");
      if (!t.remark.empty()) targets.append(" ").append(t.remark);
    }
    if (!targets.empty())
      os << "SonicMoE paper, H100, " << r.config << " (SwiGLU, no bias), single kernels: "
         << targets << '\n';
  }
  os.flush();
}

void progress(const std::string& tag, const std::string& message) {
  using clock = std::chrono::steady_clock;
  static const clock::time_point start = clock::now();
  const double s = std::chrono::duration<double>(clock::now() - start).count();
  std::fprintf(stderr, "[%7.1fs] %s: %s\n", s, tag.c_str(), message.c_str());
  std::fflush(stderr);
}

double median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

}  // namespace sonicmoe::bench
