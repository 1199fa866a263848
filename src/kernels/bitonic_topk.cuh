// The register-level pieces of the bitonic top-K router (router_bitonic.cu):
// packed keys and the sorting network. Host and device code, so that
// tests/test_bitonic_network.cpp checks the network and the exactness rule on
// the CPU by simulating the 32 lanes of a warp.
//
// Packed key of element e (E <= 2^kBits elements, kBits = log2(32 V)):
//   packed = (rank_key(z_e) & ~mask) | (mask - e),   mask = 2^kBits - 1
// rank_key (routing_detail.cuh) orders values as the CPU reference does (NaN
// as -inf, -0 == +0); the low kBits mantissa bits are replaced by the
// inverted index, so that among equal truncated keys the lower id ranks
// first and every packed key is distinct. Padding (e >= E) packs to 0, below
// every real element (rank_key >= 0x007fffff, whose truncation is > 0).
//
// The packed order is the reference's order except between elements whose
// rank keys differ only in the low kBits bits (near-ties): there it prefers
// the lower index where the reference prefers the larger value. The router
// therefore checks its result (router_bitonic.cu, "exactness rule") and
// redoes the few rows where a near-tie could matter with the exact select.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SMOE_HD __host__ __device__ __forceinline__
#else
#define SMOE_HD inline
#endif

namespace sonicmoe::cuda::kernels::bitonic {

template <int kBits>
SMOE_HD constexpr uint32_t index_mask() {
  return (uint32_t{1} << kBits) - 1u;
}

template <int kBits>
SMOE_HD uint32_t pack(uint32_t rank_key, int32_t index) {
  return (rank_key & ~index_mask<kBits>()) | (index_mask<kBits>() - static_cast<uint32_t>(index));
}

template <int kBits>
SMOE_HD int32_t unpack_index(uint32_t packed) {
  return static_cast<int32_t>(index_mask<kBits>() - (packed & index_mask<kBits>()));
}

template <int kBits>
SMOE_HD uint32_t truncated(uint32_t key) {
  return key & ~index_mask<kBits>();
}

// a[i] >= a[j] afterwards (descending).
SMOE_HD void order_pair(uint32_t& hi, uint32_t& lo) {
  const uint32_t x = hi > lo ? hi : lo;
  lo = hi > lo ? lo : hi;
  hi = x;
}

// Sorts a bitonic a[0, N) descending (N a power of two).
template <int N, int S>
SMOE_HD void bitonic_merge(uint32_t (&a)[S]) {
  static_assert(N <= S && (N & (N - 1)) == 0);
#pragma unroll
  for (int h = N / 2; h > 0; h /= 2)
#pragma unroll
    for (int i = 0; i < N; ++i)
      if ((i & h) == 0) order_pair(a[i], a[i + h]);
}

// Sorts a[0, N) descending: bitonic sort, N log^2 N / 4 compare-exchanges.
template <int N>
SMOE_HD void bitonic_sort(uint32_t (&a)[N]) {
  static_assert((N & (N - 1)) == 0);
#pragma unroll
  for (int k = 2; k <= N; k *= 2)
#pragma unroll
    for (int j = k / 2; j > 0; j /= 2)
#pragma unroll
      for (int i = 0; i < N; ++i) {
        const int l = i ^ j;
        if (l <= i) continue;
        // Blocks of k alternate direction so that each pair of blocks forms
        // a bitonic sequence for the next k; the last k sorts descending.
        if ((i & k) == 0) order_pair(a[i], a[l]);
        else order_pair(a[l], a[i]);
      }
}

// One merge round: a[0, N) and the partner lane's b[0, N), both sorted
// descending, become the top min(2N, KP) of their union, sorted descending,
// in a. Both partners compute the same list (the keys are distinct).
// Returns the new length.
template <int N, int KP>
SMOE_HD void merge_with(uint32_t (&a)[KP], const uint32_t (&b)[N]) {
  if constexpr (2 * N <= KP) {
    // a descending then b ascending: one bitonic sequence of 2N.
#pragma unroll
    for (int i = 0; i < N; ++i) a[N + i] = b[N - 1 - i];
    bitonic_merge<2 * N>(a);
  } else {
    // Bitonic split: the larger half of (a, reversed b) holds the top N.
#pragma unroll
    for (int i = 0; i < N; ++i) a[i] = a[i] > b[N - 1 - i] ? a[i] : b[N - 1 - i];
    bitonic_merge<N>(a);
  }
}

template <int N, int KP>
SMOE_HD constexpr int merged_length() {
  return 2 * N <= KP ? 2 * N : N;
}

}  // namespace sonicmoe::cuda::kernels::bitonic
