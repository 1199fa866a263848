// Hopper-only epilogue policies: the ones that store through the TMA and so
// need a tensor map and shared memory of their own beside the stages.
#pragma once

#include <cuda.h>

#include "arch/sm90.cuh"
#include "gemm/common/epilogues.cuh"
#include "gemm/sm90/kernel.cuh"

namespace sonicmoe::gemm::sm90 {

// The up-projection with H stored by TMA: each consumer warpgroup writes its
// 64 x 256 block of H (32 KiB) into a buffer of its own, in the map's
// 128-byte swizzle, and its leader issues four 64 x 64 box stores; the
// warpgroup goes on to the next tile's MMAs while they drain. With direct
// 16-byte stores the consumers waited for the store path at every tile (H
// is 64 of the 96 KiB a tile writes; without it the 7b-n256 up-projection
// ran 7% faster: docs/NOTES.md). A stays a direct store: the 64 KiB of
// buffers already take one of the four stages (3 x 48 KiB lost nothing).
//
// Contract, per warpgroup (128 threads, barrier F::sync):
//   leader: bulk_wait_read<0>   the previous tile's boxes have left the buffer
//   sync                        nobody writes before that
//   all:    st.shared H pieces, fence.proxy.async (the TMA reads them
//           through the async proxy)
//   sync                        every piece written
//   leader: 4 x tma_store_2d, bulk_commit
//   finish (after the last tile): leader bulk_wait<0>, so that the CTA's
//   shared memory outlives the reads.
// A block whose rows are not all the tile's (an expert's last, partial tile)
// would have the box write the next expert's rows: it is stored directly.
// Columns past R are clipped by the TMA (the map's extent).
template <Activation Act>
struct UpProjTmaEpilogue : NoPrefetch {
  using Base = UpProjEpilogue<Act>;
  struct Params {
    CUtensorMap h_map;  // H as [N rows][R columns], boxes of 64 x 64 (tma_rows_2d)
    typename Base::Params base;
  };
  static constexpr int kBufferBytes = 64 * 256 * 2;  // one warpgroup's rows of a 128 x 256 tile
  template <int kBM, int kThreads>
  static constexpr int smem_bytes() {
    return kBufferBytes;
  }

  template <int kBM, int kBN, class F>
  __device__ static void apply(const Params& p, const Schedule& s, const Tile& t, F& f,
                               char* buffer) {
    static_assert(F::kRows * kBN * 2 <= kBufferBytes && kBN % 64 == 0);
    const int first = f.first_row();
    const bool leader = f.thread() == 0;
    const bool by_tma = p.base.h != nullptr && t.rows >= first + F::kRows;
    if (!by_tma) {
      Base::template apply<kBM, kBN>(p.base, s, t, f, buffer);
      return;
    }
    if (leader) hw::bulk_wait_read<0>();
    f.sync();
    Base::run(p.base, s, t, f, [&](int r, int64_t col, uint4 v) {
      const int c = static_cast<int>(col - t.n0);  // 0 .. kBN - 8
      hw::sts_128(buffer + (c >> 6) * (F::kRows * 128) + swz(r - first, (c & 63) >> 3), v);
    });
    hw::fence_proxy_async();
    f.sync();
    if (leader) {
#pragma unroll
      for (int b = 0; b < kBN / 64; ++b)
        hw::tma_store_2d(&p.h_map, buffer + b * (F::kRows * 128), static_cast<int>(t.n0) + b * 64,
                         static_cast<int>(t.m0) + first);
      hw::bulk_commit();
    }
  }

  template <class F>
  __device__ static void finish(F& f) {
    if (f.thread() == 0) hw::bulk_wait<0>();
  }
};

}  // namespace sonicmoe::gemm::sm90
