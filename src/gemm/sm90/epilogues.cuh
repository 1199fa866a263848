// Hopper-only epilogue policies: the ones that hand part of their stores to
// the producer warpgroup, which the shared policies (common/epilogues.cuh)
// know nothing about.
#pragma once

#include "arch/sm80.cuh"
#include "arch/sm90.cuh"
#include "gemm/common/epilogues.cuh"

namespace sonicmoe::gemm::sm90 {

namespace hw = arch::sm90;

// One consumer warpgroup's staged H block and its handoff to the producer:
// 64 rows x 256 columns of bf16 (16-byte piece c of row r at r 512 + 16 (c
// ^ (r & 7)): the consumers' writes, 8 rows x 4 pieces per instruction, and
// the producer's reads, one row per instruction, both take 4 wavefronts per
// 512 bytes), where it goes, and two barriers of 128 arrivals each.
struct HandoffBlock {
  static constexpr int kRows = 64, kPieces = 32, kDataBytes = kRows * kPieces * 16;
  static constexpr int kBytes = kDataBytes + 64;
  char* base;
  __device__ char* piece(int r, int c) const { return base + r * 512 + 16 * (c ^ (r & 7)); }
  __device__ int64_t* m0() const { return reinterpret_cast<int64_t*>(base + kDataBytes); }
  __device__ int* n0() const { return reinterpret_cast<int*>(base + kDataBytes + 8); }
  __device__ int* rows() const { return reinterpret_cast<int*>(base + kDataBytes + 12); }
  __device__ uint64_t* full() const { return reinterpret_cast<uint64_t*>(base + kDataBytes + 16); }
  __device__ uint64_t* free() const { return reinterpret_cast<uint64_t*>(base + kDataBytes + 24); }
};

// The up-projection with H's stores done by the producer warpgroup. With
// direct 16-byte stores the consumers wait for the store path at every tile
// (H is 64 of the 96 KiB a tile writes; without it the 7b-n256
// up-projection ran 7% faster), and TMA stores from shared memory lost to
// the TMA unit's other work, the next stages' weight loads (docs/NOTES.md).
// The producer mostly waits for free stages; it copies a staged block out
// while it waits (Kernel::produce_m).
//
// Handoff contract, per consumer warpgroup w and its tile sequence number
// q (cooperative tiles: every tile of the CTA, both warpgroups):
//   consumers: q > 0: wait free(w) for parity (q - 1) & 1 (block q - 1
//              copied out); st.shared H; the leader writes m0, n0, rows;
//              all 128 arrive on full(w) (release).
//   producer:  handoff q of w: full(w) at parity q & 1 (test while waiting
//              for an empty stage, blocking after its last stage); each
//              thread copies rows 16 warp .. + 15 of the block, its lane's
//              piece of each, then arrives on free(w) (its loads done).
//   The producer expects one handoff per tile per warpgroup, so the
//   consumers hand over every tile with H, partial ones included (rows
//   says how many are the tile's); without H (inference) there is none.
template <Activation Act>
struct UpProjHandoffEpilogue : NoPrefetch {
  using Base = UpProjEpilogue<Act>;
  using Params = typename Base::Params;
  static constexpr bool kHandoff = true;
  template <int kBM, int kThreads>
  static constexpr int smem_bytes() {
    return HandoffBlock::kBytes;
  }
  __device__ static bool handoffs(const Params& p) { return p.h != nullptr; }

  template <int kBM, int kBN, class F>
  __device__ static void apply(const Params& p, const Schedule& s, const Tile& t, F& f, char* epi,
                               int seq) {
    static_assert(F::kRows == HandoffBlock::kRows && kBN == 8 * HandoffBlock::kPieces);
    if (!handoffs(p)) {
      Base::template apply<kBM, kBN>(p, s, t, f, epi);
      return;
    }
    const HandoffBlock b{epi};
    const int first = f.first_row();
    if (seq > 0) hw::mbar_wait(b.free(), (seq - 1) & 1);
    Base::run(p, s, t, f, [&](int r, int64_t col, uint4 v) {
      hw::sts_128(b.piece(r - first, static_cast<int>(col - t.n0) >> 3), v);
    });
    if (f.thread() == 0) {
      *b.m0() = t.m0 + first;
      *b.n0() = static_cast<int>(t.n0);
      *b.rows() = max(0, min(HandoffBlock::kRows, t.rows - first));
    }
    hw::mbar_arrive(b.full());
  }

  // Producer thread `thread` (0 .. 127): its part of a handed-over block.
  __device__ static void copy_out(const Params& p, const Schedule& s, char* epi, int thread) {
    const HandoffBlock b{epi};
    const int64_t m0 = *b.m0(), R = s.N;
    const int rows = *b.rows(), lane = thread & 31, w = thread >> 5;
    const int64_t col = *b.n0() + 8 * lane;
    if (col < R) {
#pragma unroll 4
      for (int i = 0; i < 16; ++i) {
        const int r = 16 * w + i;
        if (r < rows) arch::stg_128(p.h + (m0 + r) * R + col, hw::lds_128(b.piece(r, lane)));
      }
    }
    hw::mbar_arrive(b.free());
  }
};

template <class Epi>
inline constexpr bool kHasHandoff = requires { Epi::kHandoff; };

}  // namespace sonicmoe::gemm::sm90
