// The CPU runner: the library's CPU reference backend on host buffers,
// timed with steady_clock (its calls are synchronous).
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <thread>
#include <vector>

#include <sonicmoe/bfloat16.hpp>

#include "check.hpp"
#include "layer.hpp"
#include "random.hpp"
#include "runner.hpp"

namespace sonicmoe::bench {

namespace {

int hardware_threads() { return static_cast<int>(std::max(1u, std::thread::hardware_concurrency())); }

// f(i) for i in [0, n) on every hardware thread.
template <class F>
void parallel_fill(int64_t n, F&& f) {
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(hardware_threads(), n / 65536));
  const int64_t chunk = (n + parts - 1) / parts;
  std::vector<std::thread> pool;
  for (int64_t t = 0; t < parts; ++t)
    pool.emplace_back([&, t] {
      for (int64_t i = t * chunk; i < std::min(n, (t + 1) * chunk); ++i) f(i);
    });
  for (auto& th : pool) th.join();
}

void fill_normal(const DevTensor& t, uint64_t seed, Field field, float std) {
  if (!t.t.present()) return;
  bf16* p = static_cast<bf16*>(t.t.data);
  parallel_fill(t.t.numel(), [&](int64_t i) { p[i] = bf16(std * normal_at(seed, field, i)); });
}

void fill_inputs(const BenchLayer& L, uint64_t seed) {
  fill_normal(L.x, seed, Field::X, 1.0f);
  fill_normal(L.w1, seed, Field::W1, kWeightStd);
  fill_normal(L.b1, seed, Field::B1, kBiasStd);
  fill_normal(L.w2, seed, Field::W2, kWeightStd);
  fill_normal(L.b2, seed, Field::B2, kBiasStd);
  fill_normal(L.dout, seed, Field::Dout, 1.0f);
  float* z = static_cast<float*>(L.logits.t.data);
  const int64_t E = L.problem().E;
  const auto sigma = static_cast<float>(L.problem().expert_bias_std);
  parallel_fill(L.logits.t.numel(), [&](int64_t i) { z[i] = logit_at(seed, i, E, sigma); });
}

template <class F>
std::vector<double> time_runs(int iters, F&& f) {
  std::vector<double> ms;
  for (int i = 0; i < iters; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return ms;
}

}  // namespace

std::string cpu_device_name() {
  // Mirrors src/cpu/parallel.hpp: the public API has no way to ask.
  int n = hardware_threads();
  if (const char* env = std::getenv("SONICMOE_CPU_THREADS"))
    if (const int v = std::atoi(env); v > 0) n = v;
  return "cpu (" + std::to_string(n) + " threads)";
}

RunResult run_cpu(const Problem& p, const RunSettings& s) {
  const std::string tag = p.name + "/cpu";
  const Device dev{DeviceType::CPU, 0};
  RunResult r;
  r.problem = p;
  r.device = cpu_device_name();

  const WorkspaceSizes ws = query_workspaces(p, dev);
  progress(tag, "setup: " + std::to_string(layer_bytes(p, ws) >> 20) +
                    " MiB of host buffers, random inputs (seed " + std::to_string(p.seed) + ")");
  const BenchLayer L(p, dev, ws);
  fill_inputs(L, p.seed);

  progress(tag, "warm-up: " + std::to_string(s.warmup) + " x (forward + backward)");
  for (int i = 0; i < s.warmup; ++i) {
    L.forward(nullptr);
    L.backward(nullptr);
  }
  progress(tag, "forward timing: " + std::to_string(s.iters) + " runs");
  r.fwd_ms = median(time_runs(s.iters, [&] { L.forward(nullptr); }));
  progress(tag, "backward timing: " + std::to_string(s.iters) + " runs");
  r.bwd_ms = median(time_runs(s.iters, [&] { L.backward(nullptr); }));
  if (p.rounded()) {
    r.round_ms = median(time_runs(s.iters, [&] { L.round(nullptr); }));
    r.computed_pairs = L.computed_pairs();
    progress(tag, routing_name(p.routing) + ": " + std::to_string(r.computed_pairs) +
                      " pairs computed of " + std::to_string(p.pairs()) +
                      " top-K pairs; router_backward skipped (not defined for added pairs)");
  }

  if (p.check != CheckMode::None) {
    progress(tag, "check: forward + backward once more on poisoned outputs");
    L.poison_outputs();
    L.forward(nullptr);
    L.backward(nullptr);
    HostLayerAccess access(L);
    r.errors = run_check(p, access, s.tol, tag);
    r.checked = true;
  }
  progress(tag, "dense reference: none on the CPU (the cuBLAS product is the GPU's speed of light)");
  return r;
}

}  // namespace sonicmoe::bench
