// The bitonic top-K router's network and exactness rule on the CPU
// (kernels/bitonic_topk.cuh, kernels/router_bitonic.cu): the 32 lanes of a
// warp are simulated with the same register-level functions the kernel runs,
// the shuffles replaced by copies. Every lane must end with the row's top KP
// packed keys, and wherever the exactness rule accepts the packed selection
// its ids must be the CPU reference's (cpu::topk_row) exactly; where it
// rejects, the kernel redoes the row with the exact selection.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "cpu/router_reference.hpp"
#include "kernels/bitonic_topk.cuh"

namespace sonicmoe {
namespace {

namespace bt = cuda::kernels::bitonic;

// routing_detail.cuh's rank_key, on the host.
uint32_t rank_key(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) u = 0xff800000u;
  if ((u & 0x7fffffffu) == 0) u = 0;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

constexpr int kWarp = 32;

template <int N, int KP>
void merge_rounds(std::vector<std::array<uint32_t, KP>>& lanes, int d) {
  if constexpr (N > 0) {
    if (d >= kWarp) return;
    const auto before = lanes;
    for (int l = 0; l < kWarp; ++l) {
      uint32_t a[KP], b[N];
      std::copy(lanes[l].begin(), lanes[l].end(), a);
      for (int i = 0; i < N; ++i) b[i] = before[l ^ d][i];
      bt::merge_with<N, KP>(a, b);
      std::copy(a, a + KP, lanes[l].begin());
    }
    merge_rounds<bt::merged_length<N, KP>(), KP>(lanes, 2 * d);
  }
}

struct Outcome {
  bool exact;                // the rule accepts the packed selection
  std::vector<int32_t> ids;  // the packed selection's ids
};

// One row through the kernel's steps 2-5 (router_bitonic.cu).
template <int V, int KP>
Outcome run_row(const std::vector<float>& z, int K) {
  constexpr int kBits = [] { int b = 0; while ((1 << b) < V * kWarp) ++b; return b; }();
  const int E = static_cast<int>(z.size());
  std::vector<std::array<uint32_t, V>> keys(kWarp);
  std::vector<std::array<uint32_t, KP>> top(kWarp);
  for (int l = 0; l < kWarp; ++l) {
    uint32_t key[V];
    for (int j = 0; j < V; ++j) {
      const int e = j * kWarp + l;
      key[j] = e < E ? bt::pack<kBits>(rank_key(z[e]), e) : 0u;
    }
    bt::bitonic_sort(key);
    std::copy(key, key + V, keys[l].begin());
    for (int i = 0; i < KP; ++i) top[l][i] = i < std::min(V, KP) ? key[i] : 0u;
  }
  merge_rounds<std::min(V, KP), KP>(top, 1);

  // Every lane holds the same list: the top KP of all packed keys.
  std::vector<uint32_t> all;
  for (int l = 0; l < kWarp; ++l) all.insert(all.end(), keys[l].begin(), keys[l].end());
  std::sort(all.rbegin(), all.rend());
  for (int l = 0; l < kWarp; ++l)
    for (int i = 0; i < KP; ++i) EXPECT_EQ(top[l][i], all[i]) << "lane " << l << " slot " << i;

  Outcome o;
  const uint32_t boundary = bt::truncated<kBits>(top[0][K - 1]);
  for (int k = 0; k < K; ++k) o.ids.push_back(bt::unpack_index<kBits>(top[0][k]));
  const int32_t last_id = o.ids[K - 1];
  bool outranks_last = false;
  for (uint32_t k : all) {
    const int32_t e = bt::unpack_index<kBits>(k);
    if (k != 0 && bt::truncated<kBits>(k) == boundary && e > last_id)
      outranks_last |= rank_key(z[e]) > rank_key(z[last_id]);
  }
  bool misordered = false;
  for (int k = 0; k + 1 < K; ++k) {
    const uint32_t a = rank_key(z[o.ids[k]]), b = rank_key(z[o.ids[k + 1]]);
    misordered |= a < b || (a == b && o.ids[k] > o.ids[k + 1]);
  }
  o.exact = !outranks_last && !misordered;
  return o;
}

template <int V, int KP>
void check_rows(int E, int K, const std::vector<std::vector<float>>& rows, int* rejected) {
  for (const auto& z : rows) {
    const Outcome o = run_row<V, KP>(z, K);
    std::vector<int32_t> ref(K);
    cpu::topk_row<float, float>(z.data(), E, K, ref.data());
    if (o.exact) EXPECT_EQ(o.ids, ref) << "E " << E << " K " << K;
    else ++*rejected;
  }
}

// Dispatch like router_bitonic.cu's with_shape.
void check(int E, int K, const std::vector<std::vector<float>>& rows, int* rejected) {
  auto by_k = [&]<int V>() {
    if (K <= 4) check_rows<V, 4>(E, K, rows, rejected);
    else if (K <= 8) check_rows<V, 8>(E, K, rows, rejected);
    else check_rows<V, 16>(E, K, rows, rejected);
  };
  if (E <= 32) by_k.template operator()<1>();
  else if (E <= 64) by_k.template operator()<2>();
  else if (E <= 128) by_k.template operator()<4>();
  else if (E <= 256) by_k.template operator()<8>();
  else by_k.template operator()<16>();
}

std::vector<std::vector<float>> random_rows(int E, int n, std::mt19937& g, int kind) {
  std::normal_distribution<float> normal;
  std::uniform_int_distribution<int> small(-3, 3);
  std::vector<std::vector<float>> rows(n, std::vector<float>(E));
  for (auto& r : rows)
    for (auto& v : r) {
      if (kind == 0) v = normal(g);
      else if (kind == 1) v = static_cast<float>(small(g));  // many exact ties
      else v = 1.0f + static_cast<float>(small(g)) * std::numeric_limits<float>::epsilon();
    }
  return rows;
}

TEST(BitonicNetwork, SortsAndMergesLikeStdSort) {
  std::mt19937 g(7);
  int rejected = 0;
  for (int E : {1, 3, 17, 32, 33, 64, 100, 128, 129, 255, 256, 300, 511, 512})
    for (int K : {1, 2, 3, 4, 5, 8, 9, 13, 16})
      if (K <= E) check(E, K, random_rows(E, 8, g, 0), &rejected);
  // Random normal logits almost never put two values within 2^9 ulps.
  EXPECT_LE(rejected, 8);
}

TEST(BitonicNetwork, ExactTiesGoToTheLowerIdWithoutFallback) {
  std::mt19937 g(8);
  int rejected = 0;
  for (int E : {5, 32, 64, 200, 512})
    for (int K : {1, 4, 8, 16})
      if (K <= E) check(E, K, random_rows(E, 8, g, 1), &rejected);
  EXPECT_EQ(rejected, 0) << "equal logits must resolve in the packed order";
  // K = E: every element, in the reference's order.
  for (int E : {1, 4, 16}) check(E, E, random_rows(E, 4, g, 1), &rejected);
  EXPECT_EQ(rejected, 0);
}

TEST(BitonicNetwork, SpecialValuesRankLikeTheReference) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::nanf("");
  const std::vector<std::vector<float>> rows = {
      {nan, -inf, 0.0f, -0.0f, 1.0f, nan, -inf, 2.0f},
      {nan, nan, nan, nan, nan, nan, nan, nan},
      {-inf, nan, -inf, nan, -0.0f, 0.0f, inf, inf},
  };
  int rejected = 0;
  for (int K : {1, 3, 8}) check(8, K, rows, &rejected);
  EXPECT_EQ(rejected, 0);
}

TEST(BitonicNetwork, NearTiesAreCaughtByTheRule) {
  // Values a few ulps apart: the packed order prefers the lower id where the
  // reference prefers the larger value. Each such row must either give the
  // reference's ids or be rejected (and redone exactly by the kernel).
  std::mt19937 g(9);
  int rejected = 0;
  for (int E : {8, 40, 300, 512})
    for (int K : {1, 2, 4, 16})
      if (K <= E) check(E, K, random_rows(E, 16, g, 2), &rejected);
  EXPECT_GT(rejected, 0) << "the near-tie rows should exercise the fallback";

  // The smallest case: id 0 one ulp below id 1. Packed keys tie and the
  // lower id would win; the rule must reject.
  const float one = 1.0f, above = std::nextafter(1.0f, 2.0f);
  int r = 0;
  check(2, 1, {{one, above}}, &r);
  EXPECT_EQ(r, 1);
  r = 0;
  check(3, 2, {{one, above, 0.0f}}, &r);  // membership right, order wrong
  EXPECT_EQ(r, 1);
}

}  // namespace
}  // namespace sonicmoe
