// The plain-store epilogue policy of down_proj, dX~ and dW2 (the interface: epilogue.cuh).
#pragma once

#include <cstdint>

#include "arch/sm80.cuh"
#include "gemm/common/epilogue.cuh"

namespace sonicmoe::gemm {

// out[row][col] = acc (+ bias[col]) as bf16. Grouping::M: row = position
// (Y, dX~). Grouping::K: row = M index of expert e's matrix (dW1, dW2).
struct StoreEpilogue : NoPrefetch {
  struct Params {
    bf16_t* out;
    int64_t ld;
    int64_t expert_stride;  // Grouping::K: M * N; Grouping::M: 0
    const bf16_t* bias;     // [E][N] or null
  };
  template <int kBM, int kThreads>
  static constexpr int smem_bytes() {
    return 0;
  }

  template <int kBM, int kBN, class F>
  __device__ static void apply(const Params& p, const Schedule& s, const Tile& t, F& f, char*) {
    // The tile's first row; offsets from it in 32 bits (a tile's rows span
    // less than 2^31 elements: d, n <= 2^20, api.cpp).
    bf16_t* out = tile_base<F>(p.out + t.expert * p.expert_stride + t.m0 * p.ld);
    const bf16_t* bias = p.bias ? p.bias + t.expert * s.N : nullptr;
    const int N = static_cast<int>(s.N), ld = static_cast<int>(p.ld);
    if (bias) {
      f.for_each_chunk8([&](auto, int, int r, int c, float(&v)[8]) {
        const int col = static_cast<int>(t.n0) + c;
        if (r >= t.rows || col >= N) return;  // N is a multiple of 8: whole chunks
        add_bias8(v, bias + col);
        arch::stg_128(out + static_cast<uint32_t>(r * ld + col), pack8(v));
      });
    } else {
      f.for_each_chunk8_bf16([&](auto, int, int r, int c, uint4 v) {
        const int col = static_cast<int>(t.n0) + c;
        if (r >= t.rows || col >= N) return;
        arch::stg_128(out + static_cast<uint32_t>(r * ld + col), v);
      });
    }
  }
};

}  // namespace sonicmoe::gemm
