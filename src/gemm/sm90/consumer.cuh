// The Hopper kernel's consumer warpgroups, the mainloop: wgmma on each full
// stage, the stage released once its MMAs retired, then the epilogue policy
// on the accumulator (the contract: kernel.cuh). K is the kernel's
// configuration (Kernel, kernel.cuh).
#pragma once

#include <cstdint>

#include "arch/sm90.cuh"
#include "gemm/common/epilogue.cuh"
#include "gemm/sm90/common.cuh"
#include "gemm/sm90/trace.cuh"

namespace sonicmoe::gemm::sm90 {

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
  // The warpgroup, as the consumer read it once (consumer_wg() when
  // cooperative): a shuffle per wg() call would sit inside the epilogues'
  // row loops, whose exits diverge.
  int wg_;
  static constexpr int kSlots = 2 * kSub, kColGroups = 1, kThreads = 128, kRows = 64 * kSub;
  static constexpr bool kPinnedBases = true;  // 240 registers per consumer thread

  __device__ int wg() const { return wg_; }
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

template <class K>
struct Consumer {
  // K's configuration, under the names the mainloop's code uses.
  static constexpr Major MA = K::kMA, MB = K::kMB;
  static constexpr int kBN = K::kTileN, kStages = K::kNumStages, kTileM = K::kRows,
                       kCluster = K::kClusterSize, kSub = K::kSub;
  static constexpr bool kPingPong = K::kPingPongTiles, kAnyCopy = K::kAnyCopy;
  static constexpr int kABytes = K::kABytes, kStageBytes = K::kStageBytes,
                       kEpiBytes = K::kEpiBytes;
  using Epi = typename K::Epilogue;
  using Smem = typename K::Smem;
  using Sched = typename K::Sched;
  __device__ static Sched scheduler(const Schedule& s) { return K::scheduler(s); }

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

  // The CTA's k-th tile (id): grouped-M, a reference to its tile ring slot
  // once published, whose fields are read when needed (a shared load)
  // rather than held in registers through the mainloop; grouped-K, looked
  // up here.
  __device__ static decltype(auto) tile(const Sched& sched, const Smem& sm, int k, int id) {
    if constexpr (K::kTileRingOn) {
      const int slot = k % kTileRing;
      hw::mbar_wait(sm.tile_full + slot, (k / kTileRing) & 1);
      return static_cast<const Tile&>(sm.tiles[slot]);
    } else {
      return sched.at(id);
    }
  }

  // This thread's last read of tile k's ring slot is behind it.
  __device__ static void give_back(const Smem& sm, int k) {
    if constexpr (K::kTileRingOn) hw::mbar_arrive(sm.tile_empty + k % kTileRing);
  }

  __device__ static void consume(const GemmArgs& g, const typename Epi::Params& ep,
                                 const Smem& sm) {
    const Sched sched = scheduler(g.schedule);
    const int total = sched.total();
    // Cooperative: through the lane-0 shuffle (layer backward 1-2% faster,
    // H200). Ping-pong keeps the plain form: with the shuffle its store
    // kernels lost 4-25% at 30b-n1024 and 120b-n2048 (docs/NOTES.md).
    const int wg = kPingPong ? (static_cast<int>(threadIdx.x) - 128) >> 7 : consumer_wg();
    const bool wg_leader = (threadIdx.x & 127) == 0;
    float acc[kSub][kBN / 2];
    Frag frag{{}, acc, wg};
    char* const epi = sm.epi + wg * (kEpiBytes / 2);
    // The previous tile's deferred stores, if pending.
    Deferred<kDeferred == 0 ? 1 : kDeferred> pend;
    bool pending = false;
    int it = 0;
    for (int k = 0, id = tile_of<kCluster>(0); id < total; id = tile_of<kCluster>(++k)) {
      trace::Stamps stamps;  // before the lookup or the ring: "first" includes it
      decltype(auto) t = tile(sched, sm, k, id);
      const int ktiles = static_cast<int>((t.k_len + kBK - 1) / kBK);
      if (kPingPong && (k & 1) != wg) {  // the other warpgroup's tile
        it += ktiles;
        give_back(sm, k);
        continue;
      }
      // Consumers issue no cp.async of their own in the mainloop: the
      // epilogue's prefetch groups are the only ones they wait for. It gets
      // a copy of the tile, alive for the call only: through the slot,
      // each of its copies (asm with a memory clobber) made it reload the
      // fields, while the tensor cores wait for the first stage's MMAs.
      Epi::template prefetch<kTileM>(ep, g.schedule, Tile(t), frag, epi);
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
        stamps.at(1, kt);
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
      stamps.at(2);
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
      // The epilogue reads the tile's fields at every chunk: from registers
      // loaded once, not from the ring slot, which its own shared-memory
      // stores would make it reload (a copy of a value costs nothing).
      const Tile te = t;
      give_back(sm, k);
      if constexpr (kDeferred > 0)
        Epi::template apply<kTileM, kBN>(ep, g.schedule, te, frag, epi, pend);
      else
        Epi::template apply<kTileM, kBN>(ep, g.schedule, te, frag, epi);
      stamps.done(wg_leader, 1 + wg, k, id, te, ktiles);
    }
    // The last tile's deferred stores: no stage left to hide them under.
    if constexpr (kDeferred > 0)
      if (pending)
        static_for<kDrainStages>(
            [&](auto j) { drain_step<decltype(j)::value>(ep, g.schedule, frag, pend); });
  }
};

}  // namespace sonicmoe::gemm::sm90
