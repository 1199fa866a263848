// Small data-movement kernels behind the API's utilities.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace sonicmoe::kernels {

// [E][2n][cols] rows: concatenated (gate j at row j, up j at row n + j) <->
// interleaved (gate j at row 2j, up j at 2j + 1). direction +1 interleaves,
// -1 de-interleaves. element_bytes is 2 or 4.
void permute_gate_up(const void* src, void* dst, int64_t experts, int64_t rows, int64_t cols,
                     int element_bytes, int direction, cudaStream_t stream);

}  // namespace sonicmoe::kernels
