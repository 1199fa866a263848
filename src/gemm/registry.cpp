#include <cstdlib>
#include <string>

#include <cuda_runtime.h>

#include "gemm/engine.hpp"

namespace sonicmoe::gemm {

namespace {

bool is_hopper(int device) {
  int major = 0, minor = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  return major == 9 && minor == 0;
}

}  // namespace

Engine& engine_for_device(int device) {
  const char* env = std::getenv("SONICMOE_ENGINE");
  const std::string want = env ? env : "";
  if (want == "portable") return portable_engine();
  Engine* hopper = hopper_engine();
  const bool hopper_ok = hopper != nullptr && is_hopper(device);
  if (want == "hopper") {
    if (!hopper_ok)
      throw Error(Status::Unsupported,
                  "sonicmoe: SONICMOE_ENGINE=hopper needs an sm_90 device and a build with the "
                  "Hopper engine");
    return *hopper;
  }
  if (!want.empty())
    throw Error(Status::InvalidArgument,
                "sonicmoe: SONICMOE_ENGINE: expected 'portable' or 'hopper', got '" + want + "'");
  return hopper_ok ? *hopper : portable_engine();
}

}  // namespace sonicmoe::gemm
