#include <string>

#include "backend/backend.hpp"

namespace sonicmoe::detail {

Backend& backend_for(Device device) {
  if (device.type == DeviceType::CPU) return cpu_backend();
  Backend* gpu = cuda_backend();
  if (gpu == nullptr)
    throw Error(Status::Unsupported,
                "sonicmoe: this build has no GPU backend; CUDA tensors cannot run (use CPU "
                "tensors for the reference backend)");
  const int count = cuda_device_count_impl();
  if (device.index < 0 || device.index >= count)
    throw Error(Status::InvalidArgument,
                "sonicmoe: expected a CUDA device index in [0, " + std::to_string(count) +
                    "), got " + std::to_string(device.index));
  return *gpu;
}

}  // namespace sonicmoe::detail
