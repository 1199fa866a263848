// The bitonic top-K router (router_bitonic.cuh).
//
// One warp per row, 4 rows per 128-thread block; lane l holds elements
// 32 j + l, j < V (V = E/32 rounded up to a power of two, coalesced loads).
// For TopKThenSoftmax with 16 < E <= 128, half a warp per row instead (two
// rows per warp, 16 lanes, V = E/16 rounded up): read "lane" as the lane in
// the row's half and 32 as 16 below, with four merge rounds.
//   1. Load the row; for SoftmaxThenTopK sum exp(z - max) over all E exactly
//      as the first version does (same element order, double, butterfly).
//   2. Pack each element to a 32-bit key (bitonic_topk.cuh) and sort the
//      lane's V keys descending in registers; keep the first min(V, KP),
//      KP = K rounded up to a power of two (at least 4).
//   3. Five merge rounds with the lanes at xor distance 1, 2, 4, 8, 16: each
//      lane fetches its partner's list (one shuffle per key) and keeps the
//      top KP of the two by a bitonic merge. Every lane ends with the row's
//      top KP packed keys, sorted.
//   4. Lane k < K takes slot k, unpacks its id and reloads its exact value
//      (an L1 hit: the row was just read).
//   5. Exactness rule. Let B be the truncated key (rank key without the low
//      kBits) of slot K-1, x its element. The packed selection is the
//      reference's when
//        (a) no element y with trunc(y) == B and id(y) > id(x) has a larger
//            exact rank key than x, and
//        (b) the K slots are in the reference's order by their exact keys
//            (larger rank key first, then lower id).
//      Why: every element with trunc > B is selected and outranks every one
//      with trunc < B exactly, and those are never selected. Inside the
//      group trunc == B the packed order takes the lowest ids, so the
//      selected members are those with id <= id(x) and the others have
//      larger ids: they rank below x in the reference's order unless their
//      exact key is larger, which (a) excludes. (b) then checks the order
//      of the K slots, x last among them. Exact ties (equal logits, NaN vs
//      -inf, -0 vs +0) pass both: equal keys order by the lower id in both
//      orders. Only values within 2^kBits ulps of each other around the cut
//      or inside the top K can fail, and such a row is selected again by the
//      first version's exact arg-max rounds (RegisterRow; a StreamingRow there
//      made ptxas spill) before step 6.
//   6. Scores as the first version forms them (slot order, same sums), so
//      both paths give the same bits.
#include "kernels/router_bitonic.cuh"

#include <string>

#include "kernels/bitonic_topk.cuh"
#include "kernels/routing_detail.cuh"

namespace sonicmoe::cuda {
namespace {

using kernels::kFullMask;
using kernels::kWarp;
namespace bt = kernels::bitonic;

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * kWarp;
constexpr int kMaxExperts = 512;
constexpr int kMaxK = 16;

struct Params {
  const float* logits;
  float* scores;
  int32_t* ids;
  int64_t rows;
  int32_t experts;
  int32_t k;
  bool renormalize;
};

constexpr int log2_of(int v) { return v <= 1 ? 0 : 1 + log2_of(v / 2); }

template <int N, int KP, int D, int kLanes>
__device__ __forceinline__ void merge_rounds(uint32_t (&a)[KP]) {
  if constexpr (D < kLanes) {  // xor distances below kLanes stay in the row's segment
    uint32_t b[N];
#pragma unroll
    for (int i = 0; i < N; ++i) b[i] = __shfl_xor_sync(kFullMask, a[i], D);
    bt::merge_with<N, KP>(a, b);
    merge_rounds<bt::merged_length<N, KP>(), KP, 2 * D, kLanes>(a);
  }
}

// kLanes lanes per row (32, or 16 for two rows per warp; V elements each).
// Half-warp rows halve the merge rounds' and the scoring's instructions per
// row, which bound the kernel (it issues ~1000 instructions per 32-lane row).
// SoftmaxThenTopK keeps whole warps: its denominator must be summed in the
// first version's lane order to give the same bits.
template <int V, int KP, bool kSoftmaxFirst, int kLanes>
__global__ void __launch_bounds__(kThreads) bitonic_router_kernel(const Params p) {
  static_assert(kLanes == kWarp || (kLanes == kWarp / 2 && !kSoftmaxFirst && V >= 2));
  constexpr int kRowsPerWarp = kWarp / kLanes;
  constexpr int kBits = log2_of(V * kLanes);
  const int lane = threadIdx.x % kWarp;
  const int sub = lane % kLanes, seg = lane / kLanes;  // lane in the row, row in the warp
  const int64_t first_row = (int64_t{blockIdx.x} * kWarps + threadIdx.x / kWarp) * kRowsPerWarp;
  if (first_row >= p.rows) return;  // whole warps leave together
  // A segment past the last row redoes that row and stores nothing.
  const bool stores = first_row + seg < p.rows;
  const int64_t row = stores ? first_row + seg : p.rows - 1;
  const float* z = p.logits + row * p.experts;
  float* scores = p.scores + row * p.k;
  int32_t* ids = p.ids + row * p.k;
  // Shuffles within the row's segment.
  auto from = [](auto v, int src) { return __shfl_sync(kFullMask, v, src, kLanes); };

  // 1.
  uint32_t key[V];
  float denom = 1.0f;
  {
    float v[V];
    uint32_t best = kernels::kNoCandidate;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const int32_t e = j * kLanes + sub;
      v[j] = e < p.experts ? z[e] : 0.0f;
      const uint32_t rk = kernels::rank_key(v[j]);
      key[j] = e < p.experts ? bt::pack<kBits>(rk, e) : 0u;
      if (e < p.experts) best = max(best, rk);
    }
    if constexpr (kSoftmaxFirst) {
      const float m = kernels::key_value(kernels::warp_max(best));
      double s = 0;
#pragma unroll
      for (int j = 0; j < V; ++j)
        if (j * kLanes + sub < p.experts) s += expf(v[j] - m);
      denom = static_cast<float>(kernels::warp_sum(s));
    }
  }

  // 2., 3.
  bt::bitonic_sort(key);
  constexpr int kFirst = V < KP ? V : KP;
  uint32_t top[KP];
#pragma unroll
  for (int i = 0; i < KP; ++i) top[i] = i < kFirst ? key[i] : 0u;
  merge_rounds<kFirst, KP, 1, kLanes>(top);

  // 4.
  uint32_t mine = 0;
#pragma unroll
  for (int i = 0; i < KP; ++i)
    if (i == sub) mine = top[i];
  const bool has = sub < p.k;
  int32_t id = bt::unpack_index<kBits>(mine);
  float value = has ? z[id] : 0.0f;
  const uint32_t exact = kernels::rank_key(value);

  // 5.
  const uint32_t boundary = bt::truncated<kBits>(from(mine, p.k - 1));
  const uint32_t last_exact = from(exact, p.k - 1);
  const int32_t last_id = from(id, p.k - 1);
  bool outranks_last = false;  // an unselected element of the boundary group beats slot K-1
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const int32_t e = bt::unpack_index<kBits>(key[j]);
    if (bt::truncated<kBits>(key[j]) == boundary && e > last_id)
      outranks_last |= kernels::rank_key(z[e]) > last_exact;  // rare: reloads (L1)
  }
  const uint32_t next_exact = __shfl_down_sync(kFullMask, exact, 1, kLanes);
  const int32_t next_id = __shfl_down_sync(kFullMask, id, 1, kLanes);
  const bool misordered =
      sub + 1 < p.k && (exact < next_exact || (exact == next_exact && id > next_id));
  const unsigned redo = __ballot_sync(kFullMask, outranks_last || misordered);
  // The first version's exact selection, by the whole warp, for each row of
  // the warp that needs it; the scores below are then its.
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    constexpr unsigned kSegment = kLanes == kWarp ? kFullMask : (1u << kLanes) - 1;
    if ((redo & (kSegment << (r * kLanes))) == 0) continue;  // warp-uniform
    const float* zr = p.logits + min(first_row + r, p.rows - 1) * p.experts;
    kernels::RegisterRow<float, V * kLanes / kWarp> exact_row(zr, p.experts, lane);
    int32_t pick_id = 0;
    float pick_value = 0.0f;
    for (int32_t slot = 0; slot < p.k; ++slot) {
      const kernels::Candidate pick = kernels::warp_best(exact_row.candidate());
      if (lane == slot) {
        pick_id = pick.index;
        pick_value = pick.value;
      }
      if (slot + 1 < p.k) exact_row.remove(pick);
    }
    // Lane s of row r's segment takes slot s.
    const int32_t got_id = __shfl_sync(kFullMask, pick_id, sub);
    const float got_value = __shfl_sync(kFullMask, pick_value, sub);
    if (seg == r) {
      id = got_id;
      value = got_value;
    }
  }

  // 6.
  const float m = from(value, 0);
  float total = 0.0f, my_score = 0.0f;
  for (int32_t slot = 0; slot < p.k; ++slot) {
    float s = expf(from(value, slot) - m);
    if constexpr (kSoftmaxFirst) s /= denom;
    total += s;
    if (sub == slot) my_score = s;
  }
  // Divided on every lane, outside the branch: the division's slow-path
  // subroutine called from a divergent region made ptxas spill.
  const bool normalize = !kSoftmaxFirst || p.renormalize;
  const float score = normalize ? my_score / total : my_score;
  if (has && stores) {
    ids[sub] = id;
    scores[sub] = score;
  }
}

// The one dispatch point: f.template operator()<V, KP>().
template <class F>
void with_k(int64_t k, F&& f) {
  if (k <= 4) f.template operator()<4>();
  else if (k <= 8) f.template operator()<8>();
  else f.template operator()<16>();
}
template <class F>
void with_shape(int64_t experts, int64_t k, F&& f) {
  auto by_k = [&]<int V>() { with_k(k, [&]<int KP>() { f.template operator()<V, KP>(); }); };
  if (experts <= 1 * kWarp) by_k.template operator()<1>();
  else if (experts <= 2 * kWarp) by_k.template operator()<2>();
  else if (experts <= 4 * kWarp) by_k.template operator()<4>();
  else if (experts <= 8 * kWarp) by_k.template operator()<8>();
  else by_k.template operator()<16>();
}

}  // namespace

bool bitonic_router_applies(const RouterArgs& a) {
  return a.logits.dtype == DType::F32 && a.logits.shape[1] <= kMaxExperts && a.k >= 1 &&
         a.k <= kMaxK;
}

void bitonic_router_forward(const RouterArgs& a, cudaStream_t stream) {
  const Params p{static_cast<const float*>(a.logits.data), static_cast<float*>(a.scores.data),
                 static_cast<int32_t*>(a.expert_ids.data), a.logits.shape[0],
                 static_cast<int32_t>(a.logits.shape[1]), static_cast<int32_t>(a.k),
                 a.renormalize};
  if (p.rows == 0) return;
  // Half-warp rows where the row fits 8 elements per lane or fewer, for
  // TopKThenSoftmax (see the kernel).
  const bool half = a.order == RouterOrder::TopKThenSoftmax && p.experts > kWarp / 2 &&
                    p.experts <= 8 * (kWarp / 2);
  if (half) {
    const auto blocks = static_cast<unsigned>((p.rows + 2 * kWarps - 1) / (2 * kWarps));
    constexpr int kHalf = kWarp / 2;
    with_k(p.k, [&]<int KP>() {
      if (p.experts <= 2 * kHalf) bitonic_router_kernel<2, KP, false, kHalf><<<blocks, kThreads, 0, stream>>>(p);
      else if (p.experts <= 4 * kHalf) bitonic_router_kernel<4, KP, false, kHalf><<<blocks, kThreads, 0, stream>>>(p);
      else bitonic_router_kernel<8, KP, false, kHalf><<<blocks, kThreads, 0, stream>>>(p);
    });
  } else {
    const auto blocks = static_cast<unsigned>((p.rows + kWarps - 1) / kWarps);
    with_shape(p.experts, p.k, [&]<int V, int KP>() {
      if (a.order == RouterOrder::SoftmaxThenTopK)
        bitonic_router_kernel<V, KP, true, kWarp><<<blocks, kThreads, 0, stream>>>(p);
      else
        bitonic_router_kernel<V, KP, false, kWarp><<<blocks, kThreads, 0, stream>>>(p);
    });
  }
  if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess)
    throw Error(Status::CudaError,
                std::string("sonicmoe: bitonic_router_kernel: ") + cudaGetErrorString(e));
}

}  // namespace sonicmoe::cuda
