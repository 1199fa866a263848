// The two pieces of token rounding that the CPU reference and the GPU kernels
// must compute bit for bit alike: each expert's target count and the order
// key of a score. Host and device.
#pragma once

#include <cstdint>
#include <cstring>

#include <sonicmoe/sonicmoe.hpp>

#if defined(__CUDACC__)
#define SONICMOE_HD __host__ __device__ __forceinline__
#else
#define SONICMOE_HD inline
#endif

namespace sonicmoe::detail {

// count rounded to a multiple of tile, capped at the T tokens there are.
// Nearest: ties (an exact half tile) go to the even multiple.
SONICMOE_HD int64_t rounded_count(int64_t count, int64_t tile, TokenRounding mode,
                                  int64_t num_tokens) {
  const int64_t down = count / tile * tile, rem = count - down;
  int64_t r = down;
  if (mode == TokenRounding::Up) {
    r = rem > 0 ? down + tile : down;
  } else if (mode == TokenRounding::Nearest) {
    const bool odd = (count / tile) % 2 != 0;
    if (2 * rem > tile || (2 * rem == tile && odd)) r = down + tile;
  }
  return r < num_tokens ? r : num_tokens;
}

// Scores are probabilities: for a non-negative float the bit pattern orders
// like the value. NaN and negative scores (never produced by the router)
// rank with 0, so the order stays total and the same on host and device.
SONICMOE_HD uint32_t score_key(float s) {
  uint32_t u;
#if defined(__CUDA_ARCH__)
  u = __float_as_uint(s);
#else
  std::memcpy(&u, &s, sizeof u);
#endif
  return (u & 0x80000000u) || u > 0x7f800000u ? 0u : u;
}

}  // namespace sonicmoe::detail

#undef SONICMOE_HD
