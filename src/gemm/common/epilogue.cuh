// The epilogue interface every engine's kernels share, and the pieces the
// policies build on (fragment walks, quad transposes, bf16 packing).
//
// An epilogue sees the fp32 accumulator of one tile through a fragment view
// F that its engine provides:
//   F::kSlots            row slots per thread; f.slot_row(s) its tile row
//   f.for_each_pair(fn)  fn(slot, row, col, v0, v1) for each column pair the
//                        thread owns (col even): gated activations see
//                        (gate, up) together
//   F::kColGroups        thread groups holding different columns of one row;
//                        f.col_group() this thread's (row reductions combine
//                        groups in this fixed order)
//   f.for_each_chunk8(fn) fn(k, slot, row, col, v[8]) with 8 consecutive
//                        columns from col (a multiple of 8): the same values
//                        as for_each_pair, regrouped across the 4 lanes of a
//                        quad (quad_transpose) so that stores are 16 bytes
//                        wide. k, the chunk's index (0 .. F::kChunks - 1), is
//                        a std::integral_constant; f.chunk_row<k>() and
//                        f.chunk_col<k>() say where chunk k lies without
//                        touching the accumulator (loads ahead of it)
//   f.for_each_chunk8_bf16(fn) the same chunks already rounded to bf16:
//                        fn(k, slot, row, col, uint4), for plain stores
//   F::kThreads, f.thread(), f.sync()  the epilogue's threads and a barrier
//                        over exactly them
//   F::kRows, f.first_row()  the tile rows those threads hold (rows
//                        first_row .. first_row + kRows - 1; several
//                        epilogues may share a tile, on disjoint rows)
//   F::kPinnedBases      whether the epilogue may hold per-tile base
//                        pointers in registers (arch::opaque) through its
//                        chunks, or must keep its registers for the view
// Rows past the tile's valid rows and columns past N are never written.
//
// A policy has two steps, both run by the epilogue's threads:
//   prefetch(p, s, t, f, smem)  before the tile's mainloop: cp.async copies
//                        of what the epilogue will read (committed as groups
//                        of their own; f's accumulator is not touched yet)
//   apply(p, s, t, f, smem)     after it, on the accumulator
// Where the mainloop waits on cp.async groups of its own (the portable
// engine's stages), the prefetch's groups come before them (sm80/kernel.cuh,
// the contract).
//
// Deferred stores (optional; the Hopper cooperative kernel uses them). A
// policy with kDeferredChunks<F> = D > 0 also has
//   apply(p, s, t, f, smem, Deferred<D>& d)  apply, but D of the thread's
//                        16-byte stores are left in d instead of issued
//   drain<i>(p, s, f, d)  issues d's store i (what apply would have stored)
// and the kernel drains a tile's d during the next tile's first stages,
// between a stage's wgmma commit and its wait: the store path then drains
// while the tensor cores run the next tile, and no shared memory is spent
// (every shared-memory staging of the stores lost: docs/NOTES.md).
// The policies: epilogue_store.cuh, epilogue_up_proj.cuh, epilogue_dh.cuh
// (all three through epilogues.cuh), and the Hopper dW1's transposed store
// (sm90/epilogue_transposed.cuh).
#pragma once

#include <cuda_bf16.h>

#include <concepts>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "arch/sm80.cuh"
#include "gemm/common/operand.cuh"
#include "gemm/common/scheduler.cuh"

namespace sonicmoe::gemm {

// fn(std::integral_constant<int, i>) for i = 0 .. N-1: the index is a
// constant expression in fn, so register arrays indexed by it stay registers.
template <class Fn, int... Is>
__device__ __forceinline__ void static_for_impl(Fn& fn, std::integer_sequence<int, Is...>) {
  (fn(std::integral_constant<int, Is>{}), ...);
}
template <int N, class Fn>
__device__ __forceinline__ void static_for(Fn&& fn) {
  static_for_impl(fn, std::make_integer_sequence<int, N>{});
}

// The accumulator fragments of mma.sync m16n8 and wgmma m64nN share one
// layout: lane q of a quad holds columns 8j + 2q, 8j + 2q + 1 of its row for
// every 8-column group j. Given the pairs e[j] of 4 consecutive groups
// j0 .. j0+3, quad_transpose leaves lane q with the 8 consecutive columns
// of group j0 + q: the 4 x 4 (lane, group) block is transposed. A butterfly
// in two rounds (b = 1, 2): lane q swaps with lane q ^ b the pairs whose
// group differs from q in bit b. Per pair swapped: one select to choose
// what to send, one shuffle, two selects to put what came back; nothing is
// indexed at run time. (The first version picked each register with three
// selects per round: 48 FSEL per chunk, half the epilogue of down_proj on
// 30b-n1024: docs/NOTES.md.)
template <class T, class Shfl>
__device__ __forceinline__ void quad_butterfly(T (&e)[4], Shfl&& shfl) {
  const int q = threadIdx.x & 3;
#pragma unroll
  for (int b = 1; b <= 2; b <<= 1) {
    const bool upper = (q & b) != 0;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (j & b) continue;  // j: bit b clear; its partner j | b
      const T send = upper ? e[j] : e[j | b];
      const T got = shfl(send, b);
      e[j] = upper ? got : e[j];
      e[j | b] = upper ? e[j | b] : got;
    }
  }
}

__device__ __forceinline__ void quad_transpose(float2 (&e)[4], float (&out)[8]) {
  quad_butterfly(e, [](float2 v, int b) {
    return float2{__shfl_xor_sync(0xffffffffu, v.x, b), __shfl_xor_sync(0xffffffffu, v.y, b)};
  });
#pragma unroll
  for (int pos = 0; pos < 4; ++pos) {
    out[2 * pos] = e[pos].x;
    out[2 * pos + 1] = e[pos].y;
  }
}

// The same on one word per group (two bf16): half the shuffles and selects.
__device__ __forceinline__ uint4 quad_transpose_words(uint32_t (&e)[4]) {
  quad_butterfly(e, [](uint32_t v, int b) { return __shfl_xor_sync(0xffffffffu, v, b); });
  return uint4{e[0], e[1], e[2], e[3]};
}

// On pairs rounded to bf16 first, for epilogues that store the accumulator
// as it is. Bitwise the same as pack8 of quad_transpose's result.
__device__ __forceinline__ uint4 quad_transpose_bf16(const float2 (&p)[4]) {
  uint32_t e[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) e[j] = arch::pack_bf16x2(p[j].x, p[j].y);
  return quad_transpose_words(e);
}

// The chunk walks of every engine's FragView (CRTP base), over the view's
// own chunk_pairs<k>(p) (chunk k's pairs as its accumulator holds them; its
// row slot returned), chunk_row<k>(), chunk_col<k>() and kChunks.
template <class View>
struct ChunkWalks {
  template <class Fn>
  __device__ __forceinline__ void for_each_chunk8(Fn&& fn) {
    View& f = static_cast<View&>(*this);
    static_for<View::kChunks>([&](auto k) {
      float2 p[4];
      const int slot = f.template chunk_pairs<k>(p);
      float v[8];
      quad_transpose(p, v);
      fn(k, slot, f.template chunk_row<k>(), f.template chunk_col<k>(), v);
    });
  }
  // The two chunks of the same columns in a row pair (row, row + 8), as the
  // accumulator holds them, untransposed: fn(k0, k1, lo, hi) with k0, k1
  // the chunks' indices (std::integral_constant) and lo / hi their pairs
  // (lo[j]: columns chunk_col<k0>() - 6 q + 8 j, + 1 of chunk_row<k0>(), q
  // the lane's quad position). For epilogues that compute on the pairs
  // first and transpose what they store (UpProjEpilogue).
  template <class Fn>
  __device__ __forceinline__ void for_each_chunk_pair(Fn&& fn) {
    View& f = static_cast<View&>(*this);
    static_for<View::kChunks / 2>([&](auto pi) {
      constexpr int k0 = View::template lower_chunk<decltype(pi)::value>();
      constexpr int k1 = View::template upper_chunk<decltype(pi)::value>();
      float2 lo[4], hi[4];
      f.template chunk_pairs<k0>(lo);
      f.template chunk_pairs<k1>(hi);
      fn(std::integral_constant<int, k0>{}, std::integral_constant<int, k1>{}, lo, hi);
    });
  }
  // The same chunks rounded to bf16 before the transpose: fn(k, slot, row,
  // col, uint4).
  template <class Fn>
  __device__ __forceinline__ void for_each_chunk8_bf16(Fn&& fn) {
    View& f = static_cast<View&>(*this);
    static_for<View::kChunks>([&](auto k) {
      float2 p[4];
      const int slot = f.template chunk_pairs<k>(p);
      fn(k, slot, f.template chunk_row<k>(), f.template chunk_col<k>(), quad_transpose_bf16(p));
    });
  }
};

// Four pairs rounded to bf16, in their order.
__device__ __forceinline__ uint4 pack_pairs(const float2 (&p)[4]) {
  return uint4{arch::pack_bf16x2(p[0].x, p[0].y), arch::pack_bf16x2(p[1].x, p[1].y),
               arch::pack_bf16x2(p[2].x, p[2].y), arch::pack_bf16x2(p[3].x, p[3].y)};
}

__device__ __forceinline__ uint4 pack8(const float (&v)[8]) {
  return uint4{arch::pack_bf16x2(v[0], v[1]), arch::pack_bf16x2(v[2], v[3]),
               arch::pack_bf16x2(v[4], v[5]), arch::pack_bf16x2(v[6], v[7])};
}

__device__ __forceinline__ void add_bias8(float (&v)[8], const bf16_t* bias) {
  const uint4 b = *reinterpret_cast<const uint4*>(bias);
  const uint32_t w[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = arch::unpack_bf16x2(w[i]);
    v[2 * i] += f.x;
    v[2 * i + 1] += f.y;
  }
}

template <class E>
concept EpiloguePolicy = requires {
  typename E::Params;
  { E::template smem_bytes<128, 256>() } -> std::convertible_to<int>;
};

// A tile's first row in one of an epilogue's buffers. Where the view has
// registers to spare (F::kPinnedBases), pinned by arch::opaque: each
// chunk's address is then one wide multiply-add of a 32-bit offset, where
// the compiler would otherwise fold the base back into 64-bit arithmetic
// from the buffer's start at every chunk (docs/NOTES.md).
template <class F, class T>
__device__ __forceinline__ T* tile_base(T* p) {
  if constexpr (F::kPinnedBases)
    return arch::opaque(p);
  else
    return p;
}

// A tile's deferred stores: D 16-byte values per thread, in registers (the
// kernel indexes v by constants only), and where their tile lies: base, its
// first row in the policy's output (tile_base), its first column and rows.
template <int D>
struct Deferred {
  uint4 v[D];
  bf16_t* base;
  int n0, rows;
};

// D of a policy (0: it defers nothing).
template <class Epi, class F>
__host__ __device__ constexpr int deferred_chunks() {
  if constexpr (requires { Epi::template kDeferredChunks<F>; })
    return Epi::template kDeferredChunks<F>;
  else
    return 0;
}

// The policies that read nothing but the accumulator prefetch nothing.
struct NoPrefetch {
  template <int kBM, class P, class F>
  __device__ static void prefetch(const P&, const Schedule&, const Tile&, F&, char*) {}
};

}  // namespace sonicmoe::gemm
