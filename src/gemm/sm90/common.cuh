// What the Hopper kernel's roles share: tile and thread constants, named
// barriers, register budgets, how an operand's stage arrives, and the
// 128-byte swizzle of the stages (kernel.cuh has the pipeline contract).
#pragma once

#include <cstdint>

#include "arch/sm90.cuh"
#include "gemm/common/operand.cuh"
#include "gemm/common/scheduler.cuh"

namespace sonicmoe::gemm::sm90 {

namespace hw = arch::sm90;

inline constexpr int kBM = 128, kBK = 64;
inline constexpr int kThreads = 384;
// Named barriers (0 is __syncthreads'): consumer warpgroup w's epilogue
// barrier (128 threads each); ping-pong: the barrier on which warpgroup w
// waits for the other's mainloop to end (256: 128 arrive, 128 wait). (2 is
// free: the grouped-K producer's per-chunk barrier became a __syncwarp.)
enum NamedBarrier : int {
  kEpilogueBarrier0 = 1,
  kEpilogueBarrier1 = 3,
  kOrderBarrier0 = 4,
  kOrderBarrier1 = 5,
};
// This consumer thread's warpgroup (0 or 1), read from lane 0: the same
// value as (threadIdx.x - 128) >> 7, but now the compiler knows it is
// warp-uniform, so a branch on it keeps the code after it on the uniform
// datapath, without WARPSYNC / ENDCOLLECTIVE around every shuffle
// (docs/NOTES.md, "A branch on a threadIdx-derived value").
__device__ __forceinline__ int consumer_wg() {
  return __shfl_sync(0xffffffffu, (static_cast<int>(threadIdx.x) - 128) >> 7, 0);
}
__device__ __forceinline__ int epilogue_barrier(int wg) {
  return wg == 0 ? kEpilogueBarrier0 : kEpilogueBarrier1;
}
__device__ __forceinline__ int order_barrier(int wg) {
  static_assert(kOrderBarrier1 == kOrderBarrier0 + 1);
  return kOrderBarrier0 + wg;
}
// The tile ring (grouped-M kernels): the producer looks each tile up and
// publishes it in shared memory, kTileRing slots deep, so that the
// consumers read a tile's position from there instead of repeating the
// lookup's dependent global loads at the start of every tile while the
// tensor cores wait (700-1400 cycles a tile in the tile trace, H200).
// Slot k % kTileRing holds the CTA's k-th tile; tile_full[slot] completes
// on the producer's thread 0 arrive (1 arrival, after its store); the
// phase of tile k is (k / kTileRing) & 1. The stages keep the producer
// close enough behind the consumers that a slot is always free again when
// it comes round (Kernel's static_assert), yet each consumer thread gives
// it back on tile_empty[slot] after its last read (kSlotReaders arrivals)
// and the producer looks at that phase once before its store: a look that
// always finds it complete, but that orders every reader's loads before
// the store where racecheck can see it (docs/NOTES.md). Grouped-K kernels
// keep their own lookup: their cheaper one (two loads) did not pay for a
// ring.
inline constexpr int kTileRing = 16;
inline constexpr int kSlotReaders = 256;  // both consumer warpgroups read every tile

// Registers per thread of each role (setmaxnreg): ptxas's cap for each
// role's code. Grouped-K producers publish row addresses and copy with them
// (96); grouped-M consumers run the heavy epilogues (dH with GeGLU is the
// largest: 224, 232 in ping-pong, whose producer then fits 40).
template <Grouping G, bool kPingPong>
inline constexpr int kProducerRegs = G == Grouping::K ? 96 : kPingPong ? 40 : 56;
template <Grouping G, bool kPingPong>
inline constexpr int kConsumerRegs = G == Grouping::K ? 200 : kPingPong ? 232 : 224;
// What setmaxnreg redistributes is the CTA's allocation at launch, 168
// registers x 384 threads (65536 / 384, rounded down to a multiple of 8),
// not the 65536 of the register file: a setmaxnreg.inc asking for more than
// the decreases freed waits forever (docs/NOTES.md).
inline constexpr int kRegisterPool = 65536 / kThreads / 8 * 8 * kThreads;
static_assert(kRegisterPool == 168 * 384);
template <Grouping G, bool kPingPong>
inline constexpr bool kRegsFit =
    kProducerRegs<G, kPingPong> * 128 + kConsumerRegs<G, kPingPong> * 256 <= kRegisterPool;
static_assert(kRegsFit<Grouping::K, false> && kRegsFit<Grouping::M, false> &&
              kRegsFit<Grouping::M, true>);

// How an operand's stage arrives in shared memory.
enum class Src {
  Tma,   // a TMA box: weights, or rows that need no masking at an expert edge
  Copy,  // cp.async by the producer warpgroup: gathered or expert-bounded rows
};

struct GemmArgs {
  Operand a, b;
  Schedule schedule;
};

// Shared memory of one stage of one operand: 128 (or kBN) rows x 64 k
// (K-major) or 64 k-rows x 128 columns in two 64-column blocks (MN-major).
template <int kRows>
inline constexpr int kKMajorBytes = kRows* kBK * 2;
inline constexpr int kMNBlockBytes = 64 * 128;  // 64 rows x 128 bytes

__device__ __forceinline__ uint32_t swz(int row, int chunk) {
  return static_cast<uint32_t>(row * 128 + ((chunk ^ (row & 7)) << 4));
}

}  // namespace sonicmoe::gemm::sm90
