#include "kernels/utility.cuh"

#include <string>

#include <sonicmoe/types.hpp>

namespace sonicmoe::kernels {
namespace {

template <class T>
__global__ void permute_kernel(const T* __restrict__ src, T* __restrict__ dst, int64_t experts,
                               int64_t rows, int64_t cols, int direction) {
  const int64_t total = experts * rows * cols;
  const int64_t half = rows / 2;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t c = i % cols, er = i / cols, r = er % rows, e = er / rows;
    const int64_t inter = r < half ? 2 * r : 2 * (r - half) + 1;
    const int64_t from = direction > 0 ? r : inter, to = direction > 0 ? inter : r;
    dst[(e * rows + to) * cols + c] = src[(e * rows + from) * cols + c];
  }
}

}  // namespace

void permute_gate_up(const void* src, void* dst, int64_t experts, int64_t rows, int64_t cols,
                     int element_bytes, int direction, cudaStream_t stream) {
  const int64_t total = experts * rows * cols;
  if (total == 0) return;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((total + 255) / 256, 65536));
  if (element_bytes == 2)
    permute_kernel<<<blocks, 256, 0, stream>>>(static_cast<const uint16_t*>(src),
                                               static_cast<uint16_t*>(dst), experts, rows, cols,
                                               direction);
  else
    permute_kernel<<<blocks, 256, 0, stream>>>(static_cast<const uint32_t*>(src),
                                               static_cast<uint32_t*>(dst), experts, rows, cols,
                                               direction);
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    throw Error(Status::CudaError,
                std::string("sonicmoe: launching permute_gate_up failed: ") + cudaGetErrorString(e));
}

}  // namespace sonicmoe::kernels
