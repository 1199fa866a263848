// Counter-based random inputs: element i of a tensor is a pure function of
// (seed, field, i). The GPU generates even dsv3-685b's 7.5e9 weights in place
// from it (host generation plus upload would take minutes), the CPU path runs
// the same code, and no generator state has to be shared between threads.
//
// Compiled by both g++ and nvcc. The host and the device may differ in the
// last bit of logf/cosf, so the two paths' inputs are alike, not equal; each
// check reads back the exact inputs the library saw.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define SMB_HOST_DEVICE __host__ __device__
#else
#define SMB_HOST_DEVICE
#endif

namespace sonicmoe::bench {

// One independent stream per tensor, so that changing one tensor's size
// leaves the others' values alone.
enum class Field : uint32_t {
  X = 1,
  W1,
  B1,
  W2,
  B2,
  Dout,
  Logits,
  ExpertBias,
  DenseA,
  DenseB1,
  DenseA2,
  DenseB2,
  // --kernels: the layer's intermediates (H, A, Y, dH, A', dX~), filled once
  // so that no timed kernel ever reads the NaN poison of a fresh buffer.
  Scratch,
};

// BENCHMARK.md: x ~ N(0,1), weights ~ N(0, 0.02). Biases are larger than the
// weights (as in testing/harness.cpp) so that a bias bug shows in the error.
inline constexpr float kWeightStd = 0.02f;
inline constexpr float kBiasStd = 0.1f;
// Router logits: N(0,1) per (token, expert) plus a per-expert offset ~
// N(0, sigma) standing in for a trained router's preferences, so that expert
// loads are uneven as in real training and not uniform. sigma is
// --expert-bias-std, default 0.5: on 7b-n256 the expert loads then range
// from ~0.01x to ~5x the mean. A true router (x @ Wr^T) would need a dense
// product of its own and gives nearly uniform loads with a random Wr.

SMB_HOST_DEVICE inline uint64_t mix64(uint64_t z) {  // splitmix64's finalizer
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// N(0, 1) by Box-Muller on two 24-bit uniforms of one 64-bit hash.
SMB_HOST_DEVICE inline float normal_at(uint64_t seed, Field field, uint64_t i) {
  const uint64_t h = mix64(mix64(seed ^ (uint64_t(field) << 56)) + i * 0x9e3779b97f4a7c15ull);
  const float u1 = (float((h >> 40) & 0xffffffu) + 1.0f) * (1.0f / 16777216.0f);  // (0, 1]
  const float u2 = float((h >> 16) & 0xffffffu) * (1.0f / 16777216.0f);           // [0, 1)
  return sqrtf(-2.0f * logf(u1)) * cosf(6.28318530718f * u2);
}

SMB_HOST_DEVICE inline float logit_at(uint64_t seed, uint64_t i, int64_t num_experts,
                                      float expert_bias_std) {
  return normal_at(seed, Field::Logits, i) +
         expert_bias_std * normal_at(seed, Field::ExpertBias, i % uint64_t(num_experts));
}

}  // namespace sonicmoe::bench
