// The portable grouped GEMM: scheduler -> loaders -> mainloop -> epilogue.
//
// Pipeline contract (one CTA, 256 threads = 8 warps, 2 along M x 4 along N,
// each warp a 64 x 32 slab of the 128 x 128 tile):
// - Every thread is both producer and consumer. A stage is one 128 x 64 A
//   tile and one 64 x 128 B tile (32 KiB); kStages stages rotate.
// - Prologue: stages 0 .. kStages-2 are requested (one cp.async group each,
//   committed even when empty so that group counting stays uniform).
// - Iteration kt: wait until at most kStages-2 groups are in flight (stage
//   kt has landed for this thread), __syncthreads (it has landed for every
//   thread, and every warp is done reading stage kt-1), request stage
//   kt+kStages-1 into the slot of kt-1, then run 4 k16 steps of mma.sync on
//   stage kt.
// - Between tiles: all groups drained, one __syncthreads before the next
//   prologue overwrites stages other warps may still be reading.
// - The epilogue (common/epilogues.cuh, through FragView) reads the fp32
//   accumulators in registers and may use its own shared-memory region
//   (after the stages), never the stages.
#pragma once

#include <cstdint>

#include "arch/sm80.cuh"
#include "gemm/common/epilogues.cuh"
#include "gemm/common/scheduler.cuh"
#include "gemm/sm80/loader.cuh"
#include "gemm/sm80/tile.cuh"

namespace sonicmoe::gemm::sm80 {

inline constexpr int kStages = 3;
inline constexpr int kStageBytes = 2 * kOperandBytes;
inline constexpr int kMainloopSmem = kStages * kStageBytes;
static_assert(kStageBytes % 1024 == 0, "swizzled tiles must stay 1024-byte aligned");

using Accum = float[4][4][4];  // [m16 tile][n8 tile][fragment]

struct GemmArgs {
  Operand a, b;
  Schedule schedule;
};

// The operands' geometry for each grouping and majorness (see scheduler.cuh).
// kGatherA: the K-major A operand's rows go through an index (X, dO rows).
template <Grouping G, Major MA, Major MB, bool kGatherA>
struct Mainloop {
  static_assert(G == Grouping::M ? MA == Major::K : (MA == Major::MN && MB == Major::MN),
                "grouped-M products read A by rows; grouped-K products read both operands "
                "along the expert's rows");

  __device__ static void run(const GemmArgs& g, const Tile& t, char* smem, Accum& acc) {
    LoaderFor<MA, kGatherA> la;
    LoaderFor<MB, false> lb;
    if constexpr (G == Grouping::M) {
      la.init(g.a, t.expert, t.m0, t.rows, g.schedule.K);
      if constexpr (MB == Major::K)
        lb.init(g.b, t.expert, t.n0,
                static_cast<int>(min(static_cast<int64_t>(kBN), g.schedule.N - t.n0)),
                g.schedule.K);
      else
        lb.init(g.b, t.expert, 0, g.schedule.K, t.n0, g.schedule.N);
    } else {
      la.init(g.a, t.expert, t.k_first, t.k_len, t.m0, g.schedule.M);
      lb.init(g.b, t.expert, t.k_first, t.k_len, t.n0, g.schedule.N);
    }

    const uint32_t base = arch::smem_addr(smem);
    auto stage_a = [&](int s) { return base + s * kStageBytes; };
    auto stage_b = [&](int s) { return base + s * kStageBytes + kOperandBytes; };
    const int ktiles = static_cast<int>((t.k_len + kBK - 1) / kBK);

#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
      if (s < ktiles) {
        la.load(stage_a(s), static_cast<int64_t>(s) * kBK);
        lb.load(stage_b(s), static_cast<int64_t>(s) * kBK);
      }
      arch::cp_async_commit();
    }

#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int f = 0; f < 4; ++f) acc[i][j][f] = 0.f;

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wm = (warp >> 2) * kWarpM, wn = (warp & 3) * kWarpN;
    for (int kt = 0; kt < ktiles; ++kt) {
      arch::cp_async_wait<kStages - 2>();
      __syncthreads();
      const int next = kt + kStages - 1;
      if (next < ktiles) {
        la.load(stage_a(next % kStages), static_cast<int64_t>(next) * kBK);
        lb.load(stage_b(next % kStages), static_cast<int64_t>(next) * kBK);
      }
      arch::cp_async_commit();

      const uint32_t sa = stage_a(kt % kStages), sb = stage_b(kt % kStages);
#pragma unroll
      for (int kk = 0; kk < kBK / 16; ++kk) {
        // B fragments for the warp's 32 columns, then one A fragment at a
        // time: 12 live fragment registers instead of 24 keeps the kernel
        // within 128 registers (2 CTAs per SM) without spills.
        uint32_t bf[2][4];
#pragma unroll
        for (int j = 0; j < 2; ++j) load_b_frag2<MB>(bf[j], sb, wn + j * 16, kk, lane);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          uint32_t af[4];
          load_a_frag<MA>(af, sa, wm + i * 16, kk, lane);
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const uint32_t b[2] = {bf[j >> 1][(j & 1) * 2], bf[j >> 1][(j & 1) * 2 + 1]};
            arch::mma_bf16_16816(acc[i][j], af, b);
          }
        }
      }
    }
    arch::cp_async_wait<0>();
  }
};

// The accumulator as common/epilogues.cuh sees it. Thread slots: 4 m16
// tiles x 2 row halves; the 4 warps along N hold different columns of a row.
struct FragView {
  Accum& acc;
  static constexpr int kSlots = 8, kColGroups = 4, kThreads = sm80::kThreads;

  __device__ int slot_row(int slot) const {
    return (threadIdx.x >> 7) * kWarpM + (slot >> 1) * 16 + ((threadIdx.x & 31) >> 2) +
           (slot & 1) * 8;
  }
  __device__ int col_group() const { return (threadIdx.x >> 5) & 3; }
  __device__ int thread() const { return threadIdx.x; }
  __device__ void sync() const { __syncthreads(); }

  // The warp's 4 n8 tiles are one group of 4: lane q gets columns wn + 8q ...
  template <class Fn>
  __device__ __forceinline__ void for_each_chunk8(Fn&& fn) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wm = (warp >> 2) * kWarpM, wn = (warp & 3) * kWarpN;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float2 p[4] = {{acc[i][0][2 * h], acc[i][0][2 * h + 1]},
                             {acc[i][1][2 * h], acc[i][1][2 * h + 1]},
                             {acc[i][2][2 * h], acc[i][2][2 * h + 1]},
                             {acc[i][3][2 * h], acc[i][3][2 * h + 1]}};
        float v[8];
        quad_transpose(p, v);
        fn(i * 2 + h, wm + i * 16 + (lane >> 2) + h * 8, wn + 8 * (lane & 3), v);
      }
  }

  template <class Fn>
  __device__ __forceinline__ void for_each_pair(Fn&& fn) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wm = (warp >> 2) * kWarpM, wn = (warp & 3) * kWarpN;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h)
          fn(i * 2 + h, wm + i * 16 + (lane >> 2) + h * 8, wn + j * 8 + (lane & 3) * 2,
             acc[i][j][2 * h], acc[i][j][2 * h + 1]);
  }
};

// kMinCtas: CTAs per SM the register budget must allow (2 caps a thread at
// 128 registers). Chosen per product: heavy epilogues spill at 2.
template <Grouping G, Major MA, Major MB, bool kGatherA, EpiloguePolicy Epi, int kMinCtas>
__global__ void __launch_bounds__(kThreads, kMinCtas)
    grouped_gemm_kernel(const GemmArgs args, const typename Epi::Params ep) {
  extern __shared__ __align__(1024) char smem[];
  const Scheduler<G, kBM, kBN> sched{args.schedule};
  const int total = sched.total();
  for (int k = 0, id = tile_of(0); id < total; id = tile_of(++k)) {
    const Tile t = sched.at(id);
    Accum acc;
    Mainloop<G, MA, MB, kGatherA>::run(args, t, smem, acc);
    FragView frag{acc};
    Epi::template apply<kBM, kBN>(ep, args.schedule, t, frag, smem + kMainloopSmem);
    __syncthreads();
  }
}

}  // namespace sonicmoe::gemm::sm80
