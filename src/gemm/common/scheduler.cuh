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

// The Hopper producer publishes a Tile field by field (sm90/producer.cuh,
// publish): a new field needs its store there.
struct Tile {
  int expert;
  int64_t m0;       // first row: a position (Grouping::M) or an M index (Grouping::K)
  int rows;         // valid rows in this tile
  int64_t n0;       // first column
  int64_t k_first;  // first stored row of the K range (Grouping::K: a position)
  int64_t k_len;    // length of the K range
  bool solo = false;  // Pair::M: the two CTAs of the pair hold different experts' tiles
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
// With clusters of kCluster CTAs the walk is over clusters: both CTAs of a
// pair get the same id, and the scheduler gives each its half (Pair).
template <int kCluster = 1>
__device__ __forceinline__ int tile_of(int k) {
  const int g = gridDim.x / kCluster, b = blockIdx.x / kCluster;
  return k * g + ((k & 1) ? g - 1 - b : b);
}

// Which tile index the two CTAs of a 2-CTA cluster differ in (they share
// the other operand, which one TMA multicast brings to both):
//   M: one scheduled tile is 2 kBM rows of one expert, rank r taking rows
//      r kBM .. of it (tile_offsets' whole pairs). An expert with an odd
//      number of M tiles leaves its last one over; after every whole pair
//      come these odd tiles two at a time, one per CTA, each CTA loading
//      its own expert's weights (Tile::solo). (Paired within their expert,
//      every odd tile had an empty partner computing zeros: 3-4% of the
//      grouped-M tiles on the canonical configs.)
//   N: one scheduled tile is 2 kBN columns (Grouping::K only).
// tools/sched_model.py transcribes the grouped-M schedule and checks it on
// the host (CTest scheduler_model): keep it in step.
// A half that falls past the odd tiles (M) or the extents is a tile with
// rows = 0 (or columns past N): it loads zeros, stores nothing, and keeps
// its CTA in step with the other, whose barriers it shares. (Skipping it
// instead would not do for solo CTAs either: each skipped id moves a CTA a
// wave ahead of the rest, and the waves' shared rows and weights then fall
// out of L2: docs/NOTES.md.)
enum class Pair { None, M, N };

template <Grouping G, int kBM, int kBN, Pair P = Pair::None>
struct Scheduler {
  const Schedule& s;
  int rank = 0;          // the CTA's rank in its cluster (P != None)
  mutable int hint = 0;  // Grouping::M: the expert of the last tile looked up

  static constexpr int kPairM = P == Pair::M ? 2 : 1, kPairN = P == Pair::N ? 2 : 1;
  static_assert(G == Grouping::K || P != Pair::N, "grouped-M pairs split M");

  // Grouping::M: the prefix of scheduled M units (tiles, or whole pairs of
  // tiles), and with pairs that of the odd tiles left over.
  __device__ const int32_t* m_units() const {
    return s.tile_offsets + (P == Pair::M ? s.num_experts + 1 : 0);
  }
  __device__ const int32_t* odd_tiles() const { return s.tile_offsets + 2 * (s.num_experts + 1); }
  // Largest e with prefix[e] <= v (experts without units have equal
  // prefixes), from `lo` on: log2(E) dependent loads at most.
  __device__ int expert_at(const int32_t* prefix, int v, int lo) const {
    int hi = s.num_experts - 1;
    if (__ldg(prefix + lo) > v) lo = 0;  // not monotone after all: search everything
    if (lo < hi && __ldg(prefix + lo + 1) > v) hi = lo;
    while (lo < hi) {
      const int mid = (lo + hi + 1) >> 1;
      if (__ldg(prefix + mid) <= v) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  __device__ int units_m() const { return (s.m_tiles + kPairM - 1) / kPairM; }
  __device__ int units_n() const { return (s.n_tiles + kPairN - 1) / kPairN; }

  __device__ int total() const {
    if constexpr (G == Grouping::M) {
      int units = __ldg(m_units() + s.num_experts);
      if constexpr (P == Pair::M) units += (__ldg(odd_tiles() + s.num_experts) + 1) / 2;
      return units * units_n();
    } else {
      return s.num_experts * units_m() * units_n();
    }
  }

  __device__ Tile at(int id) const {
    Tile t;
    const int un = units_n();
    const int nt = (id % un) * kPairN + (kPairN > 1 ? rank : 0), mt = id / un;
    t.n0 = static_cast<int64_t>(nt) * kBN;
    if constexpr (G == Grouping::M) {
      // Largest e with units[e] <= mt (empty experts have equal offsets).
      // A CTA's ids grow (tile_of), so its experts do too: the search starts
      // at the last expert found and usually ends there, after two loads
      // instead of a chain of log2(E) dependent ones, which the consumers
      // wait for at every tile.
      const int32_t* units = m_units();
      t.k_first = 0;
      t.k_len = s.K;
      if constexpr (P == Pair::M) {
        const int pairs = __ldg(units + s.num_experts);
        if (mt >= pairs) return odd_tile(t, mt - pairs);
      }
      const int lo = expert_at(units, mt, hint);
      hint = lo;
      t.expert = lo;
      // Clamped so that corrupt metadata cannot move a tile out of bounds.
      const int64_t begin = max(0, __ldg(s.expert_offsets + lo));
      const int64_t end = min(s.positions, static_cast<int64_t>(__ldg(s.expert_offsets + lo + 1)));
      t.m0 = begin + static_cast<int64_t>(mt - __ldg(units + lo)) * kBM * kPairM +
             (kPairM > 1 ? rank * kBM : 0);
      t.rows = static_cast<int>(min(static_cast<int64_t>(kBM), end - t.m0));
      if (t.rows <= 0) {  // corrupt metadata: keep m0 on a real row
        t.rows = 0;
        t.m0 = begin;
      }
    } else {
      const int um = units_m();
      t.expert = s.expert_order ? __ldg(s.expert_order + mt / um) : mt / um;
      t.m0 = static_cast<int64_t>((mt % um) * kPairM + (kPairM > 1 ? rank : 0)) * kBM;
      t.rows = static_cast<int>(max(int64_t{0}, min(static_cast<int64_t>(kBM), s.M - t.m0)));
      t.k_first = max(0, __ldg(s.expert_offsets + t.expert));
      t.k_len = min(s.positions, static_cast<int64_t>(__ldg(s.expert_offsets + t.expert + 1))) -
                t.k_first;
    }
    return t;
  }

  // Pair::M: odd-tile unit u, this CTA's half of it (the odd tile 2 u +
  // rank, or, past the last one, an empty tile of its partner's expert).
  __device__ Tile odd_tile(Tile t, int u) const {
    const int32_t* odd = odd_tiles();
    const int count = __ldg(odd + s.num_experts);
    const int i = min(2 * u + rank, count - 1);
    const int e = expert_at(odd, i, 0);
    const int64_t begin = max(0, __ldg(s.expert_offsets + e));
    const int64_t end = min(s.positions, static_cast<int64_t>(__ldg(s.expert_offsets + e + 1)));
    const int tiles = __ldg(s.tile_offsets + e + 1) - __ldg(s.tile_offsets + e);
    t.expert = e;
    t.solo = true;
    t.m0 = begin + static_cast<int64_t>(max(0, tiles - 1)) * kBM;
    t.rows = 2 * u + rank < count && tiles > 0
                 ? static_cast<int>(min(static_cast<int64_t>(kBM), end - t.m0))
                 : 0;
    if (t.rows <= 0) {
      t.rows = 0;
      t.m0 = begin;
    }
    return t;
  }
};

}  // namespace sonicmoe::gemm
