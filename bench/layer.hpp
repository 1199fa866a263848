// Every buffer of one benchmarked layer on one device, and the two call
// sequences that are timed. Device-agnostic: the CPU and the GPU runner
// differ only in how they fill the inputs, time the calls and read results.
#pragma once

#include <cstdint>
#include <memory>

#include <sonicmoe/sonicmoe.hpp>

#include "device_buffer.hpp"
#include "problem.hpp"

namespace sonicmoe::bench {

using testing::Buffer;
using testing::DevTensor;

struct WorkspaceSizes {
  size_t routing = 0, forward = 0, backward = 0, rounding = 0;  // rounding: 0 for top-K
};

// Asks the library first, before anything is allocated: a build or device
// that cannot run the problem throws Error(Unsupported) here, not after
// gigabytes of set-up.
WorkspaceSizes query_workspaces(const Problem& p, Device dev);

// Bytes that BenchLayer allocates for `p`.
int64_t layer_bytes(const Problem& p, const WorkspaceSizes& ws);

class BenchLayer {
 public:
  BenchLayer(const Problem& p, Device dev, const WorkspaceSizes& ws);

  // router_forward (top-K on the f32 logits) + routing_from_topk +
  // moe_forward (training mode): what the forward timing covers. With token
  // rounding: router_forward + round_routing + routing_from_pairs (N = the
  // capacity) + moe_forward on the rounded pairs' scores.
  void forward(Stream s) const;
  // moe_backward + router_backward from dout and what forward kept. With
  // token rounding moe_backward only: the router's backward takes [T, K]
  // top-K slots and has no gradient for pairs that rounding added.
  void backward(Stream s) const;
  // round_routing alone, on the router output of the last forward.
  void round(Stream s) const;
  // The pairs the layer computes: T*K, or round_routing's pair count read
  // back from the last forward (synchronises).
  int64_t computed_pairs() const;
  // Fill every tensor the two sequences write with NaN / -1 bytes, so that
  // an element the library forgets to write fails the check.
  void poison_outputs() const;

  const Problem& problem() const { return p_; }

  // Inputs (filled by the runner).
  DevTensor logits, x, w1, b1, w2, b2, dout;
  // Router and routing outputs.
  DevTensor scores, expert_ids, counts, expert_offsets, token_offsets, sorted_token, sorted_pair,
      pair_position;
  // Token rounding's outputs [C] and pair count [1] (absent for top-K).
  DevTensor round_token, round_expert, round_score, num_pairs;
  // Layer outputs.
  DevTensor out, h, dx, dw1, db1, dw2, db2, dscores, dlogits;

 private:
  Problem p_;
  std::unique_ptr<Buffer> routing_ws_, forward_ws_, backward_ws_, rounding_ws_;
  RoundRoutingArgs round_;
  RouterArgs router_;
  Routing routing_;
  MoeForwardArgs forward_;
  MoeBackwardArgs backward_;
  RouterBackwardArgs router_backward_;
};

}  // namespace sonicmoe::bench
