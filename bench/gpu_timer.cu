#include "gpu_timer.cuh"

#include <atomic>

namespace sonicmoe::bench {

namespace {

__device__ uint64_t globaltimer_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// One thread spins on host memory until the host releases it. The flags are
// volatile: every poll must cross PCIe, not hit a register or a cache line.
__global__ void hold_kernel(const volatile int32_t* release, volatile int32_t* timed_out,
                            uint64_t timeout_ns) {
  const uint64_t start = globaltimer_ns();
  while (*release == 0) {
    if (globaltimer_ns() - start > timeout_ns) {
      *timed_out = 1;
      return;
    }
    __nanosleep(1000);  // ~1 us between polls: a trickle of PCIe reads
  }
}

}  // namespace

KernelTimer::KernelTimer(cudaStream_t stream) : stream_(stream), events_(kRunsPerHold) {
  CUDA_CHECK(cudaHostAlloc(&flags_, 2 * sizeof(int32_t), cudaHostAllocMapped));
  flags_[0] = flags_[1] = 0;
  int device = 0, l2 = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device));
  scratch_bytes_ = 2 * static_cast<size_t>(l2);
  if (scratch_bytes_ > 0) CUDA_CHECK(cudaMalloc(&scratch_, scratch_bytes_));
}

KernelTimer::~KernelTimer() {
  // After an exception in the middle of a batch the stream is still held:
  // let it go before the flags it polls are freed.
  if (held_) {
    static_cast<volatile int32_t*>(flags_)[0] = 1;
    cudaStreamSynchronize(stream_);
  }
  if (scratch_) cudaFree(scratch_);
  cudaFreeHost(flags_);
}

void KernelTimer::hold() {
  // The stream is idle here (release() synchronised it), so no hold kernel
  // is still reading the flags.
  volatile int32_t* f = flags_;
  f[0] = 0;
  f[1] = 0;
  int32_t* device_flags = nullptr;
  CUDA_CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&device_flags), flags_, 0));
  hold_kernel<<<1, 1, 0, stream_>>>(device_flags, device_flags + 1, kHoldTimeoutNs);
  CUDA_CHECK(cudaGetLastError());
  held_ = true;
}

void KernelTimer::release() {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  static_cast<volatile int32_t*>(flags_)[0] = 1;
  held_ = false;
  CUDA_CHECK(cudaStreamSynchronize(stream_));
  if (static_cast<volatile int32_t*>(flags_)[1] != 0) gaps_ = true;
}

void KernelTimer::flush_l2() {
  if (scratch_bytes_ > 0) CUDA_CHECK(cudaMemsetAsync(scratch_, 0, scratch_bytes_, stream_));
}

bool KernelTimer::gaps() {
  const bool g = gaps_;
  gaps_ = false;
  return g;
}

}  // namespace sonicmoe::bench
