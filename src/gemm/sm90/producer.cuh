// The Hopper kernel's producer warpgroup, the operand loader: TMA boxes for
// weights and contiguous rows (multicast within a 2-CTA pair), cp.async
// copies for gathered or expert-bounded rows, each stage completing on its
// full barrier (the contract: kernel.cuh). K is the kernel's configuration
// (Kernel, kernel.cuh).
#pragma once

#include <cuda.h>

#include <cstdint>

#include "arch/sm80.cuh"
#include "arch/sm90.cuh"
#include "gemm/sm90/common.cuh"
#include "gemm/sm90/trace.cuh"

namespace sonicmoe::gemm::sm90 {

template <class K>
struct Producer {
  // K's configuration, under the names the loader's code uses.
  static constexpr Grouping G = K::kG;
  static constexpr Src SA = K::kSA, SB = K::kSB;
  static constexpr Major MB = K::kMB;
  static constexpr int kBN = K::kTileN, kStages = K::kNumStages, kTileM = K::kRows,
                       kCluster = K::kClusterSize;
  static constexpr int kABytes = K::kABytes, kStageBytes = K::kStageBytes;
  static constexpr uint32_t kTmaBytes = K::kTmaBytes;
  static constexpr bool kAnyCopy = K::kAnyCopy, kMcastA = K::kMcastA, kMcastB = K::kMcastB;
  using Smem = typename K::Smem;
  using Sched = typename K::Sched;
  __device__ static Sched scheduler(const Schedule& s) { return K::scheduler(s); }

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

  // Tile k of this CTA into the tile ring (thread 0; grouped-M only). It
  // does not wait for the slot (Kernel's static_assert says why): in the
  // copy producers' 40-56 registers a wait's loop spilled 12-100 bytes.
  __device__ static void publish(const Smem& sm, int k, const Tile& t) {
    if (threadIdx.x != 0) return;
    const int slot = k % kTileRing;
    // The slot's previous tile is done with by every consumer thread (the
    // stages ensure it), so one look at tile_empty suffices. The look
    // is what orders the readers' loads before the stores below in the
    // memory model; it guards the first field's store so that its answer
    // is used (hw::st_u32_if_phase_done). Parity (k / kTileRing - 1) & 1,
    // written + 1: a fresh barrier passes it for the first kTileRing tiles.
    // Field by field after the guarded one: a new Tile field needs its
    // store here (the assert trips on most additions).
    static_assert(sizeof(Tile) == 56, "publish() stores every field of Tile");
    Tile* d = sm.tiles + slot;
    hw::st_u32_if_phase_done(sm.tile_empty + slot, ((k / kTileRing) + 1) & 1,
                             arch::smem_addr(&d->expert), static_cast<uint32_t>(t.expert));
    d->m0 = t.m0;
    d->rows = t.rows;
    d->n0 = t.n0;
    d->k_first = t.k_first;
    d->k_len = t.k_len;
    d->solo = t.solo;
    hw::mbar_arrive(sm.tile_full + slot);  // release: the store above first
  }

  __device__ static void produce_m(const GemmArgs& g, const CUtensorMap* map_a,
                                   const CUtensorMap* map_b, const Smem& sm) {
    // With both operands by TMA (down_proj, dX~) thread 0 does all the
    // loading, and warps 1-3 would only walk the stages' empty waits. Nothing
    // holds them in step: no stage waits for them, so a warp that slept
    // through two phases of an empty[s] waited on an aliased parity for ever
    // once the consumers were done (a hang in 1-2 of 4 heated bench runs on
    // an H100, warp 1 of one CTA: docs/NOTES.md). Copy producers are held in
    // step by full[s], which counts every thread's arrival. Whole warps
    // leave, so the cluster barrier's aligned arrival stays warp-uniform.
    if constexpr (!kAnyCopy)
      if (threadIdx.x >= 32) return;
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
      trace::Stamps stamps;
      publish(sm, k, t);
      const bf16_t* a_rows[8];
      if constexpr (SA == Src::Copy) row_pointers(g, t, idx, a_rows);
      // The next tile's indices land while this tile's stages are issued.
      next_id = tile_of<kCluster>(++k);
      if constexpr (SA == Src::Copy)
        if (next_id < total) load_row_indices(g, sched.at(next_id), idx);
      for (int kt = 0; kt < ktiles; ++kt, ++it) {
        const int s = it % kStages;
        if (it >= kStages) hw::mbar_wait(sm.empty + s, ((it / kStages) - 1) & 1);
        stamps.at(1, kt);
        char* stage = sm.stages + s * kStageBytes;
        const int64_t k0 = static_cast<int64_t>(kt) * kBK;
        if (threadIdx.x == 0 && kTmaBytes > 0) issue_tma(t, k0, stage, sm.full + s, map_a, map_b);
        if constexpr (kAnyCopy) {
          copy_k_major(arch::smem_addr(stage), a_rows, t.rows, k0, g.schedule.K);
          hw::cp_async_mbar_arrive(sm.full + s);
        }
      }
      stamps.done(threadIdx.x == 0, 0, k - 1, id, t, ktiles);
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
      trace::Stamps stamps;
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
          stamps.at(1, kt);
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
      stamps.done(threadIdx.x == 0, 0, k, id, t, ktiles);
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
};

}  // namespace sonicmoe::gemm::sm90
