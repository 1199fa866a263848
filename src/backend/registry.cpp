#include <string>

#include "backend/backend.hpp"

namespace sonicmoe::detail {

Backend& backend_for(Device device, const char* call) {
  const std::string where = std::string("sonicmoe::") + call + ": ";
  const auto type = static_cast<int>(device.type);
  if (device.type != DeviceType::CPU && device.type != DeviceType::CUDA)
    throw Error(Status::InvalidArgument, where +
                                             "argument 'device': expected device type cpu (0) or "
                                             "cuda (1), got " +
                                             std::to_string(type));
  if (device.type == DeviceType::CPU) return cpu_backend();
  Backend* gpu = cuda_backend();
  const int count = cuda_device_count_impl();
  if (gpu == nullptr || count == 0)
    throw Error(Status::Unsupported,
                where + "no CUDA device is available; CUDA tensors cannot run here (use CPU "
                        "tensors for the reference backend)");
  if (device.index < 0 || device.index >= count)
    throw Error(Status::InvalidArgument, where + "argument 'device': expected a CUDA device index in [0, " +
                                             std::to_string(count) + "), got " +
                                             std::to_string(device.index));
  return *gpu;
}

}  // namespace sonicmoe::detail
