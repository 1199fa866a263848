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
//   arrive.expect_tx). Grouped-K copies take their rows' addresses from
//   shared memory, published 4 stages at a time one chunk ahead, each warp
//   the rows it copies, behind a __syncwarp (produce_k).
// - WG1 and WG2, the consumers (setmaxnreg up to kConsumerRegs), split the
//   kTileM-row tile: WG w owns rows w kTileM/2 .. as kSub = kTileM/128 m64
//   sub-tiles, and all kBN columns. For every
//   stage: wait full[s] (parity = round & 1), fence.proxy.async (cp.async
//   wrote through the generic proxy, wgmma reads through the async proxy),
//   4 wgmma k16 steps, commit; once the next stage's group is issued, wait
//   until one group is in flight and release the previous stage: thread 0
//   of each consumer WG arrives on empty[s], which expects 2 arrivals.
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
#pragma once

#include <cuda.h>

#include <cstdint>

#include "arch/sm80.cuh"
#include "arch/sm90.cuh"
#include "gemm/common/epilogue.cuh"
#include "gemm/common/operand.cuh"
#include "gemm/common/scheduler.cuh"

namespace sonicmoe::gemm::sm90 {

namespace hw = arch::sm90;

inline constexpr int kBM = 128, kBK = 64;
inline constexpr int kThreads = 384;
// Named barriers (0 is __syncthreads'): consumer warpgroup w's epilogue
// barrier (128 threads each); ping-pong: the barrier on which warpgroup w
// waits for the other's mainloop to end (256: 128 arrive, 128 wait).
__device__ __forceinline__ int epilogue_barrier(int wg) { return wg == 0 ? 1 : 3; }
__device__ __forceinline__ int order_barrier(int wg) { return 4 + wg; }
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

// The accumulator of one consumer warpgroup (kSub x 64 rows x kBN) as the
// shared epilogues see it: per thread 2 row slots per m64, all columns of
// those rows. Each warpgroup runs its epilogue alone (128 threads, its own
// barrier and shared memory), on the rows it holds: cooperative, its half
// of the tile; kOwnTile (ping-pong), the whole tile. Nothing then ties one
// warpgroup's epilogue to the other's: the one that finishes its stores
// first goes on to the next tile's stages (docs/NOTES.md).
template <int kBN, int kSub, bool kOwnTile = false>
struct FragView : ChunkWalks<FragView<kBN, kSub, kOwnTile>> {
  float (&acc)[kSub][kBN / 2];  // kSub m64 sub-tiles of the warpgroup's rows
  static constexpr int kSlots = 2 * kSub, kColGroups = 1, kThreads = 128, kRows = 64 * kSub;

  __device__ int wg() const { return (threadIdx.x - 128) >> 7; }
  __device__ int first_row() const { return kOwnTile ? 0 : wg() * kRows; }
  __device__ int row0(int sub) const {
    return first_row() + sub * 64 + ((threadIdx.x >> 5) & 3) * 16 + ((threadIdx.x & 31) >> 2);
  }
  __device__ int slot_row(int slot) const { return row0(slot >> 1) + (slot & 1) * 8; }
  __device__ int col_group() const { return 0; }
  __device__ int thread() const { return threadIdx.x & 127; }
  __device__ void sync() const { hw::named_sync(epilogue_barrier(wg()), kThreads); }

  // Chunk k: m64 sub-tile i, 32-column group g, row half h, with
  // k = (i * kBN / 32 + g) * 2 + h; lane q of a quad gets columns 32 g + 8 q ..
  static constexpr int kChunks = kSub * kBN / 16;
  // Chunk pair pi: the chunks of the same columns in row halves 0 and 1.
  template <int pi>
  static constexpr int lower_chunk() {
    return 2 * pi;
  }
  template <int pi>
  static constexpr int upper_chunk() {
    return 2 * pi + 1;
  }
  template <int k>
  __device__ int chunk_row() const {
    return row0(k / (kBN / 16)) + (k & 1) * 8;
  }
  template <int k>
  __device__ int chunk_col() const {
    return 32 * ((k >> 1) % (kBN / 32)) + 8 * (threadIdx.x & 3);
  }

  // Chunk k's column pairs as the accumulator holds them (p[j]: 8-column
  // group 4 g + j), and its row slot.
  template <int k>
  __device__ __forceinline__ int chunk_pairs(float2 (&p)[4]) const {
    constexpr int i = k / (kBN / 16), g = (k >> 1) % (kBN / 32), h = k & 1;
#pragma unroll
    for (int j = 0; j < 4; ++j)
      p[j] = float2{acc[i][4 * (4 * g + j) + 2 * h], acc[i][4 * (4 * g + j) + 2 * h + 1]};
    return 2 * i + h;
  }

  template <class Fn>
  __device__ __forceinline__ void for_each_pair(Fn&& fn) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int i = 0; i < kSub; ++i)
#pragma unroll
      for (int j = 0; j < kBN / 8; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h)
          fn(2 * i + h, row0(i) + h * 8, j * 8 + (lane & 3) * 2, acc[i][4 * j + 2 * h],
             acc[i][4 * j + 2 * h + 1]);
  }
};

// kTileM: rows of a tile, 128 or 256 (grouped-K; no product uses 256 since
// dW1 runs transposed on 128 x 256 tiles); each consumer warpgroup owns
// kTileM / 2 rows as kSub m64 sub-tiles.
template <Grouping G, Major MA, Src SA, Major MB, Src SB, int kBN, int kStages, class Epi,
          int kTileM = kBM, bool kPingPong = false, int kCluster = 1>
struct Kernel {
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
  // One region per consumer warpgroup (FragView: 128 threads each).
  static constexpr int kEpiBytes = Epi::template smem_bytes<kTileM, 128>() * 2;
  static constexpr int kSmemBytes = 1024 /* alignment slack */ + kStages * kStageBytes + kEpiBytes +
                                    2 * kStages * 8 /* barriers */ +
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
    return s;
  }

  // ------------------------------------------------------------ producer --
  // Copies are laid out so that 8 consecutive lanes read the 8 chunks of one
  // 128-byte row piece: a warp instruction then touches 4 whole cache lines.
  // (One thread per row, looping over its chunks, touches 32 half-sectors
  // per instruction instead and doubles the L2 traffic: docs/NOTES.md.)

  // K-major A tile by cp.async: rows are fixed for the tile; thread t copies
  // chunk t % 8 of rows t / 8 + 16 i, i < 8, whose row pointers `rows` holds.
  __device__ static void copy_k_major(uint32_t dst, const bf16_t* const (&rows)[8], int valid,
                                      int64_t k0, int64_t k_extent) {
    const int c = threadIdx.x & 7;
    const bool col_ok = k0 + c * 8 < k_extent;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int r = (threadIdx.x >> 3) + 16 * i;
      const bool ok = col_ok && r < valid;
      arch::cp_async_16(dst + swz(r, c), ok ? rows[i] + k0 + c * 8 : rows[0], ok ? 16u : 0u);
    }
  }

  // Issues one stage's TMA boxes (thread 0) after posting their bytes on
  // full[s]. With cp.async operands as well, the barrier's arrivals come
  // from the copies, so the bytes are posted without an arrival. A shared
  // (multicast) operand's boxes are split between the pair: this CTA issues
  // its half to both, the other CTA's half arrives from it; either way the
  // bytes complete on this CTA's full[s], so the posted count is the whole
  // stage's.
  template <bool kMcast>
  __device__ static void box_2d(char* dst, const CUtensorMap* map, uint64_t* full, int c0, int c1) {
    if constexpr (kMcast) hw::tma_load_2d_mc(dst, map, full, c0, c1, 0b11);
    else hw::tma_load_2d(dst, map, full, c0, c1);
  }
  template <bool kMcast>
  __device__ static void box_3d(char* dst, const CUtensorMap* map, uint64_t* full, int c0, int c1,
                                int c2) {
    if constexpr (kMcast) hw::tma_load_3d_mc(dst, map, full, c0, c1, c2, 0b11);
    else hw::tma_load_3d(dst, map, full, c0, c1, c2);
  }
  // The 64-column blocks [first, end) of an MN-major operand of kBlocks
  // blocks that this CTA issues: all, or its rank's half when multicast.
  template <int kBlocks, bool kMcast>
  __device__ static int2 my_blocks() {
    if constexpr (!kMcast) return int2{0, kBlocks};
    static_assert(kBlocks % 2 == 0);
    const int r = static_cast<int>(hw::cluster_rank());
    return int2{r * kBlocks / 2, (r + 1) * kBlocks / 2};
  }

  // A grouped-M weight tile loaded by this CTA alone: the multicast map's
  // boxes (half-height when K-major), all of them, to this CTA only.
  __device__ static void load_b_alone(const Tile& t, int64_t k0, char* stage, uint64_t* full,
                                      const CUtensorMap* map_b) {
    if constexpr (MB == Major::K) {
      constexpr int kBoxRows = kMcastB ? kBN / 2 : kBN;
      for (int r = 0; r < kBN; r += kBoxRows)
        box_3d<false>(stage + kABytes + r * 128, map_b, full, static_cast<int>(k0),
                      static_cast<int>(t.n0) + r, t.expert);
    } else {
      for (int blk = 0; blk < kBN / 64; ++blk)
        box_3d<false>(stage + kABytes + blk * kMNBlockBytes, map_b, full,
                      static_cast<int>(t.n0) + blk * 64, static_cast<int>(k0), t.expert);
    }
  }

  __device__ static void issue_tma(const Tile& t, int64_t k0, char* stage, uint64_t* full,
                                   const CUtensorMap* map_a, const CUtensorMap* map_b) {
    if constexpr (kAnyCopy)
      hw::mbar_expect_tx(full, kTmaBytes);
    else
      hw::mbar_arrive_expect_tx(full, kTmaBytes);
    if constexpr (G == Grouping::K) {
      // Positions k_first + k0 .. as rows of a 2-D map (column, position),
      // one box per 64 columns.
      const int row = static_cast<int>(t.k_first + k0);
      if constexpr (SA == Src::Tma) {
        const int2 bl = my_blocks<kTileM / 64, kMcastA>();
        for (int blk = bl.x; blk < bl.y; ++blk)
          box_2d<kMcastA>(stage + blk * kMNBlockBytes, map_a, full,
                          static_cast<int>(t.m0) + blk * 64, row);
      }
      if constexpr (SB == Src::Tma) {
        const int2 bl = my_blocks<kBN / 64, kMcastB>();
        for (int blk = bl.x; blk < bl.y; ++blk)
          box_2d<kMcastB>(stage + kABytes + blk * kMNBlockBytes, map_b, full,
                          static_cast<int>(t.n0) + blk * 64, row);
      }
    } else {
      if constexpr (SA == Src::Tma)  // contiguous rows [m0, m0 + 128): 2-D map (k, row)
        hw::tma_load_2d(stage, map_a, full, static_cast<int>(k0), static_cast<int>(t.m0));
      if constexpr (SB == Src::Tma) {
        // A pair's odd tiles (Tile::solo) are of different experts: each
        // CTA loads all of its own weight tile, multicasting nothing.
        if (kMcastB && t.solo) {
          load_b_alone(t, k0, stage, full, map_b);
        } else if constexpr (MB == Major::K) {
          // 3-D map (k, n, expert); multicast: half-height boxes
          const int half = kMcastB ? static_cast<int>(hw::cluster_rank()) : 0;
          constexpr int kBoxRows = kMcastB ? kBN / 2 : kBN;
          box_3d<kMcastB>(stage + kABytes + half * kBoxRows * 128, map_b, full,
                          static_cast<int>(k0), static_cast<int>(t.n0) + half * kBoxRows,
                          t.expert);
        } else {  // 3-D map (n, k, expert), one box per 64 columns
          const int2 bl = my_blocks<kBN / 64, kMcastB>();
          for (int blk = bl.x; blk < bl.y; ++blk)
            box_3d<kMcastB>(stage + kABytes + blk * kMNBlockBytes, map_b, full,
                            static_cast<int>(t.n0) + blk * 64, static_cast<int>(k0), t.expert);
        }
      }
    }
  }

  // K-major gathered A rows are fixed for a tile: thread t copies rows
  // t / 8 + 16 i, i < 8. Their gather indices are loaded a tile ahead, all
  // eight at once: resolved one by one where the tile started (a load, a
  // null test and a clamp each), they cost the producer eight dependent L2
  // round trips per tile (ncu: 14% of its samples on the loads' uses,
  // up_proj 7b-n256; removing them left the kernel's time unchanged: the
  // producer mostly waits for free stages). Only the indices are carried
  // across the stage loop, not the next Tile: the producer's registers are
  // few (kProducerRegs). row_pointers repeats operand_row's clamp on
  // indices loaded ahead.
  __device__ static void load_row_indices(const GemmArgs& g, const Tile& t, int32_t (&idx)[8]) {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int r = (threadIdx.x >> 3) + 16 * i;
      idx[i] = g.a.gather && r < t.rows ? __ldg(g.a.gather + t.m0 + r) : 0;
    }
  }
  __device__ static void row_pointers(const GemmArgs& g, const Tile& t, const int32_t (&idx)[8],
                                      const bf16_t* (&rows)[8]) {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int r = (threadIdx.x >> 3) + 16 * i;
      const int64_t row =
          g.a.gather ? min(max(int64_t{0}, static_cast<int64_t>(idx[i])), g.a.rows - 1) : t.m0 + r;
      rows[i] = r < t.rows ? g.a.ptr + t.expert * g.a.expert_stride + row * g.a.ld : g.a.ptr;
    }
  }

  __device__ static void produce_m(const GemmArgs& g, const CUtensorMap* map_a,
                                   const CUtensorMap* map_b, const Smem& sm) {
    const Sched sched = scheduler(g.schedule);
    const int total = sched.total();
    int k = 0, id = tile_of<kCluster>(0);
    int32_t idx[8];
    if constexpr (SA == Src::Copy)
      if (id < total) load_row_indices(g, sched.at(id), idx);
    int it = 0;
    for (int next_id; id < total; id = next_id) {
      const Tile t = sched.at(id);
      const int ktiles = static_cast<int>((t.k_len + kBK - 1) / kBK);
      const bf16_t* a_rows[8];
      if constexpr (SA == Src::Copy) row_pointers(g, t, idx, a_rows);
      // The next tile's indices land while this tile's stages are issued.
      next_id = tile_of<kCluster>(++k);
      if constexpr (SA == Src::Copy)
        if (next_id < total) load_row_indices(g, sched.at(next_id), idx);
      for (int kt = 0; kt < ktiles; ++kt, ++it) {
        const int s = it % kStages;
        if (it >= kStages) hw::mbar_wait(sm.empty + s, ((it / kStages) - 1) & 1);
        char* stage = sm.stages + s * kStageBytes;
        const int64_t k0 = static_cast<int64_t>(kt) * kBK;
        if (threadIdx.x == 0 && kTmaBytes > 0) issue_tma(t, k0, stage, sm.full + s, map_a, map_b);
        if constexpr (kAnyCopy) {
          copy_k_major(arch::smem_addr(stage), a_rows, t.rows, k0, g.schedule.K);
          hw::cp_async_mbar_arrive(sm.full + s);
        }
      }
    }
  }

  // ---- grouped-K producer: row addresses published a chunk ahead --------
  // Every 16-byte copy of a grouped-K stage needs its k-row's address: a
  // gathered row (dO or X by token) or a position, null past the expert's
  // edge (the copy then zero-fills). Looking the gathered rows up per stage
  // put one L2 round trip and a barrier in every stage, a third of the
  // producer's time, and the producer bounds dW1/dW2 (docs/NOTES.md). So
  // the addresses are published kChunkStages stages at a time into one of
  // two shared buffers, and each chunk's indices are loaded (2 per thread)
  // when the chunk before it starts: their latency hides behind that
  // chunk's copies. The next tile's first chunk is loaded during the
  // current tile's last one. Each warp publishes the addresses of the
  // k-rows it copies itself (rows 16 w .. 16 w + 15 of every stage), so a
  // __syncwarp per chunk orders a buffer's writes (end of chunk c - 1)
  // before its reads (chunk c) and those reads before its next writes (end
  // of chunk c + 1); a barrier over the four warps had 13% of the
  // producer's samples (docs/NOTES.md).
  static constexpr int kChunkStages = 4, kChunkRows = kChunkStages * kBK;
  static_assert(kChunkRows == 2 * 128, "two k-rows per producer thread");
  static_assert(2 * 2 * kChunkRows * 8 == 8192, "the row-address buffers of kSmemBytes");

  struct Chunk {  // a chunk of k-rows whose indices are loaded, not yet published
    Tile tile;
    int64_t k0;
    int index[2][2];  // [operand][i]: k-row k0 + chunk_row(i)
  };

  // The chunk's k-rows whose addresses this thread publishes: stage
  // 2 (lane / 16) + i, row 16 warp + lane % 16 of it. Warp w thus
  // publishes rows 16 w .. 16 w + 15 of each of the chunk's four stages,
  // the rows it copies (copy_mn_major).
  __device__ static int chunk_row(int i) {
    const int lane = threadIdx.x & 31;
    return (2 * (lane >> 4) + i) * kBK + 16 * (threadIdx.x >> 5) + (lane & 15);
  }

  __device__ static void load_chunk(const GemmArgs& g, Chunk& c) {
#pragma unroll
    for (int o = 0; o < 2; ++o) {
      if ((o == 0 ? SA : SB) != Src::Copy) continue;
      const Operand& op = o == 0 ? g.a : g.b;
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int64_t kr = c.k0 + chunk_row(i);
        c.index[o][i] = op.gather && kr < c.tile.k_len ? __ldg(op.gather + c.tile.k_first + kr) : 0;
      }
    }
  }

  // buffer: shared address of [operand][kChunkRows] row addresses.
  __device__ static void publish_chunk(const GemmArgs& g, const Chunk& c, uint32_t buffer) {
#pragma unroll
    for (int o = 0; o < 2; ++o) {
      if ((o == 0 ? SA : SB) != Src::Copy) continue;
      const Operand& op = o == 0 ? g.a : g.b;
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int r = chunk_row(i);
        const int64_t kr = c.k0 + r;
        const bf16_t* row = nullptr;
        if (kr < c.tile.k_len) {
          const int64_t stored =
              op.gather ? min(max(c.index[o][i], 0), static_cast<int>(op.rows - 1))
                        : c.tile.k_first + kr;
          row = op.ptr + c.tile.expert * op.expert_stride + stored * op.ld;
        }
        arch::sts_u64(buffer + (o * kChunkRows + r) * 8, reinterpret_cast<uint64_t>(row));
      }
    }
  }

  // 64 k-rows x kCols columns by cp.async, as kCols / 64 blocks of 64 rows x
  // 64 columns; warp w copies k-rows 16 w .. 16 w + 15, chunk c of block b
  // of its k-row 16 w + j by the lane whose index, plus 32 i, is
  // (j * kBlocks + b) * 8 + c. `rows` is the shared address of the stage's
  // 64 published row addresses.
  template <int kCols>
  __device__ static void copy_mn_major(uint32_t dst, uint32_t rows, const bf16_t* any,
                                       int64_t col0, int64_t col_extent) {
    constexpr int kBlocks = kCols / 64, kPerThread = 16 * kBlocks * 8 / 32;
    const int lane = threadIdx.x & 31, c = lane & 7, j0 = 16 * (threadIdx.x >> 5);
    // All addresses first: the loads are volatile (ordered with the
    // barriers), so each copy would otherwise wait for its own.
    const bf16_t* row[kPerThread];
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      const int idx = (lane >> 3) + 4 * i;
      row[i] = reinterpret_cast<const bf16_t*>(arch::lds_u64(rows + (j0 + idx / kBlocks) * 8));
    }
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      const int idx = (lane >> 3) + 4 * i, j = j0 + idx / kBlocks, b = idx % kBlocks;
      const int64_t col = col0 + b * 64 + c * 8;
      const bool ok = row[i] != nullptr && col < col_extent;
      arch::cp_async_16(dst + b * kMNBlockBytes + swz(j, c), ok ? row[i] + col : any,
                        ok ? 16u : 0u);
    }
  }

  __device__ static void produce_k(const GemmArgs& g, const CUtensorMap* map_a,
                                   const CUtensorMap* map_b, const Smem& sm) {
    const Sched sched = scheduler(g.schedule);
    const int total = sched.total();
    int k = 0, id = tile_of<kCluster>(0);
    if (id >= total) return;
    const uint32_t buffers = arch::smem_addr(sm.rows);
    constexpr uint32_t kBufferBytes = 2 * kChunkRows * 8;
    Chunk next{sched.at(id), 0, {}};
    load_chunk(g, next);
    publish_chunk(g, next, buffers);
    __syncwarp();
    int it = 0, chunk = 0;  // stages and chunks produced so far
    for (;;) {
      const Tile t = next.tile;
      const int ktiles = static_cast<int>((t.k_len + kBK - 1) / kBK);
      const int chunks = max(1, (ktiles + kChunkStages - 1) / kChunkStages);
      const int next_id = tile_of<kCluster>(k + 1);
      for (int ci = 0; ci < chunks; ++ci, ++chunk) {
        // Load the chunk after this one: this tile's next, or the next tile's first.
        const bool more = ci + 1 < chunks || next_id < total;
        if (ci + 1 < chunks) next.k0 = static_cast<int64_t>(ci + 1) * kChunkRows;
        else if (next_id < total) next = Chunk{sched.at(next_id), 0, {}};
        if (more) load_chunk(g, next);
        const uint32_t published = buffers + (chunk & 1) * kBufferBytes;
        const int last = min(ktiles, (ci + 1) * kChunkStages);
        for (int kt = ci * kChunkStages; kt < last; ++kt, ++it) {
          const int s = it % kStages;
          if (it >= kStages) hw::mbar_wait(sm.empty + s, ((it / kStages) - 1) & 1);
          char* stage = sm.stages + s * kStageBytes;
          const int64_t k0 = static_cast<int64_t>(kt) * kBK;
          if (threadIdx.x == 0 && kTmaBytes > 0)
            issue_tma(t, k0, stage, sm.full + s, map_a, map_b);
          const uint32_t rows = published + (kt % kChunkStages) * kBK * 8;
          const uint32_t a_dst = arch::smem_addr(stage);
          if constexpr (SA == Src::Copy)
            copy_mn_major<kTileM>(a_dst, rows, g.a.ptr, t.m0, g.schedule.M);
          if constexpr (SB == Src::Copy)
            copy_mn_major<kBN>(a_dst + kABytes, rows + kChunkRows * 8, g.b.ptr, t.n0,
                               g.schedule.N);
          hw::cp_async_mbar_arrive(sm.full + s);
        }
        if (more) publish_chunk(g, next, buffers + ((chunk + 1) & 1) * kBufferBytes);
        __syncwarp();
      }
      if (next_id >= total) return;
      id = next_id;
      ++k;
    }
  }

  __device__ static void produce(const GemmArgs& g, const CUtensorMap* map_a,
                                 const CUtensorMap* map_b, const Smem& sm) {
    if constexpr (G == Grouping::M) produce_m(g, map_a, map_b, sm);
    else produce_k(g, map_a, map_b, sm);
  }

  // ----------------------------------------------------------- consumers --
  // A operand of sub-tile `sub` of consumer warpgroup `wg` (rows
  // (2 wg + sub) * 64 .. with kSub sub-tiles per warpgroup).
  __device__ static uint64_t desc_a(uint32_t stage, int wg, int sub, int kk) {
    const int block = (kPingPong ? 0 : wg) * kSub + sub;  // which 64 rows
    if constexpr (MA == Major::K)  // 64 rows = 8 KiB; k16 = 32 bytes
      return hw::smem_desc(stage + block * 64 * 128 + kk * 32, 16, 1024);
    else  // block of 64 columns; k16 = two 8-row atoms
      return hw::smem_desc(stage + block * kMNBlockBytes + kk * 2048, kMNBlockBytes, 1024);
  }
  __device__ static uint64_t desc_b(uint32_t stage, int kk) {
    if constexpr (MB == Major::K)
      return hw::smem_desc(stage + kk * 32, 16, 1024);
    else
      return hw::smem_desc(stage + kk * 2048, kMNBlockBytes, 1024);
  }

  __device__ static void fence_acc(float (&acc)[kSub][kBN / 2]) {
#pragma unroll
    for (int i = 0; i < kSub; ++i)
#pragma unroll
      for (int j = 0; j < kBN / 2; ++j) hw::fence_operand(acc[i][j]);
  }

  // A consumed stage is free once every CTA that writes into it is done
  // with it: with multicast, the other CTA's copies land here too, so both
  // CTAs' consumers arrive on both CTAs' empty barriers.
  __device__ static void release(uint64_t* empty) {
    hw::mbar_arrive(empty);
    if constexpr (kCluster > 1) hw::mbar_arrive_cluster(empty, hw::cluster_rank() ^ 1u);
  }

  // Deferred epilogue stores (cooperative only: a ping-pong warpgroup's
  // next tile starts after the other's whole mainloop). kDrainStages stages
  // of the next tile issue kDrainPerStage each.
  using Frag = FragView<kBN, kSub, kPingPong>;
  static constexpr int kDeferred = kPingPong ? 0 : deferred_chunks<Epi, Frag>();
  static constexpr int kDrainStages = 8;
  static constexpr int kDrainPerStage = (kDeferred + kDrainStages - 1) / kDrainStages;
  // Deferred stores j * kDrainPerStage .. of d.
  template <int j>
  __device__ static void drain_step(const typename Epi::Params& ep, const Schedule& s,
                                    const Frag& frag, const Deferred<kDeferred>& d) {
    static_for<kDrainPerStage>([&](auto u) {
      constexpr int i = j * kDrainPerStage + decltype(u)::value;
      if constexpr (i < kDeferred) Epi::template drain<i>(ep, s, frag, d);
    });
  }

  __device__ static void consume(const GemmArgs& g, const typename Epi::Params& ep,
                                 const Smem& sm) {
    const Sched sched = scheduler(g.schedule);
    const int total = sched.total();
    const int wg = (threadIdx.x - 128) >> 7;
    const bool wg_leader = (threadIdx.x & 127) == 0;
    float acc[kSub][kBN / 2];
    Frag frag{{}, acc};
    char* const epi = sm.epi + wg * (kEpiBytes / 2);
    // The previous tile's deferred stores, if pending.
    Deferred<kDeferred == 0 ? 1 : kDeferred> pend;
    bool pending = false;
    int it = 0;
    for (int k = 0, id = tile_of<kCluster>(0); id < total; id = tile_of<kCluster>(++k)) {
      const Tile t = sched.at(id);
      const int ktiles = static_cast<int>((t.k_len + kBK - 1) / kBK);
      if (kPingPong && (k & 1) != wg) {  // the other warpgroup's tile
        it += ktiles;
        continue;
      }
      // Consumers issue no cp.async of their own in the mainloop: the
      // epilogue's prefetch groups are the only ones they wait for.
      Epi::template prefetch<kTileM>(ep, g.schedule, t, frag, epi);
      if (kPingPong && k > 0) hw::named_sync(order_barrier(wg), 256);
#pragma unroll
      for (int i = 0; i < kSub; ++i)
#pragma unroll
        for (int j = 0; j < kBN / 2; ++j) acc[i][j] = 0.f;
      // One stage: its MMAs issued and committed, then (between) whatever
      // should run while they do, then its wait.
      auto stage = [&](int kt, auto&& between) {
        const int s = it % kStages;
        hw::mbar_wait(sm.full + s, (it / kStages) & 1);
        if constexpr (kAnyCopy) hw::fence_proxy_async();
        const uint32_t a = arch::smem_addr(sm.stages + s * kStageBytes), b = a + kABytes;
        fence_acc(acc);
        hw::wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kBK / 16; ++kk)
#pragma unroll
          for (int i = 0; i < kSub; ++i)
            hw::Wgmma<kBN, MA == Major::MN, MB == Major::MN>::run(acc[i], desc_a(a, wg, i, kk),
                                                                  desc_b(b, kk), 1);
        hw::wgmma_commit();
        fence_acc(acc);
        between();
        // One group may stay in flight: the previous stage is free once it
        // has retired.
        hw::wgmma_wait<1>();
        if (kt > 0 && wg_leader) release(sm.empty + (it - 1) % kStages);
        ++it;
      };
      int kt = 0;
      if constexpr (kDeferred > 0) {
        // The first kDrainStages stages, unrolled so that the deferred
        // stores are indexed by constants.
        static_for<kDrainStages>([&](auto j) {
          if (kt < ktiles) {
            stage(kt, [&] {
              if (pending) drain_step<decltype(j)::value>(ep, g.schedule, frag, pend);
            });
            ++kt;
          }
        });
      }
      for (; kt < ktiles; ++kt) stage(kt, [] {});
      hw::wgmma_wait<0>();
      if (ktiles > 0 && wg_leader) release(sm.empty + (it - 1) % kStages);
      if constexpr (kDeferred > 0) {
        // Stages too few to drain them all: the rest go now.
        if (pending && ktiles < kDrainStages)
          static_for<kDrainStages>([&](auto j) {
            if (decltype(j)::value >= ktiles)
              drain_step<decltype(j)::value>(ep, g.schedule, frag, pend);
          });
        pending = true;
      }
      // Tile k + 1's mainloop may start (if there is one: every arrive is
      // matched by the other warpgroup's wait).
      if (kPingPong && tile_of<kCluster>(k + 1) < total) hw::named_arrive(order_barrier(1 - wg), 256);
      if constexpr (kDeferred > 0)
        Epi::template apply<kTileM, kBN>(ep, g.schedule, t, frag, epi, pend);
      else
        Epi::template apply<kTileM, kBN>(ep, g.schedule, t, frag, epi);
    }
    // The last tile's deferred stores: no stage left to hide them under.
    if constexpr (kDeferred > 0)
      if (pending)
        static_for<kDrainStages>(
            [&](auto j) { drain_step<decltype(j)::value>(ep, g.schedule, frag, pend); });
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
    K::produce(args, &map_a, &map_b, sm);
  } else {
    hw::setmaxnreg_inc<K::kConsumerRegsN>();
    K::consume(args, ep, sm);
  }
  // ... and none may exit while the other may still arrive on its barriers.
  if constexpr (K::kClusterSize > 1) hw::cluster_sync();
}

}  // namespace sonicmoe::gemm::sm90
