// The dH kernel epilogue policy: dH, A' and the dS partials (the interface: epilogue.cuh).
#pragma once

#include <cstdint>

#include "arch/sm80.cuh"
#include "common/activation.hpp"
#include "gemm/common/epilogue.cuh"

namespace sonicmoe::gemm {

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
  template <class F>
  __device__ static const bf16_t* h_tile(const Params& p, const Schedule& s, const Tile& t) {
    return tile_base<F>(p.h + t.m0 * (kCols * s.N));  // epilogue.cuh
  }
  // Chunk k's H: one cp.async group, empty past the last chunk. Offsets
  // from the tile's first row are 32-bit and unsigned (a tile's rows span
  // less than 2^31 elements: n <= 2^20, api.cpp); 64-bit ones cost each
  // chunk a wide multiply and its carries, in an epilogue bound by its
  // issue rate.
  template <int kBM, int k, class F>
  __device__ static void load_h(const bf16_t* h, const Schedule& s, const Tile& t, const F& f,
                                char* smem) {
    if constexpr (k < F::kChunks) {
      const int r = f.template chunk_row<k>();
      const uint32_t N = static_cast<uint32_t>(s.N), R = static_cast<uint32_t>(kCols) * N;
      const uint32_t col = static_cast<uint32_t>(t.n0) + f.template chunk_col<k>();
      const bool ok = r < t.rows && col < N;
      const uint32_t row = ok ? static_cast<uint32_t>(r) * R : 0u;
      if constexpr (is_gated(Act)) {
        // H columns 2 col .. 2 col + 15 in h's layout (h_stored_column):
        // in their block of G groups, pair b of groups a and a + 1 (A
        // columns col + b, col + 4 + b) is one 8-byte piece at 2 (G b + a),
        // a = 0 or 2 (the first or second half of a 32-column block).
        // Piece b goes to bytes 8 b of the slot: word 2 b + u then holds A
        // column col + b + 4 u (apply undoes it).
        const uint32_t c = ok ? 2 * col : 0u, block = c & ~31u;
        const uint32_t G = R - block >= 32 ? 4 : 2;
        const uint32_t piece = row + block + (c - block) / 4;
#pragma unroll
        for (int b = 0; b < 4; ++b)
          arch::cp_async_8(slot_addr<kBM>(smem, f, k, b >> 1) + 8 * (b & 1),
                           h + (piece + 2 * G * b), ok ? 8u : 0u);
      } else {
        arch::cp_async_16(slot_addr<kBM>(smem, f, k, 0), h + (row + (ok ? col : 0u)),
                          ok ? 16u : 0u);
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
    const bf16_t* h = h_tile<F>(p, s, t);
    static_for<kAhead>([&](auto k) { load_h<kBM, decltype(k)::value>(h, s, t, f, smem); });
  }

  template <int kBM, int kBN, class F>
  __device__ static void apply(const Params& p, const Schedule& s, const Tile& t, F& f,
                               char* smem) {
    static_assert(F::kColGroups <= kMaxColGroups);
    const int n = static_cast<int>(s.N), R = static_cast<int>(kCols) * n;
    // The tile's first rows; offsets from them in 32 bits (load_h).
    bf16_t* const dh_tile = tile_base<F>(p.dh + t.m0 * (kCols * s.N));
    bf16_t* const ap_tile = tile_base<F>(p.ap + t.m0 * s.N);
    const bf16_t* const h = h_tile<F>(p, s, t);
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
      load_h<kBM, kk + kAhead>(h, s, t, f, smem);
      const int col = static_cast<int>(t.n0) + c;
      if (r >= t.rows || col >= n) return;  // n is a multiple of 8: whole chunks
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
        bf16_t* dp = dh_tile + static_cast<uint32_t>(r * R + 2 * col);
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
        arch::stg_128(dh_tile + static_cast<uint32_t>(r * R + col), pack8(dh));
      }
      arch::stg_128(ap_tile + static_cast<uint32_t>(r * n + col), pack8(ap));
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
