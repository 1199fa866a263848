// A GEMM operand in global memory as the loaders of every engine see it.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>

namespace sonicmoe::gemm {

using bf16_t = __nv_bfloat16;

// Which dimension is contiguous in a stored operand: K (A: [M][K], B: [N][K])
// or the other one (A: [K][M], B: [K][N]).
enum class Major { K, MN };

// A row-major matrix. Row r of the stored matrix is at ptr + row(r) * ld,
// with row(r) = gather[r] (clamped to [0, rows)) or r. Weights of expert e
// start at ptr + e * expert_stride.
struct Operand {
  const bf16_t* ptr = nullptr;
  int64_t ld = 0;
  int64_t expert_stride = 0;
  const int32_t* gather = nullptr;
  int64_t rows = 0;  // rows of the stored matrix: gathered indices are clamped to it
};

__device__ __forceinline__ const bf16_t* operand_row(const Operand& op, int expert, int64_t r) {
  const int64_t row =
      op.gather ? min(max(int64_t{0}, static_cast<int64_t>(__ldg(op.gather + r))), op.rows - 1) : r;
  return op.ptr + expert * op.expert_stride + row * op.ld;
}

}  // namespace sonicmoe::gemm
