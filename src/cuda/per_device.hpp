// Launch settings that belong to a device, not to the process.
//
// Function attributes (cudaFuncSetAttribute: the dynamic shared-memory
// limit) and the quantities derived from a device's limits (pipeline stages,
// occupancy) hold for the device that was current when they were set. A
// process that runs layers on two GPUs (one process driving several
// devices, or an A100 beside an H100) must set them on each, so they are
// cached per device ordinal, once each (thread-safe).
#pragma once

#include <cuda_runtime.h>

#include <mutex>
#include <string>

#include <sonicmoe/types.hpp>

namespace sonicmoe::cuda {

inline constexpr int kMaxDevices = 64;

inline int current_device() {
  int dev = 0;
  const cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess)
    throw Error(Status::CudaError,
                std::string("sonicmoe: cudaGetDevice: ") + cudaGetErrorString(e));
  if (dev < 0 || dev >= kMaxDevices)
    throw Error(Status::CudaError, "sonicmoe: device ordinal " + std::to_string(dev) +
                                       " is beyond the " + std::to_string(kMaxDevices) +
                                       " devices this build supports");
  return dev;
}

// init(device) runs once per device for each distinct Init type (each call
// site's lambda); the result is returned on every later call on that device.
template <class Config, class Init>
const Config& per_device(Init&& init) {
  static std::once_flag once[kMaxDevices];
  static Config config[kMaxDevices];
  const int dev = current_device();
  std::call_once(once[dev], [&] { config[dev] = init(dev); });
  return config[dev];
}

}  // namespace sonicmoe::cuda
