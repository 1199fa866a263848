// One-block exclusive prefix sums of int32 values: the routing metadata's
// expert offsets and token-tile prefixes, token rounding's token offsets and
// the layer's tile offsets are all short scans (experts, token tiles,
// tokens) that one block runs in a fixed order, so they are exact and
// reproducible. Device code only; include from .cu files.
#pragma once

#include <cstdint>

#include <cub/block/block_scan.cuh>

namespace sonicmoe::kernels {

inline constexpr int kBlockScanThreads = 1024;
inline constexpr int kBlockScanItems = 4;
inline constexpr int64_t kBlockScanTile = int64_t{kBlockScanThreads} * kBlockScanItems;

// out[i] = value(0) + ... + value(i - 1) for every i in [0, n], out[n] the
// total, which every thread gets back. All kBlockScanThreads threads of the
// block call it. value(i) is read before the scan's barriers and out written
// after them, tile by tile, so `out` may alias what value reads.
template <class Value>
__device__ int32_t block_exclusive_scan(Value value, int64_t n, int32_t* out) {
  using Scan = cub::BlockScan<int32_t, kBlockScanThreads>;
  __shared__ typename Scan::TempStorage storage;
  int32_t carry = 0;
  for (int64_t base = 0; base < n; base += kBlockScanTile) {
    const int64_t first = base + int64_t{threadIdx.x} * kBlockScanItems;
    int32_t v[kBlockScanItems];
#pragma unroll
    for (int i = 0; i < kBlockScanItems; ++i) v[i] = first + i < n ? value(first + i) : 0;
    int32_t tile_total;
    Scan(storage).ExclusiveSum(v, v, tile_total);
#pragma unroll
    for (int i = 0; i < kBlockScanItems; ++i)
      if (first + i < n) out[first + i] = carry + v[i];
    carry += tile_total;
    __syncthreads();  // the scan storage is reused by the next tile
  }
  if (threadIdx.x == 0) out[n] = carry;
  return carry;
}

}  // namespace sonicmoe::kernels
