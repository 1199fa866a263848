// The portable grouped GEMM: scheduler -> loaders -> mainloop -> epilogue.
//
// Pipeline contract (one CTA, 256 threads = 8 warps; the CTA tile is
// kBM x kBN: 128 x 128 or 128 x 256 (2 x 4 warps), or 256 x 128 (4 x 2
// warps, grouped-K products only); every warp holds a 64-row slab,
// WarpGrid in tile.cuh):
// - Every thread is both producer and consumer. A stage is one kBM x 64 A
//   tile and one kBN x 64 B tile (16 KiB per 128): 32 or 48 KiB. stages
//   stages (2 .. kMaxStages) rotate: the product's depth, fixed at compile
//   time (kStages), or where the device's shared memory holds fewer, the
//   launcher's lowered g.stages in the kStages = 0 instantiation.
// - Prologue: stages 0 .. stages-2 are requested (one cp.async group each,
//   committed even when empty so that group counting stays uniform).
// - Iteration kt: wait until at most stages-2 groups are in flight (stage
//   kt has landed for this thread), __syncthreads (it has landed for every
//   thread, and every warp is done reading stage kt-1), request stage
//   kt+stages-1 into the slot of kt-1, then run 4 k16 steps of mma.sync on
//   stage kt (slot kt % stages).
// - MN-major operands copy the K loop's stages from row addresses published
//   in shared memory (after the stages, kPublishedBytes) one iteration
//   ahead, in two buffers by stage parity: iteration kt reads stage
//   kt+stages-1's, then 64 threads per operand write stage kt+stages'
//   (loader.cuh). The iteration's barrier orders the writes of iteration
//   kt-1 before these reads, and the reads of iteration kt-1 (the same
//   buffer) before these writes. The prologue's stages compute their
//   addresses directly; stage stages-1's are published before the first
//   barrier.
// - Between tiles: the K loop drains its (empty) trailing groups. Then,
//   without kOverlap: the epilogue, one __syncthreads, and the next tile's
//   K loop requests its own prologue. With kOverlap: one __syncthreads (no
//   warp reads the stages any more), the next tile's prologue is requested,
//   then this tile's epilogue runs, so the next tile's first stages land
//   meanwhile; its K loop then builds loaders positioned at stage stages-1
//   (loader state kept instead would stay live across the epilogue's
//   registers).
// - The epilogue (common/epilogue.cuh, through FragView) reads the fp32
//   accumulators in registers and may use its own shared-memory region
//   (after the stages and the published addresses), never the stages. Its
//   prefetch (dH: the scores and the first H chunks) is requested before
//   the tile's prologue, so the K loop's first wait covers it. With
//   kOverlap the next prologue would come first (the epilogue's shared
//   memory is in use until it ends), so only epilogues that prefetch
//   nothing run with kOverlap. The epilogue's own groups (dH's H ring) come
//   after the prologue's, so its waits also wait for those.
#pragma once

#include <cstdint>
#include <type_traits>

#include "arch/sm80.cuh"
#include "gemm/common/epilogue.cuh"
#include "gemm/common/scheduler.cuh"
#include "gemm/sm80/loader.cuh"
#include "gemm/sm80/tile.cuh"

namespace sonicmoe::gemm::sm80 {

inline constexpr int kMaxStages = 4;  // what wait_pending below can wait for
// After the stages: the MN-major loaders' published row addresses, 1 KiB per
// operand (loader.cuh), then the epilogue's shared memory.
inline constexpr int kPublishedBytes = 2 * 1024;

template <int kBM, int kBN>
inline constexpr int kStageBytes = kOperandBytes<kBM> + kOperandBytes<kBN>;
static_assert(kOperandBytes<128> % 1024 == 0, "swizzled tiles must stay 1024-byte aligned");

// [m16 tile][n8 tile][fragment]: a warp's 64 x kWarpN slab.
template <int kBM, int kBN>
using Accum = float[4][WarpGrid<kBM, kBN>::kNT][4];

struct GemmArgs {
  Operand a, b;
  Schedule schedule;
  int stages = 0;  // pipeline depth, set by the launcher
};

// cp.async.wait_group takes an immediate: the pipeline depth is a launch
// parameter, so branch (uniformly) to the right one.
__device__ __forceinline__ void wait_pending(int n) {
  if (n <= 0) arch::cp_async_wait<0>();
  else if (n == 1) arch::cp_async_wait<1>();
  else arch::cp_async_wait<2>();
}
static_assert(kMaxStages - 2 <= 2, "wait_pending covers 0 .. 2 groups in flight");

// The operands' geometry for each grouping and majorness (see scheduler.cuh).
// kGatherA: the K-major A operand's rows go through an index (X, dO rows).
// kStages: the pipeline depth, or 0 for the depth the launcher sets at run
// time (g.stages, on devices whose shared memory holds fewer stages than the
// product asks for).
template <Grouping G, Major MA, Major MB, bool kGatherA, int kBM, int kBN, int kStages>
struct Mainloop {
  static_assert(G == Grouping::M ? MA == Major::K : (MA == Major::MN && MB == Major::MN),
                "grouped-M products read A by rows; grouped-K products read both operands "
                "along the expert's rows");
  using Warps = WarpGrid<kBM, kBN>;
  static constexpr int kNT = Warps::kNT;  // n8 tiles per warp: 4 or 8
  static constexpr int kStage = kStageBytes<kBM, kBN>;
  static_assert(kStages == 0 || (kStages >= 2 && kStages <= kMaxStages));

  // A depth known at compile time makes the stage wait one instruction and
  // the slot arithmetic constants; a runtime one cost a constant-bank reload
  // and a branch per K step (ncu: ~4% of the 2-CTA dX~ kernel's stall
  // samples, H200 7b-n1024), and a register the 2-CTA kernels lack.
  __device__ static int depth(const GemmArgs& g) { return kStages > 0 ? kStages : g.stages; }
  __device__ static void wait_stage(int stages) {
    if constexpr (kStages > 0) arch::cp_async_wait<kStages - 2>();
    else wait_pending(stages - 2);
  }

  // MN-major operands publish their row addresses from different warps:
  // A's from warps 0-1, B's from warps 2-3 (different schedulers).
  using LoaderA = LoaderFor<MA, kGatherA, kBM, 0>;
  using LoaderB = LoaderFor<MB, false, kBN, 64>;
  static_assert(LoaderA::kPublishedBytes + LoaderB::kPublishedBytes <= kPublishedBytes);

  // Tile t's loaders.
  __device__ static void make_loaders(const GemmArgs& g, const Tile& t, char* smem, LoaderA& la,
                                      LoaderB& lb) {
    const uint32_t pub = stage_a(smem, depth(g));  // past the last stage
    if constexpr (G == Grouping::M) {
      la.init(g.a, t.expert, t.m0, t.rows, g.schedule.K, pub);
      if constexpr (MB == Major::K)
        lb.init(g.b, t.expert, t.n0,
                static_cast<int>(min(static_cast<int64_t>(kBN), g.schedule.N - t.n0)),
                g.schedule.K, pub + 1024);
      else
        lb.init(g.b, t.expert, 0, g.schedule.K, t.n0, g.schedule.N, pub + 1024);
    } else {
      la.init(g.a, t.expert, t.k_first, t.k_len, t.m0, g.schedule.M, pub);
      lb.init(g.b, t.expert, t.k_first, t.k_len, t.n0, g.schedule.N, pub + 1024);
    }
  }

  __device__ static int ktiles(const Tile& t) {
    return static_cast<int>((t.k_len + kBK - 1) / kBK);
  }
  __device__ static uint32_t stage_a(char* smem, int s) {
    return arch::smem_addr(smem) + s * kStage;
  }
  __device__ static uint32_t stage_b(char* smem, int s) {
    return stage_a(smem, s) + kOperandBytes<kBM>;
  }

  // Requests tile t's stages 0 .. stages-2 (one cp.async group each,
  // committed even when empty) with loaders positioned at k 0. The stages
  // must be free: the caller has synchronised after the last reads of the
  // previous tile.
  __device__ static void request_prologue(const GemmArgs& g, const Tile& t, char* smem,
                                          LoaderA& la, LoaderB& lb) {
    const int kt_end = ktiles(t);
    for (int s = 0; s < depth(g) - 1; ++s) {
      if (s < kt_end) {
        la.load_direct(stage_a(smem, s), static_cast<int64_t>(s) * kBK);
        lb.load_direct(stage_b(smem, s), static_cast<int64_t>(s) * kBK);
      }
      arch::cp_async_commit();
    }
  }
  __device__ static void prologue(const GemmArgs& g, const Tile& t, char* smem) {
    LoaderA la;
    LoaderB lb;
    make_loaders(g, t, smem, la, lb);
    request_prologue(g, t, smem, la, lb);
  }

  // Tile t's K loop; kOwnPrologue: it requests the prologue first, else
  // prologue() has.
  template <bool kOwnPrologue>
  __device__ static void run(const GemmArgs& g, const Tile& t, char* smem, Accum<kBM, kBN>& acc) {
    const int stages = depth(g);
    LoaderA la;
    LoaderB lb;
    make_loaders(g, t, smem, la, lb);
    if constexpr (kOwnPrologue) request_prologue(g, t, smem, la, lb);
    const int kt_end = ktiles(t);
    // The first stage the K loop requests (stages-1) copies from published
    // addresses: published before the first barrier.
    la.publish_first(static_cast<int64_t>(stages - 1) * kBK);
    lb.publish_first(static_cast<int64_t>(stages - 1) * kBK);

#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < kNT; ++j)
#pragma unroll
        for (int f = 0; f < 4; ++f) acc[i][j][f] = 0.f;

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wm = Warps::m0(warp), wn = Warps::n0(warp);
    int slot = 0;  // kt % stages, without the division
    for (int kt = 0; kt < kt_end; ++kt) {
      wait_stage(stages);
      __syncthreads();
      const int next = kt + stages - 1;
      const int free = (slot == 0 ? stages : slot) - 1;  // the slot of kt - 1
      if (next < kt_end) {
        la.load(stage_a(smem, free), static_cast<int64_t>(next) * kBK);
        lb.load(stage_b(smem, free), static_cast<int64_t>(next) * kBK);
      }
      arch::cp_async_commit();
      // The next iteration's addresses, into the other buffer (this
      // iteration's barrier ordered its last reads before these writes).
      la.publish(static_cast<int64_t>(next + 1) * kBK);
      lb.publish(static_cast<int64_t>(next + 1) * kBK);

      const uint32_t sa = stage_a(smem, slot), sb = stage_b(smem, slot);
#pragma unroll
      for (int kk = 0; kk < kBK / 16; ++kk) {
        // B fragments for the warp's kWarpN columns, then one A fragment at
        // a time: 2 kNT + 4 live fragment registers (12 at 128 x 128, which
        // keeps the kernel within 128 registers for 2 CTAs per SM; 20 at
        // 128 x 256 and 256 x 128, next to 128 accumulators).
        uint32_t bf[kNT / 2][4];
#pragma unroll
        for (int j = 0; j < kNT / 2; ++j) load_b_frag2<MB>(bf[j], sb, wn + j * 16, kk, lane);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          uint32_t af[4];
          load_a_frag<MA>(af, sa, wm + i * 16, kk, lane);
#pragma unroll
          for (int j = 0; j < kNT; ++j) {
            const uint32_t b[2] = {bf[j >> 1][(j & 1) * 2], bf[j >> 1][(j & 1) * 2 + 1]};
            arch::mma_bf16_16816(acc[i][j], af, b);
          }
        }
      }
      slot = slot + 1 == stages ? 0 : slot + 1;
    }
    arch::cp_async_wait<0>();
  }
};

// The accumulator as common/epilogue.cuh sees it. Thread slots: 4 m16
// tiles x 2 row halves; the warps along N (4, or 2 at 256 x 128) hold
// different columns of a row (column group = warp % kWarpsN, kWarpN columns
// each).
template <int kBM, int kBN>
struct FragView : ChunkWalks<FragView<kBM, kBN>> {
  using Warps = WarpGrid<kBM, kBN>;
  Accum<kBM, kBN>& acc;
  static constexpr int kNT = Warps::kNT;  // n8 tiles per warp
  static constexpr int kSlots = 8, kColGroups = Warps::kWarpsN, kThreads = sm80::kThreads;
  static constexpr int kRows = kBM;
  // 128 x 128 tiles run two CTAs per SM at 128 registers a thread: tile
  // bases pinned in registers spilled the GeGLU dH kernel.
  static constexpr bool kPinnedBases = false;
  __device__ int first_row() const { return 0; }

  __device__ int slot_row(int slot) const {
    // Warps::m0(warp), spelled in the unsigned arithmetic of threadIdx.
    return (threadIdx.x >> 5) / Warps::kWarpsN * kWarpM + (slot >> 1) * 16 +
           ((threadIdx.x & 31) >> 2) + (slot & 1) * 8;
  }
  __device__ int col_group() const { return (threadIdx.x >> 5) % kColGroups; }
  __device__ int thread() const { return threadIdx.x; }
  __device__ void sync() const { __syncthreads(); }

  // The warp's n8 tiles in groups of 4 (32 columns): in group g, lane q gets
  // columns wn + 32 g + 8 q .. Chunk k: m16 tile i, row half h, group g,
  // with k = (i * 2 + h) * kNT / 4 + g.
  static constexpr int kGroups = kNT / 4, kChunks = 4 * 2 * kGroups;
  // Chunk pair pi (m16 tile pi / kGroups, group pi % kGroups): its chunks
  // in row halves 0 and 1.
  template <int pi>
  static constexpr int lower_chunk() {
    return (pi / kGroups * 2) * kGroups + pi % kGroups;
  }
  template <int pi>
  static constexpr int upper_chunk() {
    return lower_chunk<pi>() + kGroups;
  }
  template <int k>
  __device__ int chunk_row() const {
    return slot_row(k / kGroups);
  }
  template <int k>
  __device__ int chunk_col() const {
    return Warps::n0(threadIdx.x >> 5) + 32 * (k % kGroups) + 8 * (threadIdx.x & 3);
  }

  // Chunk k's column pairs as the accumulator holds them (p[j]: 8-column
  // group 4 g + j), and its row slot.
  template <int k>
  __device__ __forceinline__ int chunk_pairs(float2 (&p)[4]) const {
    constexpr int i = k / (2 * kGroups), h = (k / kGroups) & 1, g = k % kGroups;
#pragma unroll
    for (int j = 0; j < 4; ++j)
      p[j] = float2{acc[i][4 * g + j][2 * h], acc[i][4 * g + j][2 * h + 1]};
    return 2 * i + h;
  }

  template <class Fn>
  __device__ __forceinline__ void for_each_pair(Fn&& fn) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wm = Warps::m0(warp), wn = Warps::n0(warp);
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < kNT; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h)
          fn(i * 2 + h, wm + i * 16 + (lane >> 2) + h * 8, wn + j * 8 + (lane & 3) * 2,
             acc[i][j][2 * h], acc[i][j][2 * h + 1]);
  }
};

// kBM x kBN: the tile, 128 x 128, 128 x 256 or 256 x 128 (grouped-K only:
// grouped-M tiles are kGroupedMTile rows). kStages: the pipeline depth, 0
// for args.stages (Mainloop). kMinCtas: CTAs per SM the
// register budget must allow (2 caps a thread at 128 registers; the larger
// tiles hold 128 accumulators per thread, so they run at 1). kOverlap: the
// next tile's prologue is requested before this tile's epilogue (contract
// above). Chosen per product.
template <Grouping G, Major MA, Major MB, bool kGatherA, int kBM, int kBN, EpiloguePolicy Epi,
          int kMinCtas, bool kOverlap, int kStages>
__global__ void __launch_bounds__(kThreads, kMinCtas)
    grouped_gemm_kernel(const GemmArgs args, const typename Epi::Params ep) {
  static_assert((kBM == 128 && (kBN == 128 || kBN == 256)) || (kBM == 256 && kBN == 128),
                "warp slabs of 64 x 32 or 64 x 64");
  static_assert(G == Grouping::K || kBM == kGroupedMTile,
                "grouped-M tiles are counted in kGroupedMTile rows (tile_offsets)");
  static_assert(kMinCtas == 1 || kBM * kBN == 128 * 128,
                "128 accumulators do not fit 128 registers");
  extern __shared__ __align__(1024) char smem[];
  const Scheduler<G, kBM, kBN> sched{args.schedule};
  const int total = sched.total();
  using Main = Mainloop<G, MA, MB, kGatherA, kBM, kBN, kStages>;
  char* const epi_smem = smem + Main::depth(args) * kStageBytes<kBM, kBN> + kPublishedBytes;
  static_assert(!kOverlap || std::is_base_of_v<NoPrefetch, Epi>,
                "an epilogue's prefetch must precede its tile's prologue (contract above)");
  if constexpr (!kOverlap) {
    for (int k = 0, id = tile_of(0); id < total; id = tile_of(++k)) {
      const Tile t = sched.at(id);
      Accum<kBM, kBN> acc;
      FragView<kBM, kBN> frag{{}, acc};
      // Its groups precede the prologue's: the mainloop's waits cover them.
      Epi::template prefetch<kBM>(ep, args.schedule, t, frag, epi_smem);
      Main::template run<true>(args, t, smem, acc);
      Epi::template apply<kBM, kBN>(ep, args.schedule, t, frag, epi_smem);
      __syncthreads();  // before the next prologue overwrites the stages
    }
  } else {
    int id = tile_of(0);
    if (id >= total) return;
    Tile t = sched.at(id);
    Main::prologue(args, t, smem);
    for (int k = 1;; ++k) {
      Accum<kBM, kBN> acc;
      Main::template run<false>(args, t, smem, acc);
      __syncthreads();  // every warp is done reading the stages
      id = tile_of(k);
      Tile next{};
      if (id < total) {
        next = sched.at(id);
        Main::prologue(args, next, smem);
      }
      FragView<kBM, kBN> frag{{}, acc};
      Epi::template apply<kBM, kBN>(ep, args.schedule, t, frag, epi_smem);
      if (id >= total) return;
      t = next;
    }
  }
}

}  // namespace sonicmoe::gemm::sm80
