#include "gpu_util.cuh"

#include <cuda_bf16.h>

#include <algorithm>

namespace sonicmoe::bench {

namespace {

// Grid-stride loops with 64-bit indices: dsv3-685b's w1 has 7.5e9 elements.
__global__ void fill_normal_kernel(__nv_bfloat16* out, int64_t n, uint64_t seed, Field field,
                                   float std) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = __float2bfloat16_rn(std * normal_at(seed, field, uint64_t(i)));
}

__global__ void fill_logits_kernel(float* out, int64_t n, uint64_t seed, int64_t num_experts,
                                   float expert_bias_std) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = logit_at(seed, uint64_t(i), num_experts, expert_bias_std);
}

}  // namespace

unsigned grid_for(int64_t n) {
  static const int sms = [] {
    int v = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, 0));
    return v;
  }();
  const int64_t blocks = (n + 255) / 256;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(blocks, int64_t(sms) * 32)));
}

void fill_normal(const testing::DevTensor& t, uint64_t seed, Field field, float std,
                 cudaStream_t s) {
  if (!t.t.present() || t.t.numel() == 0) return;
  fill_normal_kernel<<<grid_for(t.t.numel()), 256, 0, s>>>(
      static_cast<__nv_bfloat16*>(t.t.data), t.t.numel(), seed, field, std);
  CUDA_CHECK(cudaGetLastError());
}

void fill_logits(const testing::DevTensor& t, uint64_t seed, int64_t num_experts,
                 float expert_bias_std, cudaStream_t s) {
  const int64_t n = t.t.numel();
  if (!t.t.present() || n == 0) return;
  fill_logits_kernel<<<grid_for(n), 256, 0, s>>>(static_cast<float*>(t.t.data), n, seed,
                                                  num_experts, expert_bias_std);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace sonicmoe::bench
