// Issue cost of the epilogues' instruction kinds on one SM (diagnostic; not
// part of the library or CI). Each thread runs kChains independent chains
// of one instruction kind (or a mix), `iters` times; the kernel runs 8 or
// 16 warps on one SM (2 or 4 per scheduler, as the consumer warpgroups
// leave there), and the report is scheduler cycles per warp instruction:
// ~1 for a full-rate pipe, ~2 for a half-rate one, ~8 for a 16-lane unit.
// Two kinds in one chain that report the sum of their costs share a pipe;
// the larger of the two, separate pipes.
//   nvcc -O3 -arch=sm_90a -o .dev/pipe_bench docs/trials/pipe_bench.cu && .dev/pipe_bench
#include <cstdint>
#include <cstdio>

#include <cuda_runtime.h>

namespace {

constexpr int kChains = 16;

__device__ __forceinline__ void ex2(float& x) {
  asm volatile("ex2.approx.ftz.f32 %0, %0;" : "+f"(x));
}
__device__ __forceinline__ void rcp(float& x) {
  asm volatile("rcp.approx.ftz.f32 %0, %0;" : "+f"(x));
}
// cvt to bf16x2 from two floats; the result fed back as the chain's float.
__device__ __forceinline__ void cvt_bf16x2(float& x, float y) {
  asm volatile("{ .reg .b32 t; cvt.rn.bf16x2.f32 t, %0, %1; mov.b32 %0, t; }" : "+f"(x) : "f"(y));
}
__device__ __forceinline__ void cvt_f16x2(float& x, float y) {
  asm volatile("{ .reg .b32 t; cvt.rn.f16x2.f32 t, %0, %1; mov.b32 %0, t; }" : "+f"(x) : "f"(y));
}
// Round-to-nearest-even to bf16 with integer ops (NaN not kept), two values
// packed: the candidate replacement for cvt.rn.bf16x2.f32. In the chains
// below y is the next chain's value, whose rounding ptxas shares with that
// chain: a step costs one value's rounding (SHF, LOP3, IADD3) and a PRMT,
// so a real pair (7 ops) costs that plus three more.
__device__ __forceinline__ void int_bf16x2(float& x, float y) {
  uint32_t a = __float_as_uint(x), b = __float_as_uint(y);
  a += 0x7fffu + ((a >> 16) & 1u);
  b += 0x7fffu + ((b >> 16) & 1u);
  x = __uint_as_float(__byte_perm(a, b, 0x7632));
  asm volatile("" : "+f"(x));
}
__device__ __forceinline__ void fmul(float& x, float y) {
  asm volatile("mul.f32 %0, %0, %1;" : "+f"(x) : "f"(y));
}
__device__ __forceinline__ void shfl(float& x) {
  x = __shfl_xor_sync(0xffffffffu, x, 1);
  asm volatile("" : "+f"(x));
}
__device__ __forceinline__ void ex2_bf16x2(float& x) {
  asm volatile("ex2.approx.ftz.bf16x2 %0, %0;" : "+r"(*reinterpret_cast<uint32_t*>(&x)));
}

template <int kOp>
__global__ void pipe_kernel(float* out, long long* cycles, int iters) {
  float v[kChains];
#pragma unroll
  for (int j = 0; j < kChains; ++j) v[j] = 0.001f * (threadIdx.x + j);
  __syncthreads();
  const long long t0 = clock64();
  for (int i = 0; i < iters; ++i) {
#pragma unroll
    for (int j = 0; j < kChains; ++j) {
      const float y = v[(j + 1) % kChains];  // a value that changes, as an epilogue's does
      if constexpr (kOp == 0) ex2(v[j]);
      if constexpr (kOp == 1) cvt_bf16x2(v[j], y);
      if constexpr (kOp == 2) { ex2(v[j]); cvt_bf16x2(v[j], y); }
      if constexpr (kOp == 3) rcp(v[j]);
      if constexpr (kOp == 4) cvt_f16x2(v[j], y);
      if constexpr (kOp == 5) int_bf16x2(v[j], y);
      if constexpr (kOp == 6) fmul(v[j], y);
      if constexpr (kOp == 7) shfl(v[j]);
      if constexpr (kOp == 8) { shfl(v[j]); ex2(v[j]); }
      if constexpr (kOp == 9) ex2_bf16x2(v[j]);
      if constexpr (kOp == 10) { ex2(v[j]); int_bf16x2(v[j], y); }
      if constexpr (kOp == 11) { ex2(v[j]); fmul(v[j], y); }
    }
  }
  __syncthreads();
  const long long t1 = clock64();
  float s = 0;
#pragma unroll
  for (int j = 0; j < kChains; ++j) s += v[j];
  out[threadIdx.x] = s;
  if (threadIdx.x == 0) *cycles = t1 - t0;
}

template <int kOp>
void run(const char* name, int threads, float* out, long long* cyc) {
  const int iters = 4096;
  pipe_kernel<kOp><<<1, threads>>>(out, cyc, iters / 16);  // warm-up
  pipe_kernel<kOp><<<1, threads>>>(out, cyc, iters);
  long long c = 0;
  cudaMemcpy(&c, cyc, sizeof c, cudaMemcpyDeviceToHost);
  const double warps_per_scheduler = threads / 32 / 4.0;
  const double per = double(c) / (double(iters) * kChains * warps_per_scheduler);
  std::printf("%-28s %4d threads  %7.2f cycles per warp step per scheduler\n", name, threads, per);
}

}  // namespace

int main() {
  float* out = nullptr;
  long long* cyc = nullptr;
  cudaMalloc(&out, 1024 * sizeof(float));
  cudaMalloc(&cyc, sizeof(long long));
  cudaDeviceProp p{};
  cudaGetDeviceProperties(&p, 0);
  std::printf("device: %s\n", p.name);
  for (int threads : {256, 512}) {
    run<0>("ex2.approx.f32", threads, out, cyc);
    run<3>("rcp.approx.f32", threads, out, cyc);
    run<1>("cvt.rn.bf16x2.f32", threads, out, cyc);
    run<4>("cvt.rn.f16x2.f32", threads, out, cyc);
    run<2>("ex2 + cvt.bf16x2", threads, out, cyc);
    run<5>("integer bf16 (4 ops)", threads, out, cyc);
    run<10>("ex2 + integer bf16", threads, out, cyc);
    run<6>("fmul", threads, out, cyc);
    run<11>("ex2 + fmul", threads, out, cyc);
    run<7>("shfl.bfly", threads, out, cyc);
    run<8>("shfl + ex2", threads, out, cyc);
    run<9>("ex2.approx.bf16x2", threads, out, cyc);
  }
  const cudaError_t e = cudaDeviceSynchronize();
  if (e != cudaSuccess) {
    std::printf("error: %s\n", cudaGetErrorString(e));
    return 1;
  }
  return 0;
}
