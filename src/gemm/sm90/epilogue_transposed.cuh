// The Hopper grouped-K epilogue that stores its tile transposed: out[n][m].
//
// dW1 is computed as dW1^T = X^T dH (M = d, the gathered X, by cp.async on
// the tile's 128-row side; N = 2n, dH, by TMA on its 256-column side), the
// shape dW2 already runs at, so that the gathered operand stays 128 wide
// and each consumer warpgroup issues one m64n256 wgmma per k16 instead of
// two m64n128 (docs/NOTES.md). W1 is stored [2n][d], so the tile goes out
// transposed: each warp writes its fragments with stmatrix.trans into a
// swizzled buffer of the warpgroup's own ([64 columns][64 rows] bf16 per
// round), then every thread copies 16-byte pieces of it, 8 consecutive m
// of one n, to global memory: a warp's 32 pieces are 4 column pieces of
// 128 bytes (whole lines when d is a multiple of 64).
// tools/sm90_transposed_store_model.py transcribes these addresses and
// checks them on the host (CTest transposed_store_model): keep it in step.
#pragma once

#include "arch/sm80.cuh"
#include "arch/sm90.cuh"
#include "gemm/common/epilogue.cuh"
#include "gemm/sm90/kernel.cuh"

namespace sonicmoe::gemm::sm90 {

struct TransposedStoreEpilogue : NoPrefetch {
  struct Params {
    bf16_t* out;            // expert e's [N][M] at out + e * expert_stride
    int64_t ld;             // M
    int64_t expert_stride;  // M * N
  };
  static constexpr int kRoundCols = 64;  // tile columns per round
  template <int kBM, int kThreads>
  static constexpr int smem_bytes() {
    return kRoundCols * (kBM / 2) * 2;  // one warpgroup's 64 rows
  }

  // Byte offset of 16-byte piece q (tile rows 8 q ..) of round column c:
  // rows of 128 bytes swizzled as the stages are (swz), so that the 8
  // addresses of one stmatrix matrix (8 consecutive c) fall in 8 different
  // bank groups.
  __device__ static uint32_t piece(int c, int q) { return swz(c, q); }

  template <int kBM, int kBN, class F>
  __device__ static void apply(const Params& p, const Schedule& s, const Tile& t, F& f,
                               char* smem) {
    static_assert(F::kRows == 64 && kBN % kRoundCols == 0, "one m64 sub-tile per warpgroup");
    const uint32_t buf = arch::smem_addr(smem);
    const int lane = f.thread() & 31, warp = f.thread() >> 5;
    // The tile's corner, offsets from it in 32 bits (a tile spans 256
    // columns of ld <= 2^20 elements: api.cpp).
    bf16_t* out = tile_base<F>(p.out + t.expert * p.expert_stride + t.n0 * p.ld + t.m0);
    const int ld = static_cast<int>(p.ld);
    const int cols = static_cast<int>(min(s.N - t.n0, int64_t{kBN}));
    static_for<kBN / kRoundCols>([&](auto round) {
      constexpr int r = decltype(round)::value;
      if (r > 0) f.sync();  // the previous round's pieces are read
      // Chunk (g, h): 32-column block g, row half h. Its 4 column pairs are
      // the fragments of four 8 x 8 matrices (column groups 4 g + m, rows
      // 16 warp + 8 h ..); transposed, matrix m's row i is tile column
      // 32 g + 8 m + i, whose address lane 8 m + i gives.
      static_for<kRoundCols / 16>([&](auto u) {
        constexpr int g = r * (kRoundCols / 32) + decltype(u)::value / 2;
        constexpr int h = decltype(u)::value % 2;
        float2 pr[4];
        f.template chunk_pairs<g * 2 + h>(pr);
        const int c = (g % (kRoundCols / 32)) * 32 + lane;
        arch::sm90::stmatrix_x4_trans(
            buf + piece(c, 2 * warp + h), arch::pack_bf16x2(pr[0].x, pr[0].y),
            arch::pack_bf16x2(pr[1].x, pr[1].y), arch::pack_bf16x2(pr[2].x, pr[2].y),
            arch::pack_bf16x2(pr[3].x, pr[3].y));
      });
      f.sync();
#pragma unroll
      for (int i = 0; i < kRoundCols * 8 / F::kThreads; ++i) {
        const int k = f.thread() + i * F::kThreads, c = k >> 3, q = k & 7;
        const uint4 v = arch::lds_128(buf + piece(c, q));
        const int col = r * kRoundCols + c;      // of the tile
        const int row = f.first_row() + 8 * q;  // M is a multiple of 8: whole pieces
        if (col < cols && row < t.rows)
          arch::stg_128(out + static_cast<uint32_t>(col * ld + row), v);
      }
    });
  }
};

}  // namespace sonicmoe::gemm::sm90
