// The Hopper grouped GEMM: warp-specialized, persistent, TMA + cp.async
// loads into 128-byte swizzled stages, wgmma from shared memory.
//
// Pipeline contract (one CTA, 384 threads = 3 warpgroups):
// - WG0, the producer (setmaxnreg down to kProducerRegs). For every stage:
//   wait empty[s]; thread 0 posts the stage's TMA bytes on full[s]
//   (expect_tx) and issues the TMA copies (weights; contiguous rows); all
//   128 threads issue the cp.async copies of gathered or expert-bounded rows
//   and arrive on full[s] through cp.async.mbarrier.arrive.noinc, which
//   fires when their copies have landed. full[s] expects 128 arrivals (plus
//   the TMA bytes) when the tile has cp.async operands, else 1 (thread 0's
//   arrive.expect_tx). With no cp.async operand warps 1-3 leave at once:
//   only a wait that a barrier also counts keeps a warp within a phase,
//   and a parity wait cannot tell phase p from p + 2. Grouped-K copies
//   take their rows' addresses from shared memory, published 4 stages at a
//   time one chunk ahead, each warp the rows it copies, behind a
//   __syncwarp (produce_k).
// - WG1 and WG2, the consumers (setmaxnreg up to kConsumerRegs), split the
//   kTileM-row tile: WG w owns rows w kTileM/2 .. as kSub = kTileM/128 m64
//   sub-tiles, and all kBN columns. For every
//   stage: wait full[s] (parity = round & 1), fence.proxy.async (cp.async
//   wrote through the generic proxy, wgmma reads through the async proxy),
//   4 wgmma k16 steps, commit; once the next stage's group is issued, wait
//   until one group is in flight and release the previous stage: thread 0
//   of each consumer WG arrives on empty[s], which expects 2 arrivals.
// - The tile ring (common.cuh; grouped-M kernels): thread 0 of the
//   producer publishes each tile's position (its Tile) before issuing the
//   tile's stages; the consumers read it from there, and every consumer
//   thread gives the slot back (tile_empty) after its last read. Grouped-K
//   consumers look their tiles up themselves.
// - Stage index and phase run on across tiles: producer and consumers walk
//   the same persistent tile list, so the producer fills the next tile's
//   stages while the consumers run the epilogue.
// - Epilogue (common/epilogue.cuh through FragView): each consumer
//   warpgroup runs its own on the rows it holds, synchronising its 128
//   threads on named barrier epilogue_barrier(wg) only, in shared memory of
//   its own. The warpgroups of a cooperative tile are tied by the stages
//   alone.
// - Deferred stores (cooperative only; epilogues with kDeferredChunks, the
//   up-projection's H): the epilogue leaves those stores in registers, and
//   the next tile's first kDrainStages stages issue them, a few per stage
//   between the stage's wgmma commit and its wait, so that they drain while
//   the tensor cores work. The last tile's go out after its epilogue. They
//   touch no shared memory and no barrier.
// - 2-CTA clusters (kCluster = 2): both CTAs of a pair walk the same
//   scheduled ids (tile_of over clusters) and take the two halves of a
//   double tile (Pair), so their stage sequences match one for one. The
//   shared TMA operand's boxes are split between them, each multicast to
//   both; full[s] still expects the whole stage's bytes. A stage is
//   rewritten only when the consumers of both CTAs are done with it:
//   empty[s] expects 2 x 2 arrivals, each consumer warpgroup arriving on its
//   own CTA's and (mapa) on the other's. A cluster barrier after the
//   barriers' initialisation and another before exit keep either CTA from
//   touching the other's barriers before they exist or after it left.
// - Ping-pong (kPingPong): each consumer warpgroup owns whole tiles instead,
//   the CTA's even tiles for WG1 and odd ones for WG2. The producer still
//   fills stages in tile order, so a tile's stages are consumed by one
//   warpgroup (empty[s] expects 1 arrival) and the other skips them in its
//   stage count; while one warpgroup runs its epilogue the other's MMAs
//   keep the tensor cores busy. Each warpgroup has its own epilogue barrier
//   (epilogue_barrier) and shared memory. The mainloops run strictly in
//   tile order (order_barrier: tile k's waits for tile k-1's to end): a
//   warpgroup that skipped the other's tile must not wait on a stage's full
//   barrier before that stage's earlier phases completed, since a parity
//   wait cannot tell phase p from p + 2.
//
// Files: common.cuh (what the roles share), producer.cuh (WG0, the
// loader), consumer.cuh (WG1 and WG2, the mainloop and the epilogue
// policy's calls), trace.cuh (per-tile timestamps of both, in diagnostic
// builds only); this one, the configuration (Kernel) and the kernel that
// assigns the roles.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "arch/sm90.cuh"
#include "gemm/common/epilogue.cuh"
#include "gemm/common/operand.cuh"
#include "gemm/common/scheduler.cuh"
#include "gemm/sm90/common.cuh"
#include "gemm/sm90/consumer.cuh"
#include "gemm/sm90/producer.cuh"

namespace sonicmoe::gemm::sm90 {

// kTileM: rows of a tile, 128 or 256 (grouped-K; no product uses 256 since
// dW1 runs transposed on 128 x 256 tiles); each consumer warpgroup owns
// kTileM / 2 rows as kSub m64 sub-tiles.
template <Grouping G, Major MA, Src SA, Major MB, Src SB, int kBN, int kStages, class Epi,
          int kTileM = kBM, bool kPingPong = false, int kCluster = 1>
struct Kernel {
  // The template arguments, for the roles (Producer, Consumer).
  static constexpr Grouping kG = G;
  static constexpr Major kMA = MA, kMB = MB;
  static constexpr Src kSA = SA, kSB = SB;
  static constexpr int kTileN = kBN, kRows = kTileM;
  static constexpr bool kPingPongTiles = kPingPong;
  using Epilogue = Epi;
  // m64 sub-tiles per consumer warpgroup: half the tile's rows, or all.
  static constexpr int kSub = kPingPong ? kTileM / 64 : kTileM / 128;
  static constexpr int kConsumersPerStage = kPingPong ? 1 : 2;  // per CTA
  static_assert(kTileM == 128 || kTileM == 256);
  static_assert(G == Grouping::K || kTileM == 128, "gathered K-major rows: one per producer thread");
  static_assert(G == Grouping::M ? MA == Major::K : (MA == Major::MN && MB == Major::MN),
                "grouped-M products read A by rows; grouped-K products read both operands "
                "along the expert's rows");
  // A grouped-K tile's last k-rows may run past its expert's edge. TMA
  // cannot mask them, so one operand must come by cp.async, which zero-fills
  // them: the other operand's rows there (the next expert's, finite) then
  // meet zeros.
  static_assert(G == Grouping::M || SA == Src::Copy || SB == Src::Copy,
                "a grouped-K product needs one cp.async operand to mask the expert edge");
  using EpiParams = typename Epi::Params;
  static constexpr int kNumStages = kStages;
  static constexpr bool kTmaA = SA == Src::Tma, kTmaB = SB == Src::Tma;
  // 2-CTA clusters: the two CTAs share one TMA operand, each loading half of
  // its boxes and multicasting them to both. Grouped-M pairs share B (the
  // expert's weights) and split M; grouped-K pairs share their TMA operand
  // and split the other's side.
  static constexpr int kClusterSize = kCluster;
  static_assert(kCluster == 1 || kCluster == 2);
  static_assert(kCluster == 1 || !kPingPong, "ping-pong runs without clusters");
  static constexpr bool kMcastA = kCluster == 2 && G == Grouping::K && SA == Src::Tma;
  static constexpr bool kMcastB = kCluster == 2 && !kMcastA && SB == Src::Tma;
  static_assert(kCluster == 1 || kMcastA || kMcastB);
  static constexpr Pair kPair = kMcastA ? Pair::N : kMcastB ? Pair::M : Pair::None;
  using Sched = Scheduler<G, kTileM, kBN, kPair>;
  __device__ static Sched scheduler(const Schedule& s) {
    if constexpr (kCluster > 1) return Sched{s, static_cast<int>(hw::cluster_rank())};
    else return Sched{s};
  }
  static constexpr int kProducerRegsN = kProducerRegs<G, kPingPong>,
                       kConsumerRegsN = kConsumerRegs<G, kPingPong>;

  static constexpr int kABytes =
      MA == Major::K ? kKMajorBytes<kTileM> : (kTileM / 64) * kMNBlockBytes;
  static constexpr int kBBytes = MB == Major::K ? kKMajorBytes<kBN> : (kBN / 64) * kMNBlockBytes;
  static constexpr int kStageBytes = kABytes + kBBytes;
  static constexpr bool kAnyCopy = SA == Src::Copy || SB == Src::Copy;
  static constexpr uint32_t kTmaBytes =
      (SA == Src::Tma ? kABytes : 0) + (SB == Src::Tma ? kBBytes : 0);
  // The tile ring (common.cuh), grouped-M only. The producer's look at
  // tile k's slot always finds it free: it has issued tile k - 1's last
  // stage, so the consumers have released the stage kStages before that
  // one, which lies at worst in tile k - kStages - 1 (every grouped-M tile
  // has a stage or more: K > 0). Cooperative consumers may still run that
  // tile's epilogue; in ping-pong the other warpgroup may still run that of
  // tile k - kStages - 2, but not of an earlier one (its mainloops run in
  // tile order). Older slots, tile k - kTileRing's among them, are free.
  static constexpr bool kTileRingOn = G == Grouping::M;
  static_assert(!kTileRingOn || kTileRing >= kStages + 3, "tile ring shallower than the stages");
  // One region per consumer warpgroup (FragView: 128 threads each).
  static constexpr int kEpiBytes = Epi::template smem_bytes<kTileM, 128>() * 2;
  static constexpr int kSmemBytes = 1024 /* alignment slack */ + kStages * kStageBytes + kEpiBytes +
                                    2 * kStages * 8 /* barriers */ +
                                    (kTileRingOn ? kTileRing * (16 + sizeof(Tile)) : 0) +
                                    // grouped-K row addresses: 2 x 2 x 256 x 8
                                    (G == Grouping::K ? 8192 : 0);
  static_assert(kStageBytes % 1024 == 0, "swizzled tiles must stay 1024-byte aligned");
  static_assert(kSmemBytes <= 227 * 1024, "shared memory of one CTA");
  static_assert(MB == Major::K || kBN % 64 == 0);

  struct Smem {
    char* stages;
    char* epi;
    uint64_t* full;
    uint64_t* empty;
    uint64_t* rows;  // grouped-K: [buffer][operand][kChunkRows] published row addresses
    uint64_t* tile_full;   // [kTileRing] (kTileRingOn)
    uint64_t* tile_empty;  // [kTileRing] (kTileRingOn)
    Tile* tiles;           // [kTileRing] (kTileRingOn)
  };

  __device__ static Smem carve(char* raw) {
    // An offset from raw, not a pointer rebuilt from an integer: the
    // compiler then still knows every pointer below is shared memory and
    // uses ld/st.shared instead of generic accesses (the dH epilogue's
    // scores were generic loads on the long scoreboard: docs/NOTES.md).
    char* base = raw + ((1024u - (arch::smem_addr(raw) & 1023u)) & 1023u);
    Smem s;
    s.stages = base;
    s.epi = base + kStages * kStageBytes;
    s.full = reinterpret_cast<uint64_t*>(s.epi + kEpiBytes);
    s.empty = s.full + kStages;
    s.rows = s.empty + kStages;
    s.tile_full = s.rows + (G == Grouping::K ? 1024 : 0);
    s.tile_empty = s.tile_full + kTileRing;
    s.tiles = reinterpret_cast<Tile*>(s.tile_empty + kTileRing);
    return s;
  }
};

template <class K>
__global__ void __launch_bounds__(kThreads, 1)
    grouped_gemm_kernel(const __grid_constant__ GemmArgs args,
                        const __grid_constant__ CUtensorMap map_a,
                        const __grid_constant__ CUtensorMap map_b,
                        const __grid_constant__ typename K::EpiParams ep) {
  extern __shared__ char smem_raw[];
  const auto sm = K::carve(smem_raw);
  if (threadIdx.x == 0) {
    for (int s = 0; s < K::kNumStages; ++s) {
      hw::mbar_init(sm.full + s, K::kAnyCopy ? 128 : 1);
      hw::mbar_init(sm.empty + s, K::kConsumersPerStage * K::kClusterSize);
    }
    if constexpr (K::kTileRingOn)
      for (int r = 0; r < kTileRing; ++r) {
        hw::mbar_init(sm.tile_full + r, 1);
        hw::mbar_init(sm.tile_empty + r, kSlotReaders);
      }
    hw::fence_barrier_init();
    if (K::kTmaA) hw::prefetch_tensormap(&map_a);
    if (K::kTmaB) hw::prefetch_tensormap(&map_b);
  }
  // The other CTA of a cluster multicasts into this one's stages and
  // arrives on its barriers: all must be initialised first.
  if constexpr (K::kClusterSize > 1) hw::cluster_sync();
  else __syncthreads();
  // One role per warpgroup, one branch each: setmaxnreg needs both.
  if (threadIdx.x < 128) {
    hw::setmaxnreg_dec<K::kProducerRegsN>();
    Producer<K>::produce(args, &map_a, &map_b, sm);
  } else {
    hw::setmaxnreg_inc<K::kConsumerRegsN>();
    Consumer<K>::consume(args, ep, sm);
  }
  // ... and none may exit while the other may still arrive on its barriers.
  if constexpr (K::kClusterSize > 1) hw::cluster_sync();
}

}  // namespace sonicmoe::gemm::sm90
