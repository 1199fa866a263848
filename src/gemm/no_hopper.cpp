// Builds without the Hopper engine (SONICMOE_HOPPER_ARCHS empty) link this.
#include "gemm/engine.hpp"

namespace sonicmoe::gemm {

Engine* hopper_engine() { return nullptr; }

}  // namespace sonicmoe::gemm
