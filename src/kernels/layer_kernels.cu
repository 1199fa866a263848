#include "kernels/layer_kernels.cuh"

#include <algorithm>
#include <string>

#include <sonicmoe/types.hpp>

#include "kernels/block_scan.cuh"

namespace sonicmoe::kernels {
namespace {

void check_launch(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    throw Error(Status::CudaError,
                std::string("sonicmoe: launching ") + what + " failed: " + cudaGetErrorString(e));
}

constexpr int kScanThreads = kBlockScanThreads;

// tiles[e] = M tiles of experts before e (ceil(count / m_tile) each), then
// their whole pairs and their odd last tiles (layer_kernels.cuh).
__global__ void __launch_bounds__(kScanThreads)
    tile_offsets_kernel(const int32_t* __restrict__ offsets, int num_experts, int m_tile,
                        int32_t* __restrict__ tiles) {
  for (int part = 0; part < 3; ++part, tiles += num_experts + 1) {
    block_exclusive_scan(
        [=](int64_t e) {
          const int t = (max(0, offsets[e + 1] - offsets[e]) + m_tile - 1) / m_tile;
          return part == 0 ? t : part == 1 ? t / 2 : t & 1;
        },
        num_experts, tiles);
  }
}

constexpr int kMaxRankedExperts = 4096;

// Rank of expert e by descending load: how many experts come before it.
__global__ void experts_by_load_kernel(const int32_t* __restrict__ offsets, int num_experts,
                                       int32_t* __restrict__ order) {
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= num_experts) return;
  if (num_experts > kMaxRankedExperts) {
    order[e] = e;
    return;
  }
  auto load = [&](int f) { return max(0, offsets[f + 1] - offsets[f]); };
  const int mine = load(e);
  int rank = 0;
  for (int f = 0; f < num_experts; ++f) {
    const int other = load(f);
    rank += other > mine || (other == mine && f < e);
  }
  order[rank] = e;
}

__global__ void scores_by_position_kernel(const float* __restrict__ scores,
                                          const int32_t* __restrict__ sorted_pair,
                                          int64_t num_pairs, float* __restrict__ out) {
  for (int64_t p = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; p < num_pairs;
       p += int64_t{gridDim.x} * blockDim.x) {
    const int64_t pair = min(max(int64_t{sorted_pair[p]}, int64_t{0}), num_pairs - 1);
    out[p] = scores[pair];
  }
}

// One CTA per token; each thread owns 8 consecutive columns (one 16-byte
// vector) per step. The token's pairs are first compacted, in order, into
// shared memory (position, weight) kAggThreads at a time: dropped pairs
// (position -1) cost one coalesced read instead of a serial step each, which
// matters for the padding of a rounded routing (thousands of dropped pairs on
// the last token), and the accumulation loop reads its operands from shared
// memory with several row loads in flight. Pairs are summed in pair order, so
// the bits do not depend on the compaction.
constexpr int kAggThreads = 128;

struct AggChunk {
  int32_t pos[kAggThreads];
  float weight[kAggThreads];
  int32_t warp_count[kAggThreads / 32];
  int32_t count;
};

// Compacts the valid pairs of [first, min(first + kAggThreads, end)) into c.
// Every thread of the block calls it.
__device__ __forceinline__ void compact_pairs(AggChunk& c, const float* __restrict__ scores,
                                              const int32_t* __restrict__ pair_position,
                                              int64_t num_pairs, int64_t first, int64_t end) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t i = first + threadIdx.x;
  int32_t p = i < end ? pair_position[i] : -1;
  const bool valid = 0 <= p && p < num_pairs;
  const float w = valid && scores ? scores[i] : 1.f;
  const unsigned ballot = __ballot_sync(0xffffffffu, valid);
  if (lane == 0) c.warp_count[warp] = __popc(ballot);
  __syncthreads();
  int before = 0, total = 0;
#pragma unroll
  for (int k = 0; k < kAggThreads / 32; ++k) {
    before += k < warp ? c.warp_count[k] : 0;
    total += c.warp_count[k];
  }
  if (valid) {
    const int at = before + __popc(ballot & ((1u << lane) - 1u));
    c.pos[at] = p;
    c.weight[at] = w;
  }
  if (threadIdx.x == 0) c.count = total;
  __syncthreads();
}

__global__ void __launch_bounds__(kAggThreads)
    aggregate_kernel(const bf16_t* __restrict__ src, const float* __restrict__ scores,
                     const int32_t* __restrict__ token_offsets,
                     const int32_t* __restrict__ pair_position, int64_t num_pairs, int64_t width,
                     bf16_t* __restrict__ out) {
  __shared__ AggChunk chunk;
  const int64_t t = blockIdx.x;
  const int64_t begin = max(token_offsets[t], 0);
  const int64_t end = min(static_cast<int64_t>(token_offsets[t + 1]), num_pairs);
  // Most tokens have at most kAggThreads pairs: compact once for all columns.
  const bool one_chunk = end - begin <= kAggThreads;
  if (one_chunk) compact_pairs(chunk, scores, pair_position, num_pairs, begin, end);
  const int64_t steps = (width + kAggThreads * 8 - 1) / (kAggThreads * 8);
  for (int64_t s = 0; s < steps; ++s) {  // block-uniform: compact_pairs syncs
    const int64_t c = (s * kAggThreads + threadIdx.x) * 8;
    float acc[8] = {};
    auto accumulate = [&] {
      if (c >= width) return;
      const int n = chunk.count;
#pragma unroll 4
      for (int j = 0; j < n; ++j) {
        const float w = chunk.weight[j];
        const uint4 v = *reinterpret_cast<const uint4*>(src + chunk.pos[j] * width + c);
        const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const float2 f = __bfloat1622float2(h[k]);
          acc[2 * k] += w * f.x;
          acc[2 * k + 1] += w * f.y;
        }
      }
    };
    if (one_chunk) {
      accumulate();
    } else {
      for (int64_t first = begin; first < end; first += kAggThreads) {
        __syncthreads();  // every thread is done with the previous chunk
        compact_pairs(chunk, scores, pair_position, num_pairs, first, end);
        accumulate();
      }
    }
    if (c < width) {
      uint4 o;
      __nv_bfloat162* oh = reinterpret_cast<__nv_bfloat162*>(&o);
#pragma unroll
      for (int k = 0; k < 4; ++k) oh[k] = __floats2bfloat162_rn(acc[2 * k], acc[2 * k + 1]);
      *reinterpret_cast<uint4*>(out + t * width + c) = o;
    }
  }
}

__device__ int expert_of(const int32_t* offsets, int num_experts, int32_t p) {
  int lo = 0, hi = num_experts - 1;  // largest e with offsets[e] <= p
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (offsets[mid] <= p) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

// The tile partials of pair p summed in tile order (both kernels below, so
// that the bits do not depend on which one runs).
__device__ __forceinline__ float sum_partials(const float* __restrict__ ds_part, int n_tiles,
                                              int32_t p) {
  float s = 0.f;
  for (int k = 0; k < n_tiles; ++k) s += ds_part[int64_t{p} * n_tiles + k];
  return s;
}

// Without b2: one thread per pair. (A warp per pair, as the bias needs, left
// 31 lanes idle: 7b-n256 took 30 us, 78 GB/s.)
__global__ void reduce_dscores_kernel(const float* __restrict__ ds_part, int n_tiles,
                                      const int32_t* __restrict__ pair_position,
                                      int64_t num_pairs, float* __restrict__ dscores) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= num_pairs) return;
  const int32_t p = pair_position[i];
  dscores[i] = p < 0 || p >= num_pairs ? 0.f : sum_partials(ds_part, n_tiles, p);
}

// With b2: one warp per pair. The tile partials are summed by lane 0 in tile
// order and the bias dot product with a fixed shuffle tree: reproducible bits.
__global__ void reduce_dscores_bias_kernel(const float* __restrict__ ds_part, int n_tiles,
                                           const int32_t* __restrict__ pair_position,
                                           const int32_t* __restrict__ sorted_token,
                                           const int32_t* __restrict__ expert_offsets,
                                           const bf16_t* __restrict__ dout,
                                           const bf16_t* __restrict__ b2, int64_t num_tokens,
                                           int num_experts, int64_t num_pairs, int64_t hidden,
                                           float* __restrict__ dscores) {
  const int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (i >= num_pairs) return;
  const int32_t p = pair_position[i];
  if (p < 0 || p >= num_pairs) {
    if (lane == 0) dscores[i] = 0.f;
    return;
  }
  float bias_dot = 0.f;
  const int e = expert_of(expert_offsets, num_experts, p);
  const int64_t t = min(max(int64_t{sorted_token[p]}, int64_t{0}), num_tokens - 1);
  for (int64_t c = lane * 2; c < hidden; c += 64) {
    const float2 g = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(dout + t * hidden + c));
    const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(b2 + e * hidden + c));
    bias_dot += g.x * b.x + g.y * b.y;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) bias_dot += __shfl_xor_sync(0xffffffffu, bias_dot, o);
  if (lane == 0) dscores[i] = sum_partials(ds_part, n_tiles, p) + bias_dot;
}

// One thread per (expert, column pair); positions summed in order.
__global__ void column_sums_kernel(const bf16_t* __restrict__ src, int64_t src_rows,
                                   const int32_t* __restrict__ gather,
                                   const float* __restrict__ scores,
                                   const int32_t* __restrict__ sorted_pair,
                                   const int32_t* __restrict__ expert_offsets, int64_t num_pairs,
                                   int64_t width, bf16_t* __restrict__ out) {
  const int e = blockIdx.y;
  const int64_t c = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * 2;
  if (c >= width) return;
  const int64_t begin = max(0, expert_offsets[e]);
  const int64_t end = min(num_pairs, static_cast<int64_t>(expert_offsets[e + 1]));
  float2 acc = {0.f, 0.f};
  for (int64_t p = begin; p < end; ++p) {
    const int64_t row = gather ? min(max(int64_t{gather[p]}, int64_t{0}), src_rows - 1) : p;
    const float w = scores ? scores[min(max(sorted_pair[p], 0), static_cast<int32_t>(num_pairs - 1))] : 1.f;
    const float2 v = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(src + row * width + c));
    acc.x += w * v.x;
    acc.y += w * v.y;
  }
  *reinterpret_cast<__nv_bfloat162*>(out + e * width + c) = __floats2bfloat162_rn(acc.x, acc.y);
}

}  // namespace

void tile_offsets(const int32_t* expert_offsets, int64_t num_experts, int m_tile,
                  int32_t* tiles, cudaStream_t stream) {
  tile_offsets_kernel<<<1, kScanThreads, 0, stream>>>(expert_offsets, static_cast<int>(num_experts),
                                                      m_tile, tiles);
  check_launch("tile_offsets");
}

void experts_by_load(const int32_t* expert_offsets, int64_t num_experts, int32_t* order,
                     cudaStream_t stream) {
  constexpr int kThreads = 256;
  const unsigned blocks = static_cast<unsigned>((num_experts + kThreads - 1) / kThreads);
  experts_by_load_kernel<<<blocks, kThreads, 0, stream>>>(expert_offsets,
                                                          static_cast<int>(num_experts), order);
  check_launch("experts_by_load");
}

void scores_by_position(const float* scores, const int32_t* sorted_pair, int64_t num_pairs,
                        float* out, cudaStream_t stream) {
  if (num_pairs <= 0) return;
  constexpr int kThreads = 256;
  const unsigned blocks =
      static_cast<unsigned>(std::min<int64_t>((num_pairs + kThreads - 1) / kThreads, 4096));
  scores_by_position_kernel<<<blocks, kThreads, 0, stream>>>(scores, sorted_pair, num_pairs, out);
  check_launch("scores_by_position");
}

void aggregate_rows(const bf16_t* src, const float* scores, const int32_t* token_offsets,
                    const int32_t* pair_position, int64_t num_tokens, int64_t num_pairs,
                    int64_t width, bf16_t* out, cudaStream_t stream) {
  if (num_tokens == 0) return;
  aggregate_kernel<<<static_cast<unsigned>(num_tokens), kAggThreads, 0, stream>>>(
      src, scores, token_offsets, pair_position, num_pairs, width, out);
  check_launch("aggregate_rows");
}

void reduce_dscores(const float* ds_part, int n_tiles, const int32_t* pair_position,
                    const int32_t* sorted_token, const int32_t* expert_offsets,
                    const bf16_t* dout, const bf16_t* b2, int64_t num_tokens,
                    int64_t num_experts, int64_t num_pairs, int64_t hidden, float* dscores,
                    cudaStream_t stream) {
  if (num_pairs == 0) return;
  constexpr int kThreads = 256;
  if (b2 == nullptr) {
    const int64_t blocks = (num_pairs + kThreads - 1) / kThreads;
    reduce_dscores_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        ds_part, n_tiles, pair_position, num_pairs, dscores);
  } else {
    const int64_t blocks = (num_pairs * 32 + kThreads - 1) / kThreads;
    reduce_dscores_bias_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        ds_part, n_tiles, pair_position, sorted_token, expert_offsets, dout, b2, num_tokens,
        static_cast<int>(num_experts), num_pairs, hidden, dscores);
  }
  check_launch("reduce_dscores");
}

void expert_column_sums(const bf16_t* src, int64_t src_rows, const int32_t* gather,
                        const float* scores, const int32_t* sorted_pair,
                        const int32_t* expert_offsets, int64_t num_experts, int64_t num_pairs,
                        int64_t width, bf16_t* out, cudaStream_t stream) {
  constexpr int kThreads = 128;
  const dim3 grid(static_cast<unsigned>((width / 2 + kThreads - 1) / kThreads),
                  static_cast<unsigned>(num_experts));
  column_sums_kernel<<<grid, kThreads, 0, stream>>>(src, src_rows, gather, scores, sorted_pair,
                                                    expert_offsets, num_pairs, width, out);
  check_launch("expert_column_sums");
}

}  // namespace sonicmoe::kernels
