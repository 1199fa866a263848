// GPU token rounding. Interface and contract: token_rounding.cuh; the
// semantics are those of sonicmoe.hpp (round_routing) and of the CPU
// reference, which this matches exactly up to expf's rounding of the raw
// probabilities.
//
// Membership is kept in bitmaps, one row of W = ceil(T/32) words per expert
// (bit t of row e: token t with expert e). In order on the caller's stream:
//   0. cudaMemsetAsync   picked bitmap.
//   1. row_stats_kernel  one warp per token: max and 1 / sum of exp(z - max)
//                        over all E (summed in double, rounded once, as the
//                        reference does); the token's valid picks OR-ed
//                        into the picked bitmap (OR commutes: deterministic,
//                        and a repeated id is one pick).
//   2. select_kernel     one block per expert: count = popcount of its picked
//                        row, target = detail::rounded_count. Dropping keeps
//                        the best `target` picks, adding takes the best
//                        `target - count` non-picks, "best" being score key
//                        descending, then token ascending. A 4-pass 8-bit
//                        radix select finds the threshold key and how many
//                        keys equal to it are taken (warp 0 picks each
//                        digit: choose_digit); a final pass marks the keys
//                        above it and those ties, by a block scan in token
//                        order so that the lower tokens win, unless every
//                        tie is taken (the usual case: each token then
//                        decides alone). The chosen row is written one
//                        ballot (32 tokens) per word. The T keys (key + 1 for
//                        a candidate, 0 otherwise) are formed once into
//                        shared memory when T <= kMaxCachedTokens; beyond,
//                        every pass recomputes them (the candidates'
//                        probabilities are a strided column of the logits),
//                        about 5x slower.
//   3. token_count_kernel  one warp per token: chosen pairs (ballots down a
//                        column of the chosen bitmap, 32 experts at a time).
//   4. scan_kernel       one block: token offsets, and num_pairs.
//   5. emit_kernel       one warp per token writes its pairs, experts
//                        ascending, at its offset: the top-K score for a
//                        kept pick, the raw probability for an added pair;
//                        then the grid pads [num_pairs, C) with
//                        (T-1, kNoExpert, 0).
// Determinism: integer atomics only (bitmap OR, histogram counts); every
// selection depends on keys, not on arrival order; float math per element.
#include "kernels/token_rounding.cuh"

#include <string>

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cuda_bf16.h>

#include "common/token_rounding.hpp"
#include "common/workspace.hpp"
#include "cuda/per_device.hpp"
#include "kernels/block_scan.cuh"

namespace sonicmoe::cuda {
namespace {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;

template <class P>
P* ptr(const Tensor& t) {
  return static_cast<P*>(t.data);
}

__host__ __device__ constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

void check_launch(const char* kernel) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    throw Error(Status::CudaError,
                std::string("sonicmoe: launching ") + kernel + " failed: " + cudaGetErrorString(e));
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class L>
struct Problem {
  const L* logits;        // [T, E]
  const int32_t* ids;     // [T, K]
  const float* scores;    // [T, K]
  uint32_t* picked;       // [E, W]
  uint32_t* chosen;       // [E, W]
  float* row_max;         // [T]
  float* row_inv_sum;     // [T]
  int32_t* token_counts;  // [T]
  int32_t* token_offsets; // [T + 1]
  int32_t tokens, experts, k, words;
  int64_t tile;
  TokenRounding mode;

  __device__ bool bit(const uint32_t* map, int32_t e, int32_t t) const {
    return (map[int64_t{e} * words + (t >> 5)] >> (t & 31)) & 1u;
  }
  // The top-K score of token t's first slot with expert e (t picked e).
  __device__ float pick_score(int32_t t, int32_t e) const {
    const int64_t row = int64_t{t} * k;
    for (int32_t j = 0; j < k; ++j)
      if (ids[row + j] == e) return scores[row + j];
    return 0.0f;
  }
  // softmax(logits[t])[e], formed as the reference forms it: times the
  // row's inverted sum, since an IEEE division in the loops is a slow-path
  // call whose saved registers ptxas reports as spills.
  __device__ float prob(int32_t t, int32_t e) const {
    return expf(to_float(logits[int64_t{t} * experts + e]) - row_max[t]) * row_inv_sum[t];
  }
};

// ----------------------------------------------------------- 1. row stats --

constexpr int kStatsWarps = 4;

template <class L>
__global__ void __launch_bounds__(kStatsWarps * kWarp) row_stats_kernel(const Problem<L> p) {
  const int lane = threadIdx.x % kWarp;
  const int32_t t = static_cast<int32_t>(blockIdx.x) * kStatsWarps + threadIdx.x / kWarp;
  if (t >= p.tokens) return;  // whole warps leave together
  const L* z = p.logits + int64_t{t} * p.experts;
  float m = -INFINITY;
  for (int32_t e = lane; e < p.experts; e += kWarp) m = fmaxf(m, to_float(z[e]));
  for (int d = kWarp / 2; d > 0; d /= 2) m = fmaxf(m, __shfl_xor_sync(kFullMask, m, d));
  double s = 0;
  for (int32_t e = lane; e < p.experts; e += kWarp) s += expf(to_float(z[e]) - m);
  for (int d = kWarp / 2; d > 0; d /= 2) s += __shfl_xor_sync(kFullMask, s, d);
  if (lane == 0) {
    p.row_max[t] = m;
    p.row_inv_sum[t] = 1.0f / static_cast<float>(s);
  }
  for (int32_t j = lane; j < p.k; j += kWarp) {
    const int32_t e = p.ids[int64_t{t} * p.k + j];
    if (0 <= e && e < p.experts)
      atomicOr(p.picked + int64_t{e} * p.words + (t >> 5), 1u << (t & 31));
  }
}

// -------------------------------------------------------------- 2. select --

constexpr int kSelectThreads = 512;
constexpr int kDigitBits = 8;
constexpr int kBins = 1 << kDigitBits;
constexpr int kPasses = 32 / kDigitBits;

using SelectReduce = cub::BlockReduce<int32_t, kSelectThreads>;
using SelectScan = cub::BlockScan<int32_t, kSelectThreads>;

struct SelectStorage {
  union {
    SelectReduce::TempStorage reduce;
    SelectScan::TempStorage scan;
  } cub;
  int32_t hist[kBins];
  int32_t count;
  uint32_t prefix;
  int32_t remaining;
  int32_t ties;  // after the last pass: candidates whose key equals prefix
};

// Warp 0 of the block: the digit of the threshold, scanning hist from the
// highest digit down for the first where the keys above plus its own reach
// `remaining`; writes the new prefix, remaining and the digit's count. Lane l
// sums digits [kBins - 8(l + 1), kBins - 8l); a warp scan finds the lane
// where the running sum reaches `remaining`, which walks its 8 digits. As
// the serial walk it replaces, it settles on digit 0 without testing it.
__device__ __forceinline__ void choose_digit(SelectStorage& smem, int lane, uint32_t prefix,
                                             int32_t remaining, int shift) {
  constexpr int kPer = kBins / kWarp;
  const int hi = kBins - kPer * lane, lo = hi - kPer;
  int32_t mine = 0;
#pragma unroll
  for (int d = lo; d < hi; ++d) mine += smem.hist[d];
  int32_t upto = mine;  // digits >= lo
#pragma unroll
  for (int d = 1; d < kWarp; d *= 2) {
    const int32_t v = __shfl_up_sync(kFullMask, upto, d);
    if (lane >= d) upto += v;
  }
  const unsigned reached = __ballot_sync(kFullMask, upto >= remaining);
  const int owner = reached ? __ffs(reached) - 1 : kWarp - 1;
  if (lane == owner) {
    int32_t above = upto - mine;
    int digit = hi - 1;
    for (; digit > lo; --digit) {
      if (above + smem.hist[digit] >= remaining) break;
      above += smem.hist[digit];
    }
    smem.remaining = remaining - above;
    smem.prefix = prefix | (static_cast<uint32_t>(digit) << shift);
    smem.ties = smem.hist[digit];
  }
}

// What one expert's block selects among: the picks (dropping) or the
// non-picks (adding), each with its order key.
template <class L>
struct Candidates {
  Problem<L> p;
  int32_t expert;
  bool drop;

  __device__ bool is_candidate(int32_t t) const { return p.bit(p.picked, expert, t) == drop; }
  __device__ uint32_t key(int32_t t) const {
    return detail::score_key(drop ? p.pick_score(t, expert) : p.prob(t, expert));
  }
};

// hist[digit] += 1 per active lane, one shared atomic per distinct digit in
// the warp (scores of one expert crowd into few exponent digits). All 32
// lanes call it.
__device__ __forceinline__ void add_to_bin(int32_t* hist, bool active, int32_t bin, int lane) {
  const unsigned peers = __match_any_sync(kFullMask, active ? bin : -1);
  if (active && lane == __ffs(peers) - 1) atomicAdd(hist + bin, __popc(peers));
}

// Above this many tokens the keys do not fit in shared memory (4 bytes each).
constexpr int32_t kMaxCachedTokens = 48 * 1024;

template <class L, bool kCached>
__global__ void __launch_bounds__(kSelectThreads) select_kernel(const Problem<L> p) {
  __shared__ SelectStorage smem;
  extern __shared__ uint32_t cached_keys[];  // [tokens] when kCached
  const int32_t e = blockIdx.x;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const uint32_t* picked_row = p.picked + int64_t{e} * p.words;
  uint32_t* chosen_row = p.chosen + int64_t{e} * p.words;

  int32_t ones = 0;
  for (int32_t w = threadIdx.x; w < p.words; w += kSelectThreads) ones += __popc(picked_row[w]);
  ones = SelectReduce(smem.cub.reduce).Sum(ones);
  if (threadIdx.x == 0) smem.count = ones;
  __syncthreads();
  const int32_t count = smem.count;
  const auto target = static_cast<int32_t>(detail::rounded_count(count, p.tile, p.mode, p.tokens));
  if (target == count) {
    for (int32_t w = threadIdx.x; w < p.words; w += kSelectThreads) chosen_row[w] = picked_row[w];
    return;
  }
  const Candidates<L> cand{p, e, target < count};
  const int32_t need = cand.drop ? target : target - count;
  const int32_t available = cand.drop ? count : p.tokens - count;
  const bool take_all = need >= available, take_none = need <= 0;
  const bool selecting = !take_all && !take_none;

  // key + 1 for a candidate (score_key <= 0x7f800000 cannot overflow), 0 for
  // any other token: the threshold is a candidate's, so never 0.
  auto fresh_key = [&](int32_t t) -> uint32_t {
    return cand.is_candidate(t) ? cand.key(t) + 1u : 0u;
  };
  if constexpr (kCached) {
    if (selecting) {
      for (int32_t t = threadIdx.x; t < p.tokens; t += kSelectThreads) cached_keys[t] = fresh_key(t);
      __syncthreads();
    }
  }
  auto key_of = [&](int32_t t) -> uint32_t {
    if constexpr (kCached) return cached_keys[t];
    else return fresh_key(t);
  };

  // Radix select, most significant digit first: after the passes, the
  // threshold key is `prefix` and `remaining` of its ties are taken.
  uint32_t prefix = 0, mask = 0;
  int32_t remaining = need;
  if (selecting) {
    for (int pass = 0; pass < kPasses; ++pass) {
      const int shift = 32 - kDigitBits * (pass + 1);
      for (int b = threadIdx.x; b < kBins; b += kSelectThreads) smem.hist[b] = 0;
      __syncthreads();
      for (int32_t base = 0; base < p.tokens; base += kSelectThreads) {
        const int32_t t = base + static_cast<int32_t>(threadIdx.x);
        const uint32_t key = t < p.tokens ? key_of(t) : 0u;
        const bool active = key != 0 && (key & mask) == prefix;
        add_to_bin(smem.hist, active, static_cast<int32_t>((key >> shift) & (kBins - 1)), lane);
      }
      __syncthreads();
      if (warp == 0) choose_digit(smem, lane, prefix, remaining, shift);
      __syncthreads();
      prefix = smem.prefix;
      remaining = smem.remaining;
      mask |= static_cast<uint32_t>(kBins - 1) << shift;
    }
  }

  // Mark the chosen tokens. Usually every key equal to the threshold is
  // taken (float keys rarely tie): then each token decides alone.
  if (!selecting || smem.ties == remaining) {
    for (int32_t base = 0; base < p.tokens; base += kSelectThreads) {
      const int32_t t = base + static_cast<int32_t>(threadIdx.x);
      const bool in = t < p.tokens;
      const bool is_cand = in && cand.is_candidate(t);
      bool take = take_all && is_cand;
      if (selecting && in) {
        const uint32_t key = key_of(t);
        take = key != 0 && key >= prefix;
      }
      const bool chosen = cand.drop ? take : (take || (in && !is_cand));
      const unsigned word = __ballot_sync(kFullMask, chosen);
      const int32_t w = base / kWarp + warp;
      if (lane == 0 && w < p.words) chosen_row[w] = word;
    }
    return;
  }
  // Otherwise in token order, so that the lowest tokens win the ties.
  int32_t ties_before = 0;
  for (int32_t base = 0; base < p.tokens; base += kSelectThreads) {
    const int32_t t = base + static_cast<int32_t>(threadIdx.x);
    const bool in = t < p.tokens;
    const bool is_cand = in && cand.is_candidate(t);
    const uint32_t key = in && selecting ? key_of(t) : 0u;
    const int32_t tie = key != 0 && key == prefix;
    int32_t rank, tile_ties;
    SelectScan(smem.cub.scan).ExclusiveSum(tie, rank, tile_ties);
    bool take = false;
    if (take_all) take = is_cand;
    else if (selecting) take = key != 0 && (key > prefix || (tie && ties_before + rank < remaining));
    const bool chosen = cand.drop ? take : (take || (in && !is_cand));
    const unsigned word = __ballot_sync(kFullMask, chosen);
    const int32_t w = base / kWarp + warp;
    if (lane == 0 && w < p.words) chosen_row[w] = word;
    ties_before += tile_ties;
    __syncthreads();  // scan storage is reused by the next tile
  }
}

// --------------------------------------------------- 3-5. list by token --

constexpr int kTokenThreads = 256;
constexpr int kTokenWarps = kTokenThreads / kWarp;

template <class L>
__global__ void __launch_bounds__(kTokenThreads) token_count_kernel(const Problem<L> p) {
  const int64_t t = int64_t{blockIdx.x} * kTokenWarps + threadIdx.x / kWarp;
  if (t >= p.tokens) return;  // whole warps leave together
  const int lane = threadIdx.x % kWarp;
  int32_t n = 0;
  for (int32_t e0 = 0; e0 < p.experts; e0 += kWarp) {
    const int32_t e = e0 + lane;
    n += __popc(__ballot_sync(kFullMask, e < p.experts && p.bit(p.chosen, e, static_cast<int32_t>(t))));
  }
  if (lane == 0) p.token_counts[t] = n;
}

constexpr int kScanThreads = ::sonicmoe::kernels::kBlockScanThreads;

// One block: offsets[i] = sum of counts[0, i) for i <= n; *total = offsets[n].
__global__ void __launch_bounds__(kScanThreads)
    scan_kernel(const int32_t* counts, int64_t n, int32_t* offsets, int32_t* total) {
  const int32_t sum =
      ::sonicmoe::kernels::block_exclusive_scan([counts](int64_t i) { return counts[i]; }, n, offsets);
  if (threadIdx.x == 0) *total = sum;
}

template <class L>
__global__ void __launch_bounds__(kTokenThreads)
    emit_kernel(const Problem<L> p, int64_t capacity, int32_t* token_ids, int32_t* expert_ids,
                float* scores) {
  const int64_t warp_id = int64_t{blockIdx.x} * kTokenWarps + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (warp_id < p.tokens) {
    const auto t = static_cast<int32_t>(warp_id);
    int64_t i = p.token_offsets[t];
    for (int32_t e0 = 0; e0 < p.experts; e0 += kWarp) {
      const int32_t e = e0 + lane;
      const bool mine = e < p.experts && p.bit(p.chosen, e, t);
      const unsigned ballot = __ballot_sync(kFullMask, mine);
      const int64_t at = i + __popc(ballot & ((1u << lane) - 1u));
      if (mine && at < capacity) {
        token_ids[at] = t;
        expert_ids[at] = e;
        scores[at] = p.bit(p.picked, e, t) ? p.pick_score(t, e) : p.prob(t, e);
      }
      i += __popc(ballot);
    }
  }
  const int64_t gid = int64_t{blockIdx.x} * kTokenThreads + threadIdx.x;
  const int64_t stride = int64_t{gridDim.x} * kTokenThreads;
  for (int64_t i = p.token_offsets[p.tokens] + gid; i < capacity; i += stride) {
    token_ids[i] = p.tokens - 1;
    expert_ids[i] = kNoExpert;
    scores[i] = 0.0f;
  }
}

// ------------------------------------------------------------------- host --

struct Scratch {
  uint32_t* picked;
  uint32_t* chosen;
  float* row_max;
  float* row_inv_sum;
  int32_t* token_counts;
  int32_t* token_offsets;
};

// The single description of the workspace (null base: the size).
Scratch carve(detail::WorkspaceCarver& w, int64_t T, int64_t E) {
  const int64_t words = ceil_div(T, kWarp);
  Scratch s;
  s.picked = w.take<uint32_t>(E * words);
  s.chosen = w.take<uint32_t>(E * words);
  s.row_max = w.take<float>(T);
  s.row_inv_sum = w.take<float>(T);
  s.token_counts = w.take<int32_t>(T);
  s.token_offsets = w.take<int32_t>(T + 1);
  return s;
}

template <class L>
void round_typed(const RoundRoutingArgs& a, cudaStream_t stream) {
  const int64_t T = a.logits.shape[0], E = a.logits.shape[1], K = a.topk_ids.shape[1];
  const int64_t C = a.token_ids.shape[0];
  detail::WorkspaceCarver w(a.workspace.data);
  const Scratch s = carve(w, T, E);
  const int64_t words = ceil_div(T, kWarp);
  const Problem<L> p{ptr<const L>(a.logits), ptr<const int32_t>(a.topk_ids),
                     ptr<const float>(a.topk_scores), s.picked, s.chosen, s.row_max, s.row_inv_sum,
                     s.token_counts, s.token_offsets, static_cast<int32_t>(T),
                     static_cast<int32_t>(E), static_cast<int32_t>(K),
                     static_cast<int32_t>(words), a.tile, a.mode};
  const cudaError_t e =
      cudaMemsetAsync(s.picked, 0, sizeof(uint32_t) * static_cast<size_t>(E * words), stream);
  if (e != cudaSuccess)
    throw Error(Status::CudaError,
                std::string("sonicmoe: cudaMemsetAsync (picked bitmap): ") + cudaGetErrorString(e));
  row_stats_kernel<L><<<static_cast<unsigned>(ceil_div(T, kStatsWarps)), kStatsWarps * kWarp, 0,
                        stream>>>(p);
  check_launch("row_stats_kernel");
  if (T <= kMaxCachedTokens) {
    const auto keys = static_cast<int>(sizeof(uint32_t) * T);
    const cudaError_t attr = cuda::per_device<cudaError_t>([](int) {
      return cudaFuncSetAttribute(select_kernel<L, true>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(sizeof(uint32_t)) * kMaxCachedTokens);
    });
    if (attr != cudaSuccess)
      throw Error(Status::CudaError, std::string("sonicmoe: select_kernel shared memory: ") +
                                         cudaGetErrorString(attr));
    select_kernel<L, true><<<static_cast<unsigned>(E), kSelectThreads, keys, stream>>>(p);
  } else {
    select_kernel<L, false><<<static_cast<unsigned>(E), kSelectThreads, 0, stream>>>(p);
  }
  check_launch("select_kernel");
  const auto token_blocks = static_cast<unsigned>(ceil_div(T, kTokenWarps));
  token_count_kernel<L><<<token_blocks, kTokenThreads, 0, stream>>>(p);
  check_launch("token_count_kernel");
  scan_kernel<<<1, kScanThreads, 0, stream>>>(s.token_counts, T, s.token_offsets,
                                              ptr<int32_t>(a.num_pairs));
  check_launch("scan_kernel");
  emit_kernel<L><<<token_blocks, kTokenThreads, 0, stream>>>(
      p, C, ptr<int32_t>(a.token_ids), ptr<int32_t>(a.expert_ids), ptr<float>(a.scores));
  check_launch("emit_kernel");
}

}  // namespace

size_t round_routing_workspace_bytes(int64_t num_tokens, int64_t num_experts) {
  detail::WorkspaceCarver w;
  carve(w, num_tokens, num_experts);
  return w.bytes();
}

void round_routing(const RoundRoutingArgs& args, cudaStream_t stream) {
  if (args.logits.dtype == DType::BF16) round_typed<__nv_bfloat16>(args, stream);
  else round_typed<float>(args, stream);
}

}  // namespace sonicmoe::cuda
