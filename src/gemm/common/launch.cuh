// Host-side pieces every engine's launcher shares: the schedules of the two
// groupings, tile-count bounds, operand descriptors, launch checks.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "gemm/common/operand.cuh"
#include "gemm/common/scheduler.cuh"
#include "gemm/engine.hpp"

namespace sonicmoe::gemm {

inline void check_launch(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    throw Error(Status::CudaError,
                std::string("sonicmoe: launching ") + what + " failed: " + cudaGetErrorString(e));
}

inline int sm_count() {
  int dev = 0, count = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, dev);
  return std::max(count, 1);
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Expert e owns rows [offset_e, offset_{e+1}); N and K are fixed.
inline Schedule grouped_m_schedule(const LayerDims& L, const RoutingPtrs& r, int64_t N, int64_t K,
                                   int tile_n) {
  Schedule s{};
  s.num_experts = static_cast<int>(L.E);
  s.N = N;
  s.K = K;
  s.positions = L.N;
  s.n_tiles = static_cast<int>(ceil_div(N, tile_n));
  s.expert_offsets = r.expert_offsets;
  s.tile_offsets = r.tile_offsets;
  return s;
}

// Every expert has an M x N output and reduces over its own rows.
inline Schedule grouped_k_schedule(const LayerDims& L, const RoutingPtrs& r, int64_t M, int64_t N,
                                   int tile_m, int tile_n) {
  Schedule s{};
  s.num_experts = static_cast<int>(L.E);
  s.M = M;
  s.N = N;
  s.positions = L.N;
  s.m_tiles = static_cast<int>(ceil_div(M, tile_m));
  s.n_tiles = static_cast<int>(ceil_div(N, tile_n));
  s.expert_offsets = r.expert_offsets;
  s.expert_order = r.expert_order;
  return s;
}

// Grouped-M tiles are at most ceil(N / tile_m) + E (each expert adds at most
// one partial tile) times the N tiles: the grid's upper bound.
inline int64_t grouped_m_tiles(const LayerDims& L, const Schedule& s, int tile_m) {
  return (ceil_div(L.N, tile_m) + L.E) * s.n_tiles;
}
// Grouped-K tiles scheduled pair_m x pair_n at a time (2-CTA clusters; 1 x 1:
// every tile on its own).
inline int64_t grouped_k_units(const LayerDims& L, const Schedule& s, int pair_m = 1,
                               int pair_n = 1) {
  return L.E * ceil_div(s.m_tiles, pair_m) * ceil_div(s.n_tiles, pair_n);
}

inline Operand rows_of(const bf16_t* p, int64_t ld, int64_t rows, const int32_t* gather = nullptr) {
  return Operand{p, ld, 0, gather, rows};
}
inline Operand weights_of(const bf16_t* p, int64_t ld, int64_t expert_stride) {
  return Operand{p, ld, expert_stride, nullptr, 0};
}

}  // namespace sonicmoe::gemm
