// Times one GPU operation alone, for operations as short as a few
// microseconds (the routing kernels) as well as long GEMMs.
//
// Two effects bias plain event timing of a short kernel:
// - Launch gaps. When the host enqueues slower than the GPU runs (a launch
//   costs a few microseconds of host time, as long as tile_offsets runs),
//   the GPU idles between the start event and the kernel, and the idle time
//   is counted. So the timer holds the stream with a spinning kernel,
//   enqueues a batch of runs behind it, then releases it (nvbench's
//   "blocking kernel"): every run then starts the moment its predecessor
//   ends. A hold gives up after kHoldTimeoutNs (an operation that
//   synchronises with the host would otherwise wait on the hold forever);
//   gaps() then says the times may include launch gaps.
// - A warm L2. Operands of up to the L2 size (50 MB on H100: the router's
//   logits, the dS partials) stay cached between runs and a memory-bound
//   kernel reports more than HBM delivers. Before every run, outside its
//   events, the timer overwrites a buffer of twice the L2 size.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "gpu_util.cuh"

namespace sonicmoe::bench {

class KernelTimer {
 public:
  explicit KernelTimer(cudaStream_t stream);
  ~KernelTimer();
  KernelTimer(const KernelTimer&) = delete;
  KernelTimer& operator=(const KernelTimer&) = delete;

  // `enqueue` puts one run of the operation on the stream and must not
  // synchronise with the host. Returns the `iters` run times in ms.
  template <class F>
  std::vector<double> time(int warmup, int iters, F&& enqueue) {
    // Warm-up runs are not held, and there is always one: a first call may
    // allocate, set attributes or load its module (CUDA's lazy loading),
    // which can wait on the device and so on a held stream.
    for (int i = 0; i < std::max(warmup, 1); ++i) {
      flush_l2();
      enqueue();
    }
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    std::vector<double> ms;
    ms.reserve(static_cast<size_t>(std::max(iters, 0)));
    for (int done = 0; done < iters;) {
      const int batch = std::min(kRunsPerHold, iters - done);
      hold();
      for (int i = 0; i < batch; ++i) {
        flush_l2();
        CUDA_CHECK(cudaEventRecord(events_[i].start, stream_));
        enqueue();
        CUDA_CHECK(cudaEventRecord(events_[i].stop, stream_));
      }
      release();
      for (int i = 0; i < batch; ++i) {
        float v = 0;
        CUDA_CHECK(cudaEventElapsedTime(&v, events_[i].start, events_[i].stop));
        ms.push_back(v);
      }
      done += batch;
    }
    return ms;
  }

  // True when a hold timed out since the last call: the last times may
  // include launch gaps.
  bool gaps();

 private:
  // Runs queued behind one hold: a few hundred queue entries at most (the
  // routing is a handful of launches), far below the depth at which the
  // host would block on a full launch queue while the GPU is held.
  static constexpr int kRunsPerHold = 10;
  static constexpr uint64_t kHoldTimeoutNs = 2'000'000'000;

  void hold();
  void release();  // lets the held batch run and waits for it
  void flush_l2();

  cudaStream_t stream_;
  int32_t* flags_ = nullptr;  // pinned and mapped: [0] release, [1] timed out
  bool held_ = false, gaps_ = false;
  void* scratch_ = nullptr;
  size_t scratch_bytes_ = 0;
  std::vector<EventPair> events_;
};

}  // namespace sonicmoe::bench
