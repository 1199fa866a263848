// The up-projection epilogue policy: H kept, A = act(H) (the interface: epilogue.cuh).
#pragma once

#include <cstdint>

#include "arch/sm80.cuh"
#include "common/activation.hpp"
#include "gemm/common/epilogue.cuh"

namespace sonicmoe::gemm {

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
    bf16_t* h = p.h ? tile_base<F>(p.h + t.m0 * s.N) : nullptr;  // the tile's first row
    run(p, s, t, f, [&](auto, int r, int base, uint4 v) {
      if (r < t.rows) store_h(h, static_cast<int>(s.N), r, base, v);
    });
  }
  template <int kBM, int kBN, class F, int D>
  __device__ static void apply(const Params& p, const Schedule& s, const Tile& t, F& f, char*,
                               Deferred<D>& d) {
    static_assert(D == F::kChunks);
    d.base = p.h ? tile_base<F>(p.h + t.m0 * s.N) : nullptr;
    d.n0 = static_cast<int>(t.n0), d.rows = t.rows;
    run(p, s, t, f, [&](auto k, int, int, uint4 v) { d.v[decltype(k)::value] = v; });
  }
  // Deferred chunk i: chunk i's H row and columns of d's tile.
  template <int i, class F, int D>
  __device__ static void drain(const Params& p, const Schedule& s, const F& f,
                               const Deferred<D>& d) {
    if (!p.h) return;
    const int r = f.template chunk_row<i>();
    const int base = d.n0 + f.template chunk_col<i>() - 8 * (threadIdx.x & 3);
    if (r < d.rows) store_h(d.base, static_cast<int>(s.N), r, base, d.v[i]);
  }

 private:
  // The lane's H values of the 32-column block at base of tile row r (h:
  // the tile's first row): gated, its 4 pairs as the accumulator holds them
  // (h's layout); otherwise the 8 columns base + 8 q .. after the transpose.
  // Offsets are unsigned: one wide multiply-add from h.
  __device__ static void store_h(bf16_t* h, int R, int r, int base, uint4 v) {
    const int q = threadIdx.x & 3;
    if constexpr (is_gated(Act)) {
      // A block before R & ~31 is whole; the short last block (16 columns)
      // takes pairs 0 and 1, 8 bytes.
      const bool full = base < (R & ~31);
      arch::stg_128_or_64(h + static_cast<uint32_t>(r * R + base + (full ? 8 : 4) * q), v, full,
                          base < R);
    } else {
      if (base + 8 * q < R) arch::stg_128(h + static_cast<uint32_t>(r * R + base + 8 * q), v);
    }
  }

  // store(k, row, base, v): H's values of chunk k (tile row `row`, the
  // block at column base) for store_h.
  template <class F, class StoreH>
  __device__ static void run(const Params& p, const Schedule& s, const Tile& t, F& f,
                             StoreH&& store) {
    const int R = static_cast<int>(s.N), n = static_cast<int>(p.n);
    const bf16_t* bias = p.bias ? p.bias + t.expert * s.N : nullptr;
    bf16_t* a = tile_base<F>(p.a + t.m0 * p.n);  // the tile's first row; 32-bit offsets
    const int q = threadIdx.x & 3;
    // base: the chunk's first column; the lane's pair j is at base + 8 j +
    // 2 q. R is a multiple of 8 (whole groups), of 16 when gated (R = 2n,
    // whole A vectors).
    auto base_of = [&](auto k0) {
      return static_cast<int>(t.n0) + f.template chunk_col<decltype(k0)::value>() - 8 * q;
    };
    auto add_bias = [&](int base, float2(&lo)[4], float2(&hi)[4]) {
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
      const int base = base_of(k0);
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
        const int col = base / 2 + 8 * (q & 1);
        if (r < t.rows && col < n)
          arch::stg_128(a + static_cast<uint32_t>(r * n + col),
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
        const uint32_t col = static_cast<uint32_t>(base + 8 * q);
        if (col_ok && r0 < t.rows) arch::stg_128(a + (static_cast<uint32_t>(r0 * n) + col), v0);
        if (col_ok && r1 < t.rows) arch::stg_128(a + (static_cast<uint32_t>(r1 * n) + col), v1);
      }
    });
  }
};

}  // namespace sonicmoe::gemm
