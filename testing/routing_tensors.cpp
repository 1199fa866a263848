#include "routing_tensors.hpp"

namespace sonicmoe::testing {

RoutingTensors::RoutingTensors(Device dev, int64_t T, int64_t E, int64_t N)
    : counts(make(dev, DType::I32, {E})),
      expert_offsets(make(dev, DType::I32, {E + 1})),
      token_offsets(make(dev, DType::I32, {T + 1})),
      sorted_token(make(dev, DType::I32, {N})),
      sorted_pair(make(dev, DType::I32, {N})),
      pair_position(make(dev, DType::I32, {N})) {}

Routing RoutingTensors::routing() const {
  return Routing{counts.t,       expert_offsets.t, token_offsets.t,
                 sorted_token.t, sorted_pair.t,    pair_position.t};
}

RoutingMeta RoutingTensors::read() const {
  return RoutingMeta{to_ints(counts),       to_ints(expert_offsets), to_ints(token_offsets),
                     to_ints(sorted_token), to_ints(sorted_pair),    to_ints(pair_position)};
}

std::vector<const DevTensor*> RoutingTensors::all() const {
  return {&counts, &expert_offsets, &token_offsets, &sorted_token, &sorted_pair, &pair_position};
}

}  // namespace sonicmoe::testing
