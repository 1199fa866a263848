// A host-side bfloat16 storage type with the conversions the library uses:
// float -> bf16 rounds to nearest, ties to even (as __float2bfloat16 does on
// the GPU), NaN stays NaN. Arithmetic is done in float by the caller.
#pragma once

#include <bit>
#include <cstdint>

namespace sonicmoe {

struct bf16 {
  uint16_t bits = 0;

  bf16() = default;
  explicit bf16(float f) : bits(from_float(f)) {}
  explicit operator float() const { return std::bit_cast<float>(uint32_t{bits} << 16); }

  static uint16_t from_float(float f) {
    uint32_t u = std::bit_cast<uint32_t>(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<uint16_t>(u >> 16);
  }
};

static_assert(sizeof(bf16) == 2);

inline float to_float(bf16 v) { return static_cast<float>(v); }
inline float to_float(float v) { return v; }
inline double to_float(double v) { return v; }

// float rounded through bf16 and back: what storing a value as bf16 does to it.
inline float round_bf16(float f) { return static_cast<float>(bf16(f)); }

}  // namespace sonicmoe
