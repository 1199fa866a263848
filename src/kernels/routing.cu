// GPU routing: the fused top-K + softmax router, its backward, and the
// routing metadata. Interface and contract: routing.cuh.
//
// Router (one warp per row, 4 rows per 128-thread block). f32 rows with
// E <= 512 and K <= 16 go to the bitonic router (router_bitonic.cu), which
// gives the same bits as the kernel below and falls back on it per row for
// near-ties; this kernel serves every other shape and SONICMOE_ROUTER=select.
//   router_forward_kernel<L, VPT, SoftmaxFirst>
//     E <= 1024: the row's order keys sit in registers (VPT = E/32 rounded up
//     to a power of two); larger E streams the row from memory (VPT = 0).
//     K rounds of a warp arg-max over (key desc, index asc): two redux.sync
//     and one shuffle per round; only the winner's lane rescans. The order is
//     cpu::ranks_before exactly, so the ids equal the reference's. Scores are
//     formed in slot order with the reference's own sequential sums over the
//     K picks; the softmax over all E is summed in double (routing_detail.cuh
//     says why).
//   router_backward_kernel<L, VPT, SoftmaxFirst>
//     Row scalars from lane-parallel passes over the K slots; then, per tile
//     of 32*VPT elements, the slots' gradients are broadcast 32 at a time and
//     added into registers in slot order, so repeated ids sum in the
//     reference's order; one coalesced store per element.
//
// Routing metadata. The N pairs are cut into chunks of chunk_pairs: one
// tile of 2048 pairs, or several when E > 8192 so that the table stays near
// 4 ints per pair. The workspace holds table = [chunks x E] int32 and, for
// general routing, per-token and per-4096-token counts (carve() is their
// one description; its size is plain arithmetic, the same on any device).
// run_routing, behind routing_from_topk and routing_from_pairs, issues in
// order on the caller's stream:
//   0. cudaMemsetAsync      token counts (pairs); the table when its counts
//                           are accumulated in global memory.
//   1. histogram_kernel     one block per chunk: valid pairs per expert into
//                           table[c] (shared-memory atomics, global ones when
//                           E is too large for shared memory); for pairs also
//                           pairs per token and per token tile (global
//                           atomics); for top-K writes token_offsets = t*K.
//   (pairs) exclusive_scan_kernel over the token tiles, then
//           token_offsets_kernel, one block per token tile.
//   2. chunk_scan_kernel    one block per 32 experts: table[c][e] becomes the
//                           count of e in chunks before c; expert_counts[e] is
//                           the total.
//   3. exclusive_scan_kernel  one block: expert_offsets from the counts.
//   4. scatter_kernel       one block per chunk, tile by tile: a stable block
//                           radix sort of (expert, pair) gives each pair its
//                           rank among the tile's pairs of its expert;
//                           position = expert_offsets[e] + table[c][e] + rank,
//                           table[c][e] then advancing past the tile's pairs
//                           of e for the chunk's next tile.
//                           Writes sorted_token / sorted_pair at the position,
//                           pair_position coalesced through shared memory, and
//                           0 in the positions past expert_offsets[E] that its
//                           chunk covers.
// A dropped pair (expert outside [0, E), or token outside [0, T)) sorts
// behind every expert as key E and gets pair_position -1.
//
// Determinism: no float atomics. Counts are integer atomics (exact in any
// order), positions come from those counts, a stable sort and fixed-order
// scans; every float sum runs in a fixed order. Nothing waits for the host.
#include "kernels/routing.cuh"

#include <algorithm>
#include <bit>
#include <cstdlib>
#include <string>
#include <string_view>

#include <cub/cub.cuh>
#include <cuda/functional>

#include "common/workspace.hpp"
#include "kernels/block_scan.cuh"
#include "kernels/router_bitonic.cuh"
#include "kernels/routing_detail.cuh"

namespace sonicmoe::cuda {
namespace {

using kernels::kFullMask;
using kernels::kWarp;

template <class P>
P* ptr(const Tensor& t) {
  return static_cast<P*>(t.data);
}

__host__ __device__ constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw Error(Status::CudaError,
                std::string("sonicmoe: ") + what + ": " + cudaGetErrorString(e));
}

void check_launch(const char* kernel) { check_cuda(cudaGetLastError(), kernel); }

// ==================================================================== router

constexpr int kRouterWarps = 4;
constexpr int kRouterThreads = kRouterWarps * kWarp;
constexpr int kMaxRegisterSlots = 32;  // E <= 1024 in registers

template <class L>
struct ForwardParams {
  const L* logits;
  float* scores;
  int32_t* ids;
  int64_t rows;
  int32_t experts;
  int32_t k;
  bool renormalize;
};

template <class L>
struct BackwardParams {
  const L* logits;
  const int32_t* ids;
  const float* dscores;
  L* dlogits;
  int64_t rows;
  int32_t experts;
  int32_t k;
  bool renormalize;
};

template <class L, int VPT, bool kSoftmaxFirst>
__global__ void __launch_bounds__(kRouterThreads) router_forward_kernel(const ForwardParams<L> p) {
  const int lane = threadIdx.x % kWarp;
  const int64_t row = int64_t{blockIdx.x} * kRouterWarps + threadIdx.x / kWarp;
  if (row >= p.rows) return;  // whole warps leave together
  const L* z = p.logits + row * p.experts;
  float* scores = p.scores + row * p.k;
  int32_t* ids = p.ids + row * p.k;
  if constexpr (VPT > 0) {
    kernels::RegisterRow<L, VPT> r(z, p.experts, lane);
    kernels::select_and_score<kSoftmaxFirst>(r, p.k, p.renormalize, scores, ids, lane);
  } else {
    kernels::StreamingRow<L> r(z, p.experts, lane);
    kernels::select_and_score<kSoftmaxFirst>(r, p.k, p.renormalize, scores, ids, lane);
  }
}

// acc[slot] += v for a runtime slot without spilling acc to local memory.
template <int VPT>
__device__ __forceinline__ void add_at(float (&acc)[VPT], int slot, float v) {
#pragma unroll
  for (int j = 0; j < VPT; ++j)
    if (j == slot) acc[j] += v;
}

// Element gradients of one row, 32*VPT elements per pass. Slots are taken in
// ascending order (32 at a time, broadcast by shuffle), so an element chosen
// by several slots sums their gradients in the reference's order.
template <int VPT, class L, class Grad>
__device__ void write_row_gradient(const kernels::SlotView<L>& v, const Grad& grad, L* dz,
                                   int lane) {
  constexpr int64_t kSpan = int64_t{VPT} * kWarp;
  for (int64_t base = 0; base < v.experts; base += kSpan) {
    float acc[VPT] = {};
    for (int32_t first = 0; first < v.k; first += kWarp) {
      int32_t id = -1;
      float slot_grad = 0.0f;
      if (first + lane < v.k) {
        const kernels::Slot s = v.load(first + lane);
        if (s.valid) {
          id = s.id;
          slot_grad = grad.slot_grad(s);
        }
      }
      const int count = min(kWarp, v.k - first);
      for (int j = 0; j < count; ++j) {
        const int32_t sid = __shfl_sync(kFullMask, id, j);
        const float g = __shfl_sync(kFullMask, slot_grad, j);
        const int64_t offset = sid - base;
        if (sid >= 0 && sid % kWarp == lane && offset >= 0 && offset < kSpan)
          add_at(acc, static_cast<int>(offset / kWarp), g);
      }
    }
#pragma unroll
    for (int j = 0; j < VPT; ++j) {
      const int64_t e = base + j * kWarp + lane;
      if (e >= v.experts) continue;
      const float z = Grad::kNeedsLogit ? kernels::to_float(v.z[e]) : 0.0f;
      kernels::store(dz + e, grad.element(acc[j], z));
    }
  }
}

template <class L, int VPT, bool kSoftmaxFirst>
__global__ void __launch_bounds__(kRouterThreads)
    router_backward_kernel(const BackwardParams<L> p) {
  const int lane = threadIdx.x % kWarp;
  const int64_t row = int64_t{blockIdx.x} * kRouterWarps + threadIdx.x / kWarp;
  if (row >= p.rows) return;
  const kernels::SlotView<L> v{p.logits + row * p.experts, p.ids + row * p.k,
                               p.dscores + row * p.k, p.experts, p.k};
  L* dz = p.dlogits + row * p.experts;
  if constexpr (kSoftmaxFirst) {
    write_row_gradient<VPT>(v, kernels::SoftmaxThenTopKGrad(v, p.renormalize, lane), dz, lane);
  } else {
    write_row_gradient<VPT>(v, kernels::TopKThenSoftmaxGrad(v, lane), dz, lane);
  }
}

// The one dispatch point for the row width: f.template operator()<VPT>(),
// VPT the power of two >= E/32, or 0 above kMaxRegisterSlots.
template <class F>
void with_slots_per_lane(int64_t experts, F&& f) {
  if (experts <= 1 * kWarp) f.template operator()<1>();
  else if (experts <= 2 * kWarp) f.template operator()<2>();
  else if (experts <= 4 * kWarp) f.template operator()<4>();
  else if (experts <= 8 * kWarp) f.template operator()<8>();
  else if (experts <= 16 * kWarp) f.template operator()<16>();
  else if (experts <= kMaxRegisterSlots * kWarp) f.template operator()<kMaxRegisterSlots>();
  else f.template operator()<0>();
}

template <class F>
void with_order(RouterOrder order, F&& f) {
  if (order == RouterOrder::SoftmaxThenTopK) f.template operator()<true>();
  else f.template operator()<false>();
}

unsigned router_blocks(int64_t rows) {
  return static_cast<unsigned>(ceil_div(rows, kRouterWarps));
}

template <class L>
void router_forward_typed(const RouterArgs& a, cudaStream_t stream) {
  const ForwardParams<L> p{ptr<const L>(a.logits), ptr<float>(a.scores), ptr<int32_t>(a.expert_ids),
                           a.logits.shape[0], static_cast<int32_t>(a.logits.shape[1]),
                           static_cast<int32_t>(a.k), a.renormalize};
  with_slots_per_lane(p.experts, [&]<int VPT>() {
    with_order(a.order, [&]<bool kSoftmaxFirst>() {
      router_forward_kernel<L, VPT, kSoftmaxFirst>
          <<<router_blocks(p.rows), kRouterThreads, 0, stream>>>(p);
    });
  });
  check_launch("router_forward_kernel");
}

template <class L>
void router_backward_typed(const RouterBackwardArgs& a, cudaStream_t stream) {
  const BackwardParams<L> p{ptr<const L>(a.logits), ptr<const int32_t>(a.expert_ids),
                            ptr<const float>(a.dscores), ptr<L>(a.dlogits), a.logits.shape[0],
                            static_cast<int32_t>(a.logits.shape[1]),
                            static_cast<int32_t>(a.expert_ids.shape[1]), a.renormalize};
  // Wider rows loop over tiles of 32 * kMaxRegisterSlots elements.
  with_slots_per_lane(p.experts, [&]<int VPT>() {
    constexpr int kSlots = VPT > 0 ? VPT : kMaxRegisterSlots;
    with_order(a.order, [&]<bool kSoftmaxFirst>() {
      router_backward_kernel<L, kSlots, kSoftmaxFirst>
          <<<router_blocks(p.rows), kRouterThreads, 0, stream>>>(p);
    });
  });
  check_launch("router_backward_kernel");
}

// =========================================================== routing metadata

constexpr int kThreads = 256;
// 1024 pairs per tile: at 2048, 7b-n256's 196608 pairs made 96 chunks,
// fewer blocks than SMs for the histogram and the scatter.
constexpr int kItems = 4;
constexpr int64_t kTile = kThreads * kItems;
// A chunk holds ceil(E / kExpertsPerTile) tiles, which keeps the
// [chunks x E] table near 4 ints per pair however large E is.
constexpr int64_t kExpertsPerTile = 4096;
// Per-chunk counts in shared memory up to the 48 KiB every device grants.
constexpr int64_t kSharedCountExperts = 12288;
constexpr int kChunkScanThreads = kWarp * kWarp;
constexpr int kScanThreads = ::sonicmoe::kernels::kBlockScanThreads;
constexpr int kScanItems = ::sonicmoe::kernels::kBlockScanItems;
constexpr int64_t kScanTile = ::sonicmoe::kernels::kBlockScanTile;  // tokens per token tile

// The pairs as the kernels read them. Top-K ids have no token array: pair i
// belongs to token i / k. (A flag, not a null test: general routing with
// N = 0 may pass null arrays.)
struct PairSource {
  const int32_t* expert;  // [n]
  const int32_t* token;   // [n], general routing only
  bool general;
  int64_t n;
  int32_t num_tokens;
  int32_t num_experts;
  int32_t k;  // top-K only

  // Pair indices fit int32 (N <= 2^31 - 1): a 32-bit division is far cheaper.
  __device__ int32_t token_of(int64_t i) const {
    return general ? token[i] : static_cast<int32_t>(i) / k;
  }
  // Top-K tokens are in range by construction.
  __device__ bool token_ok(int32_t t) const { return !general || (0 <= t && t < num_tokens); }
  __device__ bool expert_ok(int32_t e) const { return 0 <= e && e < num_experts; }
};

struct RoutingOut {
  int32_t* expert_counts;
  int32_t* expert_offsets;
  int32_t* token_offsets;
  int32_t* sorted_token;
  int32_t* sorted_pair;
  int32_t* pair_position;
};

RoutingOut outputs_of(const Routing& r) {
  return {ptr<int32_t>(r.expert_counts), ptr<int32_t>(r.expert_offsets),
          ptr<int32_t>(r.token_offsets), ptr<int32_t>(r.sorted_token),
          ptr<int32_t>(r.sorted_pair),   ptr<int32_t>(r.pair_position)};
}

struct RoutingPlan {
  int64_t num_tokens, num_experts, num_pairs;
  int64_t chunk_pairs, chunks;
  int64_t token_tiles;  // over the T + 1 token counts
  bool shared_counts;
};

RoutingPlan plan_routing(int64_t num_tokens, int64_t num_experts, int64_t num_pairs) {
  RoutingPlan p{num_tokens, num_experts, num_pairs, 0, 0, 0, false};
  p.chunk_pairs = kTile * ceil_div(num_experts, kExpertsPerTile);
  p.chunks = ceil_div(num_pairs, p.chunk_pairs);
  p.token_tiles = ceil_div(num_tokens + 1, kScanTile);
  p.shared_counts = num_experts <= kSharedCountExperts;
  return p;
}

struct RoutingScratch {
  int32_t* table;         // [chunks x E]
  int32_t* token_counts;  // [T + 1], pairs only; the last stays 0
  int32_t* token_tiles;   // [token_tiles + 1] tile sums, scanned in place; pairs only
};

// The single description of the workspace: run over a null base for the
// size, over the caller's pointer for the buffers.
RoutingScratch carve(detail::WorkspaceCarver& w, const RoutingPlan& p) {
  RoutingScratch s;
  s.table = w.take<int32_t>(p.chunks * p.num_experts);
  s.token_counts = w.take<int32_t>(p.num_tokens + 1);
  s.token_tiles = w.take<int32_t>(p.token_tiles + 1);
  return s;
}

// counters[idx] += 1 for every active lane, one atomic per distinct idx in
// the warp (consecutive pairs often share a token or an expert). All 32
// lanes must call it; inactive lanes group under -1, never a valid index.
__device__ __forceinline__ void add_one_per_lane(int32_t* counters, bool active, int32_t idx,
                                                 int lane) {
  const unsigned peers = __match_any_sync(kFullMask, active ? idx : -1);
  if (active && lane == __ffs(peers) - 1) atomicAdd(counters + idx, __popc(peers));
}

// Token counts for general routing: per token, and per token tile so that
// the token scan needs no pass of its own to find the tiles' prefixes.
struct TokenCounts {
  int32_t* per_token;  // null for top-K
  int32_t* per_tile;
};

template <bool kSharedCounts>
__device__ void count_chunk(const PairSource& src, int64_t chunk_pairs, int32_t* row,
                            int32_t* shared, const TokenCounts& tokens) {
  int32_t* counts = kSharedCounts ? shared : row;
  if constexpr (kSharedCounts) {
    for (int64_t e = threadIdx.x; e < src.num_experts; e += kThreads) shared[e] = 0;
    __syncthreads();
  }
  const int lane = threadIdx.x % kWarp;
  const int64_t begin = int64_t{blockIdx.x} * chunk_pairs;
  const int64_t end = min(src.n, begin + chunk_pairs);
  // A tile's kItems loads per thread are issued before any is counted: one
  // load at a time, the chunk took kItems memory latencies per tile.
  for (int64_t tile = begin; tile < end; tile += kTile) {
    int32_t e[kItems], t[kItems];
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      const int64_t i = tile + j * kThreads + threadIdx.x / kWarp * kWarp + lane;
      e[j] = i < end ? src.expert[i] : -1;
      t[j] = i < end && src.general ? src.token[i] : -1;
    }
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      const bool in = tile + j * kThreads + threadIdx.x / kWarp * kWarp + lane < end;
      const bool token_ok = in && src.token_ok(t[j]);
      add_one_per_lane(counts, token_ok && src.expert_ok(e[j]), e[j], lane);
      if (tokens.per_token) {
        add_one_per_lane(tokens.per_token, token_ok, t[j], lane);
        add_one_per_lane(tokens.per_tile, token_ok, t[j] / static_cast<int32_t>(kScanTile), lane);
      }
    }
  }
  if constexpr (kSharedCounts) {
    __syncthreads();
    for (int64_t e = threadIdx.x; e < src.num_experts; e += kThreads) row[e] = shared[e];
  }
}

// Blocks past the last chunk (there is always at least one block) only take
// part in writing the top-K token offsets.
template <bool kSharedCounts>
__global__ void __launch_bounds__(kThreads)
    histogram_kernel(const PairSource src, int64_t chunk_pairs, int64_t chunks, int32_t* table,
                     const TokenCounts tokens, int32_t* topk_token_offsets) {
  extern __shared__ int32_t shared_counts[];
  if (blockIdx.x < chunks)
    count_chunk<kSharedCounts>(src, chunk_pairs, table + int64_t{blockIdx.x} * src.num_experts,
                               shared_counts, tokens);
  if (topk_token_offsets) {
    const int64_t stride = int64_t{gridDim.x} * kThreads;
    for (int64_t t = int64_t{blockIdx.x} * kThreads + threadIdx.x; t <= src.num_tokens;
         t += stride)
      topk_token_offsets[t] = static_cast<int32_t>(t * src.k);
  }
}

// Warp w of the block scans chunks [w*per_warp, (w+1)*per_warp) of the
// block's 32 experts (lane = expert, so each row read is one 128-byte line);
// the 32 warp partials are then scanned per expert through shared memory.
__global__ void __launch_bounds__(kChunkScanThreads)
    chunk_scan_kernel(int32_t* table, int64_t chunks, int64_t experts, int32_t* expert_counts) {
  __shared__ int32_t partial[kWarp][kWarp + 1];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t e = int64_t{blockIdx.x} * kWarp + lane;
  const int64_t per_warp = ceil_div(chunks, kWarp);
  const int64_t c0 = min(chunks, warp * per_warp), c1 = min(chunks, c0 + per_warp);
  int32_t sum = 0;
  if (e < experts)
    for (int64_t c = c0; c < c1; ++c) sum += table[c * experts + e];
  partial[warp][lane] = sum;
  __syncthreads();
  if (warp == 0) {
    int32_t run = 0;
    for (int w = 0; w < kWarp; ++w) {
      const int32_t v = partial[w][lane];
      partial[w][lane] = run;
      run += v;
    }
    if (e < experts) expert_counts[e] = run;
  }
  __syncthreads();
  if (e >= experts) return;
  int32_t run = partial[warp][lane];
  for (int64_t c = c0; c < c1; ++c) {
    const int32_t v = table[c * experts + e];
    table[c * experts + e] = run;
    run += v;
  }
}

using ScanBlock = cub::BlockScan<int32_t, kScanThreads>;

// One block: out[i] = sum of in[0, i) for i <= n (out[n] the total). May run
// in place: each tile is read before the scan's barriers and written after.
__global__ void __launch_bounds__(kScanThreads)
    exclusive_scan_kernel(const int32_t* in, int64_t n, int32_t* out) {
  ::sonicmoe::kernels::block_exclusive_scan([in](int64_t i) { return in[i]; }, n, out);
}

// Block b scans token tile b of the n = T + 1 counts (the last one 0), on
// top of the tile's prefix: token_offsets[t] = valid pairs of tokens < t.
__global__ void __launch_bounds__(kScanThreads)
    token_offsets_kernel(const int32_t* counts, const int32_t* tile_prefix, int64_t n,
                         int32_t* offsets) {
  __shared__ typename ScanBlock::TempStorage scan;
  const int64_t first = int64_t{blockIdx.x} * kScanTile + int64_t{threadIdx.x} * kScanItems;
  int32_t v[kScanItems];
#pragma unroll
  for (int i = 0; i < kScanItems; ++i) v[i] = first + i < n ? counts[first + i] : 0;
  ScanBlock(scan).ExclusiveSum(v, v);
  const int32_t prefix = tile_prefix[blockIdx.x];
#pragma unroll
  for (int i = 0; i < kScanItems; ++i)
    if (first + i < n) offsets[first + i] = prefix + v[i];
}

struct Differs {
  __device__ bool operator()(uint32_t a, uint32_t b) const { return a != b; }
};

using TileLoad = cub::BlockLoad<int32_t, kThreads, kItems, cub::BLOCK_LOAD_WARP_TRANSPOSE>;
// Stable: equal experts keep their blocked (= pair) order.
using TileSort = cub::BlockRadixSort<uint32_t, kThreads, kItems, int32_t>;
using TileFlags = cub::BlockDiscontinuity<uint32_t, kThreads>;
using TileScan = cub::BlockScan<int32_t, kThreads>;

struct TileStorage {
  union {
    TileLoad::TempStorage load;
    TileSort::TempStorage sort;
    TileFlags::TempStorage flags;
    TileScan::TempStorage scan;
  } cub;
  int32_t position[kTile];  // by pair within the tile
};

// Sort keys of a tile's pairs in blocked order: the expert, or E (behind
// every expert) for a dropped pair or a slot past the tile's end.
__device__ void load_tile_keys(const PairSource& src, int64_t tile, int count,
                               uint32_t (&key)[kItems], TileStorage& smem) {
  int32_t expert[kItems], token[kItems] = {};
  TileLoad(smem.cub.load).Load(src.expert + tile, expert, count, -1);
  if (src.general) {
    __syncthreads();
    TileLoad(smem.cub.load).Load(src.token + tile, token, count, -1);
  }
  // Slots past `count` hold expert -1, so they sort as dropped.
#pragma unroll
  for (int i = 0; i < kItems; ++i)
    key[i] = src.token_ok(token[i]) && src.expert_ok(expert[i])
                 ? static_cast<uint32_t>(expert[i])
                 : static_cast<uint32_t>(src.num_experts);
  __syncthreads();
}

// Places one tile of a chunk. cursor[e]: pairs of expert e before this tile
// in expert order, without the expert's offset. With `advance`, the cursor
// moves past this tile's pairs for the chunk's next tile.
__device__ void place_tile(const PairSource& src, int64_t tile, int count, int end_bit,
                           int32_t* cursor, const RoutingOut& out, bool advance,
                           TileStorage& smem) {
  uint32_t key[kItems];
  int32_t local[kItems];
  load_tile_keys(src, tile, count, key, smem);
#pragma unroll
  for (int i = 0; i < kItems; ++i) local[i] = threadIdx.x * kItems + i;
  TileSort(smem.cub.sort).Sort(key, local, 0, end_bit);
  __syncthreads();

  int head[kItems], tail[kItems];
  TileFlags(smem.cub.flags).FlagHeadsAndTails(head, tail, key, Differs{});
  __syncthreads();
  // rank - run_start[rank] = the pair's rank among its expert's pairs here.
  int32_t run_start[kItems];
#pragma unroll
  for (int i = 0; i < kItems; ++i) run_start[i] = head[i] ? int32_t(threadIdx.x * kItems + i) : 0;
  TileScan(smem.cub.scan).InclusiveScan(run_start, run_start, ::cuda::maximum<>{});

  const auto experts = static_cast<uint32_t>(src.num_experts);
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int32_t rank = threadIdx.x * kItems + i;
    if (key[i] < experts) {
      const int32_t pos = out.expert_offsets[key[i]] + cursor[key[i]] + (rank - run_start[i]);
      const int64_t pair = tile + local[i];
      out.sorted_token[pos] = src.token_of(pair);
      out.sorted_pair[pos] = static_cast<int32_t>(pair);
      smem.position[local[i]] = pos;
    } else if (local[i] < count) {
      smem.position[local[i]] = -1;
    }
  }
  __syncthreads();  // every cursor read and position write is done
  for (int l = threadIdx.x; l < count; l += kThreads) out.pair_position[tile + l] = smem.position[l];
  if (advance) {
#pragma unroll
    for (int i = 0; i < kItems; ++i)
      if (tail[i] && key[i] < experts)
        cursor[key[i]] += int32_t(threadIdx.x * kItems + i) - run_start[i] + 1;
  }
  __syncthreads();  // cursor updates visible, shared storage free
}

__global__ void __launch_bounds__(kThreads)
    scatter_kernel(const PairSource src, int64_t chunk_pairs, int end_bit, int32_t* table,
                   const RoutingOut out) {
  __shared__ TileStorage smem;
  const int64_t begin = int64_t{blockIdx.x} * chunk_pairs;
  const int64_t end = min(src.n, begin + chunk_pairs);
  int32_t* cursor = table + int64_t{blockIdx.x} * src.num_experts;
  for (int64_t tile = begin; tile < end; tile += kTile) {
    const int count = static_cast<int>(min(kTile, end - tile));
    place_tile(src, tile, count, end_bit, cursor, out, tile + kTile < end, smem);
  }
  // Positions [expert_offsets[E], N) belong to no pair when pairs were
  // dropped; 0 keeps them valid indices for whoever reads them anyway.
  const int64_t used = out.expert_offsets[src.num_experts];
  for (int64_t p = max(begin, used) + threadIdx.x; p < end; p += kThreads) {
    out.sorted_token[p] = 0;
    out.sorted_pair[p] = 0;
  }
}

void run_routing(const RoutingPlan& plan, const PairSource& src, const RoutingScratch& s,
                 const RoutingOut& out, cudaStream_t stream) {
  const int64_t E = plan.num_experts, T = plan.num_tokens;
  const bool pairs = src.general;
  if (!plan.shared_counts && plan.chunks > 0)
    check_cuda(cudaMemsetAsync(s.table, 0, sizeof(int32_t) * plan.chunks * E, stream),
               "cudaMemsetAsync (routing table)");
  if (pairs) {
    check_cuda(cudaMemsetAsync(s.token_counts, 0, sizeof(int32_t) * (T + 1), stream),
               "cudaMemsetAsync (token counts)");
    check_cuda(cudaMemsetAsync(s.token_tiles, 0, sizeof(int32_t) * plan.token_tiles, stream),
               "cudaMemsetAsync (token tile counts)");
  }

  const auto blocks = static_cast<unsigned>(std::max<int64_t>(plan.chunks, 1));
  const TokenCounts tokens{pairs ? s.token_counts : nullptr, s.token_tiles};
  int32_t* topk_offsets = pairs ? nullptr : out.token_offsets;
  if (plan.shared_counts)
    histogram_kernel<true><<<blocks, kThreads, sizeof(int32_t) * E, stream>>>(
        src, plan.chunk_pairs, plan.chunks, s.table, tokens, topk_offsets);
  else
    histogram_kernel<false><<<blocks, kThreads, 0, stream>>>(src, plan.chunk_pairs, plan.chunks,
                                                             s.table, tokens, topk_offsets);
  check_launch("histogram_kernel");

  if (pairs) {
    exclusive_scan_kernel<<<1, kScanThreads, 0, stream>>>(s.token_tiles, plan.token_tiles,
                                                          s.token_tiles);
    check_launch("exclusive_scan_kernel (token tiles)");
    token_offsets_kernel<<<static_cast<unsigned>(plan.token_tiles), kScanThreads, 0, stream>>>(
        s.token_counts, s.token_tiles, T + 1, out.token_offsets);
    check_launch("token_offsets_kernel");
  }

  chunk_scan_kernel<<<static_cast<unsigned>(ceil_div(E, kWarp)), kChunkScanThreads, 0, stream>>>(
      s.table, plan.chunks, E, out.expert_counts);
  check_launch("chunk_scan_kernel");
  exclusive_scan_kernel<<<1, kScanThreads, 0, stream>>>(out.expert_counts, E, out.expert_offsets);
  check_launch("exclusive_scan_kernel (experts)");

  if (plan.chunks == 0) return;
  const int end_bit = std::bit_width(static_cast<uint32_t>(E));  // keys lie in [0, E]
  scatter_kernel<<<static_cast<unsigned>(plan.chunks), kThreads, 0, stream>>>(
      src, plan.chunk_pairs, end_bit, s.table, out);
  check_launch("scatter_kernel");
}

}  // namespace

// ====================================================================== API

// SONICMOE_ROUTER=select keeps the first version (the bench compares the two);
// by default the bitonic router takes every shape it applies to.
bool use_bitonic_router(const RouterArgs& args) {
  const char* choice = std::getenv("SONICMOE_ROUTER");
  return bitonic_router_applies(args) && !(choice && std::string_view(choice) == "select");
}

void router_forward(const RouterArgs& args, cudaStream_t stream) {
  if (use_bitonic_router(args)) return bitonic_router_forward(args, stream);
  if (args.logits.dtype == DType::BF16) router_forward_typed<__nv_bfloat16>(args, stream);
  else router_forward_typed<float>(args, stream);
}

void router_backward(const RouterBackwardArgs& args, cudaStream_t stream) {
  if (args.logits.dtype == DType::BF16) router_backward_typed<__nv_bfloat16>(args, stream);
  else router_backward_typed<float>(args, stream);
}

size_t routing_workspace_bytes(int64_t num_tokens, int64_t num_experts, int64_t num_pairs) {
  detail::WorkspaceCarver w;
  carve(w, plan_routing(num_tokens, num_experts, num_pairs));
  return w.bytes();
}

void routing_from_topk(const Tensor& expert_ids, int64_t num_experts, const Routing& out,
                       Workspace ws, cudaStream_t stream) {
  const int64_t T = expert_ids.shape[0], K = expert_ids.shape[1];
  const RoutingPlan plan = plan_routing(T, num_experts, T * K);
  detail::WorkspaceCarver w(ws.data);
  const PairSource src{ptr<const int32_t>(expert_ids), nullptr, false, T * K, static_cast<int32_t>(T),
                       static_cast<int32_t>(num_experts), static_cast<int32_t>(K)};
  run_routing(plan, src, carve(w, plan), outputs_of(out), stream);
}

void routing_from_pairs(const Tensor& token_ids, const Tensor& expert_ids, int64_t num_tokens,
                        int64_t num_experts, const Routing& out, Workspace ws,
                        cudaStream_t stream) {
  const int64_t N = token_ids.shape[0];
  const RoutingPlan plan = plan_routing(num_tokens, num_experts, N);
  detail::WorkspaceCarver w(ws.data);
  const PairSource src{ptr<const int32_t>(expert_ids), ptr<const int32_t>(token_ids), true, N,
                       static_cast<int32_t>(num_tokens), static_cast<int32_t>(num_experts), 1};
  run_routing(plan, src, carve(w, plan), outputs_of(out), stream);
}

}  // namespace sonicmoe::cuda
