// Shared-memory tiles of the portable engine and the fragment loads that read
// them for mma.sync.
//
// Every operand tile is stored as blocks of [rows][64] bf16: 128-byte rows
// whose 16-byte chunk c sits at chunk c ^ (row % 8). An 8x8 ldmatrix read
// (8 rows, one chunk column) then touches 8 distinct bank groups: no
// conflicts, for K-major reads and for transposed (MN-major) reads alike.
// It is also the 128-byte swizzle of Hopper's TMA/wgmma, so the Hopper
// engine can share the loaders' gathered-row path.
//
// A tile spans S = 128 or 256 rows or columns (A: the kernel's kBM; B: its
// kBN) by kBK = 64 k:
//   K-major operand  (A: [M][K], B: [N][K]):  one block of S rows x 64 k.
//   MN-major operand (A: [K][M], B: [K][N]):  S / 64 blocks of 64 k-rows x 64.
// Either way one stage of one operand is S x 64 x 2 bytes: 16 or 32 KiB.
#pragma once

#include <cstdint>

#include "arch/sm80.cuh"
#include "gemm/common/operand.cuh"

namespace sonicmoe::gemm::sm80 {

// The M and N tiles (kBM, kBN) are kernel parameters; the K tile is fixed.
inline constexpr int kBK = 64;
inline constexpr int kThreads = 256;  // 8 warps
inline constexpr int kWarpM = 64;     // every warp holds 64 rows: 4 m16 tiles
// The M tile of the grouped-M products: the routing's tile_offsets count
// their tiles in it (Engine::m_tile), so it is not a per-product choice.
inline constexpr int kGroupedMTile = 128;
template <int kSpan>
inline constexpr int kOperandBytes = kSpan * kBK * 2;  // one operand, one stage

// How the 8 warps split a kBM x kBN tile: kBM / 64 along M, the rest along N.
//   128 x 128: 2 x 4 warps of 64 x 32      128 x 256: 2 x 4 warps of 64 x 64
//   256 x 128: 4 x 2 warps of 64 x 64
// Warp w holds rows m0(w) .. m0(w) + 63 and columns n0(w) .. n0(w) + kWarpN - 1.
template <int kBM, int kBN>
struct WarpGrid {
  static constexpr int kWarpsM = kBM / kWarpM;
  static constexpr int kWarpsN = kThreads / 32 / kWarpsM;
  static constexpr int kWarpN = kBN / kWarpsN;
  static constexpr int kNT = kWarpN / 8;  // n8 tiles per warp
  static_assert(kBM % kWarpM == 0 && kWarpsM * kWarpsN * 32 == kThreads);
  static_assert(kWarpN == 32 || kWarpN == 64, "B fragments are loaded in 16-column pairs, and "
                                              "chunk8 groups are 32 columns wide");

  __device__ static int m0(int warp) { return (warp / kWarpsN) * kWarpM; }
  __device__ static int n0(int warp) { return (warp % kWarpsN) * kWarpN; }
};

__device__ __forceinline__ uint32_t swz(int row, int chunk) {
  return static_cast<uint32_t>(row * 128 + ((chunk ^ (row & 7)) << 4));
}

// Address of element (k-row krow, col c) of an MN-major tile split into
// 64-column blocks of 64 rows (any width: block c / 64).
__device__ __forceinline__ uint32_t mn_addr(uint32_t base, int krow, int col) {
  return base + (col >> 6) * (64 * 128) + swz(krow, (col & 63) >> 3);
}

// A fragment (16 x 16 at rows m_off, k-step kk) for mma.m16n8k16.
template <Major M>
__device__ __forceinline__ void load_a_frag(uint32_t (&a)[4], uint32_t base, int m_off, int kk,
                                            int lane) {
  if constexpr (M == Major::K) {
    const int row = m_off + (lane & 15);
    arch::ldmatrix_x4(a, base + swz(row, kk * 2 + (lane >> 4)));
  } else {
    const int q = lane >> 3, r = lane & 7;
    const int krow = kk * 16 + (q >> 1) * 8 + r;
    arch::ldmatrix_x4_trans(a, mn_addr(base, krow, m_off + (q & 1) * 8));
  }
}

// B fragments of two adjacent n8 tiles (n_off, n_off + 8) at k-step kk:
// b[0..1] for the first, b[2..3] for the second.
template <Major M>
__device__ __forceinline__ void load_b_frag2(uint32_t (&b)[4], uint32_t base, int n_off, int kk,
                                             int lane) {
  const int q = lane >> 3, r = lane & 7;
  if constexpr (M == Major::K) {
    const int row = n_off + (q >> 1) * 8 + r;
    arch::ldmatrix_x4(b, base + swz(row, kk * 2 + (q & 1)));
  } else {
    const int krow = kk * 16 + (q & 1) * 8 + r;
    arch::ldmatrix_x4_trans(b, mn_addr(base, krow, n_off + (q >> 1) * 8));
  }
}

}  // namespace sonicmoe::gemm::sm80
