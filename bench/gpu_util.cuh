// What the two GPU modes of the bench share (the layer runner, run_gpu.cu,
// and the per-kernel timer, kernels.cu): status checks, RAII for streams and
// events, and the device-side random fill of random.hpp.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>

#include "device_buffer.hpp"
#include "random.hpp"

namespace sonicmoe::bench {

// CUDA and cuBLAS failures become std::runtime_error naming the call and the
// line: main reports them and exits 3 instead of timing garbage.
inline void cuda_check(cudaError_t e, const char* what, const char* file, int line) {
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("CUDA error in ") + what + " (" + file + ":" +
                             std::to_string(line) + "): " + cudaGetErrorName(e) + ": " +
                             cudaGetErrorString(e));
}

inline void cublas_check(cublasStatus_t s, const char* what, const char* file, int line) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string("cuBLAS error in ") + what + " (" + file + ":" +
                             std::to_string(line) + "): " + cublasGetStatusString(s));
}

#define CUDA_CHECK(expr) ::sonicmoe::bench::cuda_check((expr), #expr, __FILE__, __LINE__)
#define CUBLAS_CHECK(expr) ::sonicmoe::bench::cublas_check((expr), #expr, __FILE__, __LINE__)

inline std::string gib(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / (1u << 30));
  return buf;
}

struct StreamHandle {
  cudaStream_t s = nullptr;
  StreamHandle() { CUDA_CHECK(cudaStreamCreate(&s)); }
  ~StreamHandle() { cudaStreamDestroy(s); }
  StreamHandle(const StreamHandle&) = delete;
  StreamHandle& operator=(const StreamHandle&) = delete;
};

struct EventPair {
  cudaEvent_t start = nullptr, stop = nullptr;
  EventPair() {
    CUDA_CHECK(cudaEventCreate(&start));
    CUDA_CHECK(cudaEventCreate(&stop));
  }
  ~EventPair() {
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
  }
  EventPair(const EventPair&) = delete;
  EventPair& operator=(const EventPair&) = delete;
};

// Sustained load before timing. The GPUs we measure on run under a
// software power cap: after an idle spell they clock at boost, and within a
// fraction of a second of load the cap takes the clock down (H200: 1.98 ->
// ~1.45 GHz; docs/NOTES.md). Work timed in the first tens of ms after idle
// reads faster than the same work timed later: up to 20% for a short dense
// reference, 17% for the first product of --kernels. `heat` runs `f` back
// to back until `ms` of device time have passed (0: not at all), so that
// what is timed next runs in the state a training loop runs in.
template <class F>
void heat(cudaStream_t s, double ms, F&& f) {
  if (ms <= 0) return;
  EventPair ev;
  double done = 0;
  int batch = 1;
  // Batches grow to ~25 ms: a few host round trips per second, never a
  // launch queue deep enough to block the host. The round cap ends the loop
  // for an `f` that enqueues nothing.
  for (int round = 0; done < ms && round < 4096; ++round) {
    CUDA_CHECK(cudaEventRecord(ev.start, s));
    for (int i = 0; i < batch; ++i) f();
    CUDA_CHECK(cudaEventRecord(ev.stop, s));
    CUDA_CHECK(cudaEventSynchronize(ev.stop));
    float v = 0;
    CUDA_CHECK(cudaEventElapsedTime(&v, ev.start, ev.stop));
    done += v;
    if (v < 25.0f && batch < (1 << 12)) batch *= 2;
  }
}

// Blocks for a grid-stride loop over n elements: at most 32 per SM of
// device 0 (the device the bench runs on).
unsigned grid_for(int64_t n);

// bf16 elements ~ N(0, std^2) from (seed, field, index); no-op on an absent
// or empty tensor.
void fill_normal(const testing::DevTensor& t, uint64_t seed, Field field, float std,
                 cudaStream_t s);
// f32 router logits [T, E] as random.hpp's logit_at draws them.
void fill_logits(const testing::DevTensor& t, uint64_t seed, int64_t num_experts,
                 float expert_bias_std, cudaStream_t s);

}  // namespace sonicmoe::bench
