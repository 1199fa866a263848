// Device discovery and the GPU backend's entry in the registry. The GPU
// backend itself (routing kernels, grouped-GEMM engines, layer orchestration)
// lands here; until it does, CUDA tensors are reported as unsupported.
#include <cuda_runtime_api.h>

#include "backend/backend.hpp"

namespace sonicmoe::detail {

int cuda_device_count_impl() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return count;
}

Backend* cuda_backend() { return nullptr; }

}  // namespace sonicmoe::detail
