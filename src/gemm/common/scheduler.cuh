// Persistent tile schedulers over experts. Both read the routing offsets on
// the device, so no launch needs the per-expert counts on the host.
//
// Grouping::M (up-projection, down-projection, dH, dX~): expert e owns the
//   rows [offset_e, offset_{e+1}) of the position space; its M tiles are
//   numbered after those of experts < e by tile_offsets (a prefix sum of
//   ceil(count_e / BM), computed on the device once per layer call). A tile
//   never reaches past its expert's last row: no padding anywhere.
// Grouping::K (dW1, dW2): every expert has the same M x N output and a
//   reduction over its own rows, so the tile count is static.
//
// CTAs walk the tile list in waves (tile_of); consecutive tile ids share an
// M tile (its gathered rows stay in L2) and one expert's weights. Grouped-K
// tiles cost what their expert's load is, which varies by 100x across
// experts: they are listed heaviest expert first (expert_order).
#pragma once

#include <cstdint>


namespace sonicmoe::gemm {

enum class Grouping { M, K };

struct Tile {
  int expert;
  int64_t m0;       // first row: a position (Grouping::M) or an M index (Grouping::K)
  int rows;         // valid rows in this tile
  int64_t n0;       // first column
  int64_t k_first;  // first stored row of the K range (Grouping::K: a position)
  int64_t k_len;    // length of the K range
};

struct Schedule {
  int num_experts;
  int64_t M, N, K;                 // the fixed extents (M unused for Grouping::M)
  int64_t positions;               // N pairs: clamps tiles if the metadata is corrupt
  int n_tiles, m_tiles;            // m_tiles: Grouping::K only
  const int32_t* expert_offsets;   // [E+1]
  const int32_t* tile_offsets;     // [E+1], Grouping::M only
  const int32_t* expert_order;     // Grouping::K: experts by descending load, or null
};

// The id of a CTA's k-th tile: waves of gridDim.x tiles, walked left to
// right on even waves and right to left on odd ones. With tiles in
// descending cost (expert_order), every CTA then takes one tile of each cost
// band, heavy and light alternating, instead of the heavy end of every wave.
__device__ __forceinline__ int tile_of(int k) {
  const int g = gridDim.x, b = blockIdx.x;
  return k * g + ((k & 1) ? g - 1 - b : b);
}

template <Grouping G, int kBM, int kBN>
struct Scheduler {
  const Schedule& s;

  __device__ int total() const {
    if constexpr (G == Grouping::M) return __ldg(s.tile_offsets + s.num_experts) * s.n_tiles;
    else return s.num_experts * s.m_tiles * s.n_tiles;
  }

  __device__ Tile at(int id) const {
    Tile t;
    const int nt = id % s.n_tiles, mt = id / s.n_tiles;
    t.n0 = static_cast<int64_t>(nt) * kBN;
    if constexpr (G == Grouping::M) {
      // Largest e with tile_offsets[e] <= mt (empty experts have equal offsets).
      int lo = 0, hi = s.num_experts - 1;
      while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (__ldg(s.tile_offsets + mid) <= mt) lo = mid;
        else hi = mid - 1;
      }
      t.expert = lo;
      // Clamped so that corrupt metadata cannot move a tile out of bounds.
      const int64_t begin = max(0, __ldg(s.expert_offsets + lo));
      const int64_t end = min(s.positions, static_cast<int64_t>(__ldg(s.expert_offsets + lo + 1)));
      t.m0 = begin + static_cast<int64_t>(mt - __ldg(s.tile_offsets + lo)) * kBM;
      t.rows = static_cast<int>(min(static_cast<int64_t>(kBM), end - t.m0));
      t.k_first = 0;
      t.k_len = s.K;
    } else {
      t.expert = s.expert_order ? __ldg(s.expert_order + mt / s.m_tiles) : mt / s.m_tiles;
      t.m0 = static_cast<int64_t>(mt % s.m_tiles) * kBM;
      t.rows = static_cast<int>(min(static_cast<int64_t>(kBM), s.M - t.m0));
      t.k_first = max(0, __ldg(s.expert_offsets + t.expert));
      t.k_len = min(s.positions, static_cast<int64_t>(__ldg(s.expert_offsets + t.expert + 1))) -
                t.k_first;
    }
    return t;
  }
};

}  // namespace sonicmoe::gemm
