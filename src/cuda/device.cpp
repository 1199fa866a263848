// Device discovery for the registry and the bench.
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

}  // namespace sonicmoe::detail
