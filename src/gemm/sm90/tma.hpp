// Host-side TMA descriptors (CUtensorMap) for the Hopper engine, all with
// 128-byte swizzle so that boxes land in the layout wgmma reads. Out-of-bounds
// elements are filled with zeros.
#pragma once

#include <cstdint>

#include <cuda.h>


namespace sonicmoe::gemm::sm90 {

// Rows of a [rows][cols] matrix, boxes of box_rows x 64 columns.
CUtensorMap tma_rows_2d(const void* ptr, int64_t rows, int64_t cols, int box_rows);

// Per-expert matrices [experts][rows][cols], boxes of box_rows x 64 columns
// of one expert.
CUtensorMap tma_experts_3d(const void* ptr, int64_t experts, int64_t rows, int64_t cols,
                           int box_rows);

}  // namespace sonicmoe::gemm::sm90
