// The memory-bound kernels around the grouped GEMMs: aggregation per token,
// the dS reduction, bias-gradient reductions, and the tile prefix that the
// grouped-M schedulers read. All deterministic (fixed reduction orders, no
// floating-point atomics) and free of host synchronisation.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace sonicmoe::kernels {

using bf16_t = __nv_bfloat16;

// Three prefix sums over experts, from expert_offsets, with tiles_e =
// ceil(count_e / m_tile): tile_offsets[e] = sum_{e' < e} tiles_e'; for the
// products that schedule M tiles in pairs (2-CTA clusters),
// tile_offsets[E + 1 + e] = sum_{e' < e} floor(tiles_e' / 2) (whole pairs)
// and tile_offsets[2 (E + 1) + e] = sum_{e' < e} (tiles_e' mod 2) (each
// expert's odd last tile, which pairs run two experts at a time):
// tile_offsets_count(E) ints in all.
inline int64_t tile_offsets_count(int64_t num_experts) { return 3 * (num_experts + 1); }
void tile_offsets(const int32_t* expert_offsets, int64_t num_experts, int m_tile,
                  int32_t* tile_offsets, cudaStream_t stream);

// order[r] = the expert with the r-th largest load (ties: lower id first),
// the listing order of grouped-K tiles. Identity beyond 4096 experts, where
// the quadratic ranking would cost more than the imbalance it removes.
void experts_by_load(const int32_t* expert_offsets, int64_t num_experts, int32_t* order,
                     cudaStream_t stream);

// out[p] = scores[sorted_pair[p]] for each of the num_pairs positions (pair
// ids clamped into range): the dH epilogue reads its rows' scores in
// position order, one copy each.
void scores_by_position(const float* scores, const int32_t* sorted_pair, int64_t num_pairs,
                        float* out, cudaStream_t stream);

// out[t] = sum over the token's pairs i of w_i * src[pair_position[i]], in
// pair order with fp32 accumulation; w = scores, or 1 when scores is null.
// Pairs with an invalid position (dropped by routing) contribute nothing.
void aggregate_rows(const bf16_t* src, const float* scores, const int32_t* token_offsets,
                    const int32_t* pair_position, int64_t num_tokens, int64_t num_pairs,
                    int64_t width, bf16_t* out, cudaStream_t stream);

// dscores[i] = sum_tiles ds_part[p][tile] (+ <dO[t], b2_e> when b2 is set),
// p = pair_position[i], t = sorted_token[p]; 0 for dropped pairs.
void reduce_dscores(const float* ds_part, int n_tiles, const int32_t* pair_position,
                    const int32_t* sorted_token, const int32_t* expert_offsets,
                    const bf16_t* dout, const bf16_t* b2, int64_t num_tokens,
                    int64_t num_experts, int64_t num_pairs, int64_t hidden, float* dscores,
                    cudaStream_t stream);

// out[e][c] = sum over expert e's positions p of w_p * src[row(p)][c], with
// row(p) = gather[p] (or p), w_p = scores[sorted_pair[p]] (or 1).
void expert_column_sums(const bf16_t* src, int64_t src_rows, const int32_t* gather,
                        const float* scores, const int32_t* sorted_pair,
                        const int32_t* expert_offsets, int64_t num_experts, int64_t num_pairs,
                        int64_t width, bf16_t* out, cudaStream_t stream);

}  // namespace sonicmoe::kernels
