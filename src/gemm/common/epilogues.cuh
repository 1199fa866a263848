// Epilogue policies of the six products, shared by every engine.
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
#pragma once

#include <cuda_bf16.h>

#include <concepts>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "arch/sm80.cuh"
#include "common/activation.hpp"
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

// A tile's deferred stores: D 16-byte values per thread, in registers (the
// kernel indexes v by constants only), and where their tile lies.
template <int D>
struct Deferred {
  uint4 v[D];
  int64_t m0, n0;
  int rows;
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

// out[row][col] = acc (+ bias[col]) as bf16. Grouping::M: row = position
// (Y, dX~). Grouping::K: row = M index of expert e's matrix (dW1, dW2).
struct StoreEpilogue : NoPrefetch {
  struct Params {
    bf16_t* out;
    int64_t ld;
    int64_t expert_stride;  // Grouping::K: M * N; Grouping::M: 0
    const bf16_t* bias;     // [E][N] or null
  };
  template <int kBM, int kThreads>
  static constexpr int smem_bytes() {
    return 0;
  }

  template <int kBM, int kBN, class F>
  __device__ static void apply(const Params& p, const Schedule& s, const Tile& t, F& f, char*) {
    bf16_t* out = p.out + t.expert * p.expert_stride;
    const bf16_t* bias = p.bias ? p.bias + t.expert * s.N : nullptr;
    if (bias) {
      f.for_each_chunk8([&](auto, int, int r, int c, float(&v)[8]) {
        const int64_t col = t.n0 + c;
        if (r >= t.rows || col >= s.N) return;  // N is a multiple of 8: whole chunks
        add_bias8(v, bias + col);
        arch::stg_128(out + (t.m0 + r) * p.ld + col, pack8(v));
      });
    } else {
      f.for_each_chunk8_bf16([&](auto, int, int r, int c, uint4 v) {
        const int64_t col = t.n0 + c;
        if (r >= t.rows || col >= s.N) return;
        arch::stg_128(out + (t.m0 + r) * p.ld + col, v);
      });
    }
  }
};

// Up-projection: H = acc + b1 (kept for backward in training mode) and
// A = act(H) (temporary). Gated: the pair (col, col+1) is (gate_j, up_j)
// with j = col / 2. A is computed from the fp32 values, H rounded to bf16.
// Both are computed on the pairs as the accumulator holds them. Gated H is
// stored in the order the accumulator holds it (h_stored_column, types.hpp):
// a lane's 4 pairs of a 32-column block are one 16-byte store as they are,
// and the short last block (16 columns) takes its 2 pairs as 8 bytes, so
// H needs no transposes; the Hopper cooperative kernel also defers those
// stores into the next tile's mainloop (below), holding the tile's packed
// H, 64 registers per thread: together 1.5-4% of the up-projection
// (docs/NOTES.md). Non-gated H and A are transposed as bf16 words for
// 16-byte stores: a word transpose costs half the shuffles and selects of
// a float2 one (the fp32 transposes were 30% of the epilogue's samples).
// Per chunk pair (rows r, r + 8): gated A, whose 4 values per row are a
// quarter of a word transpose each, takes one transpose for both rows.
template <Activation Act>
struct UpProjEpilogue : NoPrefetch {
  struct Params {
    bf16_t* h;           // [N][R] in h's layout, or null (inference)
    bf16_t* a;           // [N][n]
    const bf16_t* bias;  // [E][R] or null
    int64_t n;           // intermediate size
  };
  template <int kBM, int kThreads>
  static constexpr int smem_bytes() {
    return 0;
  }

  // H's stores may be deferred, one per accumulator chunk of the view:
  // 64 KiB of the 96 KiB a 128 x 256 tile writes.
  template <class F>
  static constexpr int kDeferredChunks = F::kChunks;

  template <int kBM, int kBN, class F>
  __device__ static void apply(const Params& p, const Schedule& s, const Tile& t, F& f, char*) {
    run(p, s, t, f, [&](auto, int r, int64_t base, uint4 v) {
      if (r < t.rows) store_h(p, s.N, t.m0 + r, base, v);
    });
  }
  template <int kBM, int kBN, class F, int D>
  __device__ static void apply(const Params& p, const Schedule& s, const Tile& t, F& f, char*,
                               Deferred<D>& d) {
    static_assert(D == F::kChunks);
    d.m0 = t.m0, d.n0 = t.n0, d.rows = t.rows;
    run(p, s, t, f, [&](auto k, int, int64_t, uint4 v) { d.v[decltype(k)::value] = v; });
  }
  // Deferred chunk i: chunk i's H row and columns of d's tile.
  template <int i, class F, int D>
  __device__ static void drain(const Params& p, const Schedule& s, const F& f,
                               const Deferred<D>& d) {
    if (!p.h) return;
    const int r = f.template chunk_row<i>();
    const int64_t base = d.n0 + f.template chunk_col<i>() - 8 * (threadIdx.x & 3);
    if (r < d.rows) store_h(p, s.N, d.m0 + r, base, d.v[i]);
  }

 private:
  // The lane's H values of the 32-column block at base of row `row`: gated,
  // its 4 pairs as the accumulator holds them (h's layout); otherwise the 8
  // columns base + 8 q .. after the transpose.
  __device__ static void store_h(const Params& p, int64_t R, int64_t row, int64_t base, uint4 v) {
    const int q = threadIdx.x & 3;
    if constexpr (is_gated(Act)) {
      // A block before R & ~31 is whole; the short last block (16 columns)
      // takes pairs 0 and 1, 8 bytes.
      const bool full = base < (R & ~int64_t{31});
      arch::stg_128_or_64(p.h + row * R + base + (full ? 8 : 4) * q, v, full, base < R);
    } else {
      if (base + 8 * q < R) arch::stg_128(p.h + row * R + base + 8 * q, v);
    }
  }

  // store(k, row, base, v): H's values of chunk k (tile row `row`, the
  // block at column base) for store_h.
  template <class F, class StoreH>
  __device__ static void run(const Params& p, const Schedule& s, const Tile& t, F& f,
                             StoreH&& store) {
    const int64_t R = s.N;
    const bf16_t* bias = p.bias ? p.bias + t.expert * R : nullptr;
    const int q = threadIdx.x & 3;
    // base: the chunk's first column; the lane's pair j is at base + 8 j +
    // 2 q. R is a multiple of 8 (whole groups), of 16 when gated (R = 2n,
    // whole A vectors).
    auto base_of = [&](auto k0) {
      return t.n0 + f.template chunk_col<decltype(k0)::value>() - 8 * q;
    };
    auto add_bias = [&](int64_t base, float2(&lo)[4], float2(&hi)[4]) {
      if (!bias) return;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if (base + 8 * j >= R) continue;
        const float2 b =
            arch::unpack_bf16x2(*reinterpret_cast<const uint32_t*>(bias + base + 8 * j + 2 * q));
        lo[j].x += b.x, lo[j].y += b.y, hi[j].x += b.x, hi[j].y += b.y;
      }
    };
    f.for_each_chunk_pair([&](auto k0, auto k1, float2(&lo)[4], float2(&hi)[4]) {
      const int64_t base = base_of(k0);
      add_bias(base, lo, hi);
      const int r0 = f.template chunk_row<decltype(k0)::value>();
      const int r1 = f.template chunk_row<decltype(k1)::value>();
      if (p.h) {
        if constexpr (is_gated(Act)) {
          store(k0, r0, base, pack_pairs(lo));
          store(k1, r1, base, pack_pairs(hi));
        } else {
          store(k0, r0, base, quad_transpose_bf16(lo));
          store(k1, r1, base, quad_transpose_bf16(hi));
        }
      }
      if constexpr (is_gated(Act)) {
        // Word w of lane m holds A columns base / 2 + 4 j + m for j = 2 (w & 1),
        // 2 (w & 1) + 1, of row r0 (w < 2) or r1. After the transpose lane q
        // holds word q of every lane: A columns base / 2 + 8 (q & 1) ..+7 of
        // row r0 or r1, in the order 0 4 1 5 2 6 3 7, which the byte
        // permutes put straight.
        uint32_t w[4] = {arch::pack_bf16x2(act::gated<Act>(lo[0].x, lo[0].y),
                                           act::gated<Act>(lo[1].x, lo[1].y)),
                         arch::pack_bf16x2(act::gated<Act>(lo[2].x, lo[2].y),
                                           act::gated<Act>(lo[3].x, lo[3].y)),
                         arch::pack_bf16x2(act::gated<Act>(hi[0].x, hi[0].y),
                                           act::gated<Act>(hi[1].x, hi[1].y)),
                         arch::pack_bf16x2(act::gated<Act>(hi[2].x, hi[2].y),
                                           act::gated<Act>(hi[3].x, hi[3].y))};
        const uint4 v = quad_transpose_words(w);
        const int r = q < 2 ? r0 : r1;
        const int64_t col = base / 2 + 8 * (q & 1);
        if (r < t.rows && col < p.n)
          arch::stg_128(p.a + (t.m0 + r) * p.n + col,
                        uint4{__byte_perm(v.x, v.y, 0x5410), __byte_perm(v.z, v.w, 0x5410),
                              __byte_perm(v.x, v.y, 0x7632), __byte_perm(v.z, v.w, 0x7632)});
      } else {
        float2 a0[4], a1[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          a0[j] = float2{act::inner<Act>(lo[j].x), act::inner<Act>(lo[j].y)};
          a1[j] = float2{act::inner<Act>(hi[j].x), act::inner<Act>(hi[j].y)};
        }
        const uint4 v0 = quad_transpose_bf16(a0), v1 = quad_transpose_bf16(a1);
        const bool col_ok = base + 8 * q < R;
        if (col_ok && r0 < t.rows) arch::stg_128(p.a + (t.m0 + r0) * p.n + base + 8 * q, v0);
        if (col_ok && r1 < t.rows) arch::stg_128(p.a + (t.m0 + r1) * p.n + base + 8 * q, v1);
      }
    });
  }
};

// The dH kernel's epilogue. The accumulator is dA' = dO[t] W2_e for columns
// j of the intermediate size. With A recomputed from the saved H:
//   dS partial = sum_j dA'_j A_j  (this tile's columns; reduced later)
//   dA = s dA';  dH = act'(H) (.) dA;  A' = s A
// dS partials are combined across column groups in shared memory in a fixed
// order (bitwise reproducible), one value per (row, N tile).
// The prefetch stages the tile's scores and copies H's first kAhead chunks
// while the mainloop runs: staged at the epilogue's start, they cost two
// dependent global loads and a third for H before any arithmetic, at every
// tile. The scores come in position order (kernels::scores_by_position), so
// that a row's score is one copy, not a load of its pair id and then another.
template <Activation Act>
struct DHEpilogue {
  struct Params {
    const bf16_t* h;      // [N][R] in h's layout (h_stored_column)
    const float* scores;  // [N]: the score of the pair at each position
    bf16_t* dh;           // [N][R]
    bf16_t* ap;           // [N][n]: s * A
    float* ds_part;       // [N][n_tiles]
  };
  static constexpr int kMaxColGroups = 4;
  // H is loaded kAhead chunks before its use, by cp.async into a ring of
  // kRing slots per thread: loaded into registers, the loads ahead made the
  // epilogue spill. A slot is refilled one chunk after it was read (the
  // ring has one slot more than the distance), so no copy can overtake the
  // read of what it overwrites.
  static constexpr int kAhead = 2, kRing = kAhead + 1;
  static constexpr int kVecs = is_gated(Act) ? 2 : 1;  // 16-byte H vectors per chunk
  static constexpr int64_t kCols = is_gated(Act) ? 2 : 1;  // H columns per A column
  template <int kBM>
  static constexpr int ring_offset() {
    return kBM * (kMaxColGroups + 1) * static_cast<int>(sizeof(float));
  }
  template <int kBM, int kThreads>
  static constexpr int smem_bytes() {
    return ring_offset<kBM>() + kRing * kVecs * kThreads * 16;
  }
  // [kBM][kColGroups] dS partials, then [kBM] scores.
  template <int kBM, class F>
  __device__ static float* scores_smem(char* smem) {
    return reinterpret_cast<float*>(smem) + kBM * F::kColGroups;
  }
  // Thread-private ring slot v of chunk k (conflict-free: by thread).
  template <int kBM, class F>
  __device__ static uint32_t slot_addr(char* smem, const F& f, int k, int v) {
    static_assert(ring_offset<kBM>() % 16 == 0);
    return arch::smem_addr(smem + ring_offset<kBM>()) +
           (f.thread() + ((k % kRing) * kVecs + v) * F::kThreads) * 16;
  }
  // Chunk k's H: one cp.async group, empty past the last chunk.
  template <int kBM, int k, class F>
  __device__ static void load_h(const Params& p, const Schedule& s, const Tile& t, const F& f,
                                char* smem) {
    if constexpr (k < F::kChunks) {
      const int r = f.template chunk_row<k>();
      const int64_t col = t.n0 + f.template chunk_col<k>();
      const bool ok = r < t.rows && col < s.N;
      const int64_t R = kCols * s.N;
      const bf16_t* hr = p.h + (t.m0 + (ok ? r : 0)) * R;
      if constexpr (is_gated(Act)) {
        // H columns 2 col .. 2 col + 15 in h's layout (h_stored_column):
        // in their block of G groups, pair b of groups a and a + 1 (A
        // columns col + b, col + 4 + b) is one 8-byte piece at 2 (G b + a),
        // a = 0 or 2 (the first or second half of a 32-column block).
        // Piece b goes to bytes 8 b of the slot: word 2 b + u then holds A
        // column col + b + 4 u (apply undoes it).
        const int64_t c = ok ? 2 * col : 0, block = c & ~int64_t{31};
        const int64_t G = R - block >= 32 ? 4 : 2;
        const bf16_t* hp = hr + block + (c - block) / 4;
#pragma unroll
        for (int b = 0; b < 4; ++b)
          arch::cp_async_8(slot_addr<kBM>(smem, f, k, b >> 1) + 8 * (b & 1), hp + 2 * G * b,
                           ok ? 8u : 0u);
      } else {
        arch::cp_async_16(slot_addr<kBM>(smem, f, k, 0), hr + (ok ? col : 0), ok ? 16u : 0u);
      }
    }
    arch::cp_async_commit();
  }

  // The scores join chunk 0's group.
  template <int kBM, class F>
  __device__ static void prefetch(const Params& p, const Schedule& s, const Tile& t, F& f,
                                  char* smem) {
    float* score = scores_smem<kBM, F>(smem);
    for (int r = f.first_row() + f.thread(); r < f.first_row() + F::kRows; r += F::kThreads) {
      const bool ok = r < t.rows && t.m0 + r < s.positions;  // clamped: corrupt metadata
      arch::cp_async_4(arch::smem_addr(score + r), p.scores + (ok ? t.m0 + r : 0), ok ? 4u : 0u);
    }
    static_for<kAhead>([&](auto k) { load_h<kBM, decltype(k)::value>(p, s, t, f, smem); });
  }

  template <int kBM, int kBN, class F>
  __device__ static void apply(const Params& p, const Schedule& s, const Tile& t, F& f,
                               char* smem) {
    static_assert(F::kColGroups <= kMaxColGroups);
    const int64_t n = s.N;
    const int64_t R = kCols * n;
    float* part = reinterpret_cast<float*>(smem);  // [kBM][kColGroups]
    const float* score = scores_smem<kBM, F>(smem);
    arch::cp_async_wait<kAhead - 1>();  // chunk 0's group, with this thread's scores
    f.sync();                           // ... and every other thread's

    float ds[F::kSlots] = {};
    f.for_each_chunk8([&](auto k, int slot, int r, int c, float(&d)[8]) {
      constexpr int kk = decltype(k)::value;
      arch::cp_async_wait<kAhead - 1>();  // chunk kk's group has landed
      uint4 hv[kVecs];
#pragma unroll
      for (int v = 0; v < kVecs; ++v) hv[v] = arch::lds_128(slot_addr<kBM>(smem, f, kk, v));
      load_h<kBM, kk + kAhead>(p, s, t, f, smem);
      const int64_t col = t.n0 + c;
      if (r >= t.rows || col >= n) return;  // n is a multiple of 8: whole chunks
      const int64_t row = t.m0 + r;
      const float sc = score[r];
      float ap[8];
      if constexpr (is_gated(Act)) {
        // (g_j, u_j) for the 8 A columns: A column i is word 2 (i & 3) +
        // i / 4 of the slot (load_h).
        const uint32_t sw[8] = {hv[0].x, hv[0].y, hv[0].z, hv[0].w,
                                hv[kVecs - 1].x, hv[kVecs - 1].y, hv[kVecs - 1].z, hv[kVecs - 1].w};
        uint32_t hw[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) hw[i] = sw[2 * (i & 3) + i / 4];
        uint32_t dw[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const float2 gu = arch::unpack_bf16x2(hw[i]);
          const float a = act::gated<Act>(gu.x, gu.y);
          ds[slot] += d[i] * a;
          float dg, du;
          act::gated_grad<Act>(gu.x, gu.y, sc * d[i], dg, du);
          dw[i] = arch::pack_bf16x2(dg, du);
          ap[i] = sc * a;
        }
        bf16_t* dp = p.dh + row * R + 2 * col;
        arch::stg_128(dp, uint4{dw[0], dw[1], dw[2], dw[3]});
        arch::stg_128(dp + 8, uint4{dw[4], dw[5], dw[6], dw[7]});
      } else {
        const uint32_t hw[4] = {hv[0].x, hv[0].y, hv[0].z, hv[0].w};
        float dh[8];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float2 x = arch::unpack_bf16x2(hw[i]);
          const float a0 = act::inner<Act>(x.x), a1 = act::inner<Act>(x.y);
          ds[slot] += d[2 * i] * a0 + d[2 * i + 1] * a1;
          dh[2 * i] = sc * d[2 * i] * act::inner_grad<Act>(x.x);
          dh[2 * i + 1] = sc * d[2 * i + 1] * act::inner_grad<Act>(x.y);
          ap[2 * i] = sc * a0;
          ap[2 * i + 1] = sc * a1;
        }
        arch::stg_128(p.dh + row * R + col, pack8(dh));
      }
      arch::stg_128(p.ap + row * n + col, pack8(ap));
    });
    arch::cp_async_wait<0>();  // the empty groups past the last chunk

    // The 4 lanes of a quad share a row: reduce them, then the column groups.
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int slot = 0; slot < F::kSlots; ++slot) {
      float v = ds[slot];
      v += __shfl_xor_sync(0xffffffffu, v, 1);
      v += __shfl_xor_sync(0xffffffffu, v, 2);
      if ((lane & 3) == 0) part[f.slot_row(slot) * F::kColGroups + f.col_group()] = v;
    }
    f.sync();
    for (int r = f.first_row() + f.thread(); r < t.rows && r < f.first_row() + F::kRows;
         r += F::kThreads) {
      float v = part[r * F::kColGroups];
#pragma unroll
      for (int g = 1; g < F::kColGroups; ++g) v += part[r * F::kColGroups + g];
      p.ds_part[(t.m0 + r) * s.n_tiles + t.n0 / kBN] = v;
    }
  }
};

}  // namespace sonicmoe::gemm
