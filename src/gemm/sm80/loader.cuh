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
  static constexpr int kPublishedBytes = 0;  // nothing to publish (MNMajorLoader)

  // Rows first_row .. first_row + rows - 1 of the stored matrix; columns
  // (k) are valid below k_extent.
  __device__ void init(const Operand& op, int expert, int64_t first_row, int rows,
                       int64_t k_extent, uint32_t /*published*/) {
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
  __device__ void load_direct(uint32_t smem, int64_t k0) const { load(smem, k0); }
  __device__ void publish_first(int64_t) {}
  __device__ void publish(int64_t) {}

 private:
  const bf16_t* row_[kGather ? kPasses : 1];
  // 32-bit: K and 32 row widths are far below 2^31, and every register
  // counts at 2 CTAs per SM (128 per thread).
  int stride_ = 0;
  int chunk_, rows_;
  int k_extent_;
};

// MN-major tile: 64 k-rows x kCols columns (M or N: 128 or 256). The rows
// are k indices, new every K step. A k-row is kChunks = kCols / 8 chunks;
// thread t copies chunk t % kChunks of rows t / kChunks + (256 / kChunks) i,
// so consecutive lanes read one contiguous row piece (256 or 512 bytes).
//
// Each copy needs its k-row's address: a gathered row (dO or X by token) is
// an index load, a clamp and a 64-bit product. Computed by every thread for
// each of its copies, that was ~20 instructions per copy, issued by every
// warp right after the stage barrier while no MMA was queued. So the K loop
// publishes them instead: one thread per k-row (threads kPublisher ..
// kPublisher + 63) computes its row's address a stage ahead into shared
// memory (two buffers, by stage parity; the stage barrier orders a buffer's
// writes before its reads), from an index it loaded a stage before that,
// and a copy is a shared load, a null test and the cp.async. The prologue's
// stages, requested at once, take the direct path (load_direct).
template <int kCols, int kPublisher>
class MNMajorLoader {
  static constexpr int kChunks = kCols / 8;
  static constexpr int kRowStep = kThreads / kChunks;  // k-rows per pass
  static constexpr int kPasses = kBK / kRowStep;       // copies per thread
  static_assert(kCols % 64 == 0 && kThreads % kChunks == 0 && kBK % kRowStep == 0);
  static_assert(kPublisher % 32 == 0 && kPublisher + kBK <= kThreads);

 public:
  // Shared memory of the published addresses: two buffers of kBK rows.
  static constexpr int kPublishedBytes = 2 * kBK * 8;

  // k-row j of the tile is stored row first_row + k0 + j, valid while
  // k0 + j < k_rows; columns col0 .. are valid below col_extent.
  // published: shared address of this operand's kPublishedBytes.
  __device__ void init(const Operand& op, int expert, int64_t first_row, int64_t k_rows,
                       int64_t col0, int64_t col_extent, uint32_t published) {
    const int64_t col = col0 + (threadIdx.x % kChunks) * 8;
    col_ok_ = col < col_extent;
    col_ = static_cast<int>(col);
    rows_ = op.ptr + expert * op.expert_stride;
    ld_ = static_cast<int>(op.ld);
    gather_ = op.gather ? op.gather + first_row : nullptr;
    if (!op.gather) rows_ += first_row * op.ld;
    max_row_ = static_cast<int>(op.rows - 1);
    k_rows_ = static_cast<int>(k_rows);
    published_ = published;
  }

  // The stage at k0, every address computed here (the prologue's stages).
  __device__ void load_direct(uint32_t smem, int64_t k0) const {
    const int c = threadIdx.x % kChunks;
    int index[kPasses];
#pragma unroll
    for (int i = 0; i < kPasses; ++i)  // all index loads first
      index[i] = index_of(static_cast<int>(k0) + threadIdx.x / kChunks + kRowStep * i);
#pragma unroll
    for (int i = 0; i < kPasses; ++i) {
      const int j = threadIdx.x / kChunks + kRowStep * i;
      copy(smem, j, c, row_of(static_cast<int>(k0) + j, index[i]));
    }
  }

  // The publishing thread's first address (the stage at k0), and the index
  // of its next one. Before the barrier of the stage that copies it.
  __device__ void publish_first(int64_t k0) {
    const int p = static_cast<int>(threadIdx.x) - kPublisher;
    if (p < 0 || p >= kBK) return;
    index_ = index_of(static_cast<int>(k0) + p);
    publish(k0);
  }
  // The stage at k0's address of the publishing thread's k-row, from the
  // index loaded by the previous publish; then the index of the next stage.
  __device__ void publish(int64_t k0) {
    const int p = static_cast<int>(threadIdx.x) - kPublisher;
    if (p < 0 || p >= kBK) return;
    const int kr = static_cast<int>(k0) + p;
    arch::sts_u64(buffer(k0) + p * 8, reinterpret_cast<uint64_t>(row_of(kr, index_)));
    index_ = index_of(kr + kBK);
  }
  // The stage at k0 from its published addresses.
  __device__ void load(uint32_t smem, int64_t k0) const {
    const int c = threadIdx.x % kChunks;
    const bf16_t* row[kPasses];
#pragma unroll
    for (int i = 0; i < kPasses; ++i)  // all shared loads first (they are volatile)
      row[i] = reinterpret_cast<const bf16_t*>(
          arch::lds_u64(buffer(k0) + (threadIdx.x / kChunks + kRowStep * i) * 8));
#pragma unroll
    for (int i = 0; i < kPasses; ++i) copy(smem, threadIdx.x / kChunks + kRowStep * i, c, row[i]);
  }

 private:
  __device__ uint32_t buffer(int64_t k0) const {
    return published_ + ((static_cast<int>(k0) / kBK) & 1) * (kBK * 8);
  }
  // The stored row of k-row kr, raw (a gather index is clamped by row_of).
  __device__ int index_of(int kr) const {
    return gather_ && kr < k_rows_ ? __ldg(gather_ + kr) : kr;
  }
  // k-row kr's row address, or null past the tile's k-rows. Clamped: corrupt
  // indices must not read out of bounds.
  __device__ const bf16_t* row_of(int kr, int index) const {
    if (kr >= k_rows_) return nullptr;
    const int row = gather_ ? min(max(index, 0), max_row_) : index;
    return rows_ + row * static_cast<int64_t>(ld_);
  }
  __device__ void copy(uint32_t smem, int j, int c, const bf16_t* row) const {
    const bool ok = col_ok_ && row != nullptr;
    // With a source size of 0 nothing is read: rows_ only has to be an address.
    arch::cp_async_16(mn_addr(smem, j, c * 8), ok ? row + col_ : rows_, ok ? 16u : 0u);
  }

  const bf16_t* rows_;  // the operand's (expert's) first row
  int ld_;              // a row width in elements: far below 2^31
  const int32_t* gather_;
  int max_row_, k_rows_, col_;
  uint32_t published_;
  int index_ = 0;  // publishing threads: the index of their next address
  bool col_ok_;
};

// kSpan: the tile's extent along M or N (kBM for A, kBN for B). MN-major
// operands gather at run time (op.gather), so kGather is for K-major only.
// kPublisher: the first of the 64 threads that publish an MN-major
// operand's row addresses (A and B use different warps).
template <Major M, bool kGather, int kSpan, int kPublisher>
using LoaderFor = std::conditional_t<M == Major::K, KMajorLoader<kGather, kSpan>,
                                     MNMajorLoader<kSpan, kPublisher>>;

}  // namespace sonicmoe::gemm::sm80
