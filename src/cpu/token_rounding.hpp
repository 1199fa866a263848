// The CPU reference of token rounding (sonicmoe.hpp, round_routing).
#pragma once

#include <sonicmoe/sonicmoe.hpp>

namespace sonicmoe::cpu {

// Arguments validated by src/api and expert ids checked by the backend.
void round_routing(const RoundRoutingArgs& args);

}  // namespace sonicmoe::cpu
