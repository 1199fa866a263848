// The six routing outputs as tensors a test or benchmark owns, and read back.
#pragma once

#include <cstdint>
#include <vector>

#include <sonicmoe/sonicmoe.hpp>

#include "device_buffer.hpp"

namespace sonicmoe::testing {

// The routing metadata on the host (sonicmoe::Routing's fields, in order).
struct RoutingMeta {
  std::vector<int32_t> counts, expert_offsets, token_offsets, sorted_token, sorted_pair,
      pair_position;
};

// Poisoned int32 tensors for T tokens, E experts and N pairs on `dev`.
struct RoutingTensors {
  DevTensor counts, expert_offsets, token_offsets, sorted_token, sorted_pair, pair_position;

  RoutingTensors(Device dev, int64_t T, int64_t E, int64_t N);
  Routing routing() const;
  RoutingMeta read() const;
  // Each tensor, in RoutingMeta's order.
  std::vector<const DevTensor*> all() const;
};

}  // namespace sonicmoe::testing
