// Operand loaders: global -> shared with cp.async, 16 bytes per copy, into the
// swizzled tiles of tile.cuh. Rows may be gathered through an index array
// (X or dO rows by token): the permuted copy of the operand never exists.
// Anything past the operand's edge is zero-filled without being read, so no
// tile ever needs padding in global memory.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#include "arch/sm80.cuh"
#include "gemm/common/operand.cuh"
#include "gemm/sm80/tile.cuh"

namespace sonicmoe::gemm::sm80 {

// K-major tile: kRows rows (M or N: 128 or 256) x 64 k. The rows are fixed
// for the whole K loop. Thread t copies chunk t % 8 of rows t / 8 + 32 i, so
// 8 consecutive lanes read one 128-byte row piece. Gathered rows keep
// kRows / 32 resolved row pointers; contiguous rows need only the first and
// a stride (registers are what the mainloop is short of).
template <bool kGather, int kRows>
class KMajorLoader {
  static constexpr int kPasses = kRows / 32;
  static_assert(kRows % 32 == 0);

 public:
  // Rows first_row .. first_row + rows - 1 of the stored matrix; columns
  // (k) are valid below k_extent.
  __device__ void init(const Operand& op, int expert, int64_t first_row, int rows,
                       int64_t k_extent) {
    const int t = threadIdx.x;
    chunk_ = t & 7;
    k_extent_ = static_cast<int>(k_extent);
    rows_ = rows;
    if constexpr (kGather) {
#pragma unroll
      for (int i = 0; i < kPasses; ++i) {
        const int r = (t >> 3) + 32 * i;
        row_[i] = r < rows ? operand_row(op, expert, first_row + r) : op.ptr;
      }
    } else {
      row_[0] = op.ptr + expert * op.expert_stride + (first_row + (t >> 3)) * op.ld;
      stride_ = static_cast<int>(32 * op.ld);
    }
  }

  __device__ void load(uint32_t smem, int64_t k0) const {
    const int col = static_cast<int>(k0) + chunk_ * 8;
    const bool col_ok = col < k_extent_;
#pragma unroll
    for (int i = 0; i < kPasses; ++i) {
      const int r = (threadIdx.x >> 3) + 32 * i;
      const bool ok = r < rows_ && col_ok;
      const bf16_t* row = kGather ? row_[i] : row_[0] + i * stride_;
      // With a source size of 0 nothing is read: the address only has to exist.
      arch::cp_async_16(smem + swz(r, chunk_), ok ? row + col : row_[0], ok ? 16u : 0u);
    }
  }

 private:
  const bf16_t* row_[kGather ? kPasses : 1];
  // 32-bit: K and 32 row widths are far below 2^31, and every register
  // counts at 2 CTAs per SM (128 per thread).
  int stride_ = 0;
  int chunk_, rows_;
  int k_extent_;
};

// MN-major tile: 64 k-rows x kCols columns (M or N: 128 or 256). The rows
// are k indices, new every K step, so gathers are resolved per load. A k-row
// is kChunks = kCols / 8 chunks; thread t copies chunk t % kChunks of rows
// t / kChunks + (256 / kChunks) i, so consecutive lanes read one contiguous
// row piece (256 or 512 bytes).
template <int kCols>
class MNMajorLoader {
  static constexpr int kChunks = kCols / 8;
  static constexpr int kRowStep = kThreads / kChunks;  // k-rows per pass
  static constexpr int kPasses = kBK / kRowStep;       // copies per thread
  static_assert(kCols % 64 == 0 && kThreads % kChunks == 0 && kBK % kRowStep == 0);

 public:
  // k-row j of the tile is stored row first_row + k0 + j, valid while
  // k0 + j < k_rows; columns col0 .. are valid below col_extent. Loads must
  // come with k0 = 0, kBK, 2 kBK, ...: each load fetches the gather indices
  // of the next one, so that their latency hides behind a stage of MMAs
  // instead of stalling the thread right before its copies.
  // first_load: the k offset of the first load() to come (a multiple of kBK).
  __device__ void init(const Operand& op, int expert, int64_t first_row, int64_t k_rows,
                       int64_t col0, int64_t col_extent, int first_load = 0) {
    const int64_t col = col0 + (threadIdx.x % kChunks) * 8;
    col_ok_ = col < col_extent;
    // Fold everything fixed for the tile into one base pointer: the loader
    // lives across the K loop, and registers are what the mainloop is short of.
    base_ = op.ptr + expert * op.expert_stride + col;
    ld_ = static_cast<int>(op.ld);
    gather_ = op.gather ? op.gather + first_row : nullptr;
    if (!op.gather) base_ += first_row * op.ld;
    max_row_ = static_cast<int>(op.rows - 1);
    k_rows_ = static_cast<int>(k_rows);
    fetch_rows(first_load);
  }

  __device__ void load(uint32_t smem, int64_t k0) {
    const int c = threadIdx.x % kChunks;
#pragma unroll
    for (int i = 0; i < kPasses; ++i) {
      const int j = threadIdx.x / kChunks + kRowStep * i;
      const bool ok = col_ok_ && static_cast<int>(k0) + j < k_rows_;
      // Clamped here, not when fetched: a use right after the load would
      // wait for it there (the stage of MMAs in between is the point).
      const int row = gather_ ? min(max(rows_[i], 0), max_row_) : rows_[i];
      // With a source size of 0 nothing is read: base_ only has to be an address.
      arch::cp_async_16(mn_addr(smem, j, c * 8),
                        ok ? base_ + row * static_cast<int64_t>(ld_) : base_, ok ? 16u : 0u);
    }
    fetch_rows(static_cast<int>(k0) + kBK);
  }

 private:
  __device__ void fetch_rows(int k0) {
#pragma unroll
    for (int i = 0; i < kPasses; ++i) {
      const int kr = k0 + threadIdx.x / kChunks + kRowStep * i;
      rows_[i] = kr;  // raw indices: load() clamps them
      if (gather_ && kr < k_rows_) rows_[i] = __ldg(gather_ + kr);
    }
  }

  const bf16_t* base_;
  int ld_;  // a row width in elements: far below 2^31
  const int32_t* gather_;
  int max_row_, k_rows_;
  int rows_[kPasses];  // stored rows of the next load
  bool col_ok_;
};

// kSpan: the tile's extent along M or N (kBM for A, kBN for B). MN-major
// operands gather at run time (op.gather), so kGather is for K-major only.
template <Major M, bool kGather, int kSpan>
using LoaderFor =
    std::conditional_t<M == Major::K, KMajorLoader<kGather, kSpan>, MNMajorLoader<kSpan>>;

}  // namespace sonicmoe::gemm::sm80
