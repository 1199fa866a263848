// A static-partition parallel loop for the CPU reference.
//
// Every index is handled by exactly one thread and each output element is
// reduced in a fixed order inside its index, so results are bitwise the same
// whatever the thread count. SONICMOE_CPU_THREADS caps the threads.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <thread>
#include <vector>

namespace sonicmoe::cpu {

inline int thread_count() {
  static const int n = [] {
    int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    if (const char* env = std::getenv("SONICMOE_CPU_THREADS")) {
      const int v = std::atoi(env);
      if (v > 0) hw = v;
    }
    return hw;
  }();
  return n;
}

// Calls f(i) for i in [0, n). `cost` is a rough per-index work estimate
// (multiply-adds); small loops stay on the calling thread.
template <class F>
void parallel_for(int64_t n, int64_t cost, F&& f) {
  constexpr int64_t kMinWorkPerThread = 1 << 16;
  const int64_t want = std::max<int64_t>(1, n * std::max<int64_t>(cost, 1) / kMinWorkPerThread);
  const int threads = static_cast<int>(std::min<int64_t>({thread_count(), want, n}));
  if (threads <= 1) {
    for (int64_t i = 0; i < n; ++i) f(i);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  const int64_t chunk = (n + threads - 1) / threads;
  for (int t = 1; t < threads; ++t)
    pool.emplace_back([&, t] {
      const int64_t end = std::min(n, (t + 1) * chunk);
      for (int64_t i = t * chunk; i < end; ++i) f(i);
    });
  for (int64_t i = 0; i < std::min(n, chunk); ++i) f(i);
  for (auto& th : pool) th.join();
}

}  // namespace sonicmoe::cpu
