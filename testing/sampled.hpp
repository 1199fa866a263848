// An fp64 oracle for a sample of the MoE layer, for shapes where naive.hpp's
// whole-layer oracle would run for hours (dsv3-685b's backward alone is
// about 2e15 multiply-adds).
//
// From the same bf16 inputs the library saw, it computes:
// - for a few sampled tokens: their rows of out and dx, and the dscores of
//   their pairs; these need only those tokens' pairs and those pairs'
//   experts;
// - for a few sampled experts: their whole slices of dw1, dw2, db1, db2;
//   these need every pair of those experts.
// Like naive.cpp it is written from the math in ../shared/SONICMOE.md and
// shares nothing with the library but the public enums.
//
// Inputs are read through SampledInputs on demand, one expert's parameters
// at a time, so that a caller whose tensors live on a GPU copies back only
// what the sample needs, and host memory stays at about one expert's worth.
#pragma once

#include <cstdint>
#include <vector>

#include <sonicmoe/types.hpp>

namespace sonicmoe::testing {

// Sizes and the routing. W1 rows are interleaved (gate 2j, up 2j+1) for
// gated activations, as the library's are.
struct SampledLayer {
  int64_t T = 0, d = 0, n = 0, E = 0;
  Activation act = Activation::SwiGLU;
  bool has_b1 = false, has_b2 = false;
  // Every pair, sorted by token: pair i routes token pair_token[i] to
  // expert pair_expert[i] with weight pair_score[i] (i = t*K + k for top-K).
  std::vector<int32_t> pair_token, pair_expert;
  std::vector<double> pair_score;

  int64_t R() const { return is_gated(act) ? 2 * n : n; }
  int64_t N() const { return static_cast<int64_t>(pair_token.size()); }
};

// One expert's slice of w1 [R, d], b1 [R], w2 [d, n], b2 [d], or of their
// gradients; b1 / b2 empty when absent. float holds bf16 values exactly.
struct ExpertTensors {
  std::vector<float> w1, b1, w2, b2;
};

class SampledInputs {
 public:
  virtual ~SampledInputs() = default;
  // Rows of x and dout for `tokens` (any order, repeats allowed), row-major
  // [tokens.size(), d].
  virtual std::vector<float> x_rows(const std::vector<int32_t>& tokens) = 0;
  virtual std::vector<float> dout_rows(const std::vector<int32_t>& tokens) = 0;
  virtual ExpertTensors expert_params(int32_t expert) = 0;
};

struct Sample {
  std::vector<int32_t> tokens;   // ascending
  std::vector<int32_t> experts;  // distinct
};

// `num_tokens` tokens: the first, the last and random others (all of them
// when T is smaller). Two experts: the one of median load, a typical
// expert, and the least loaded one, which may have no pairs at all (its
// gradients must then be exactly zero). The most loaded expert is left out
// on purpose: with uneven loads it can hold ten times the mean, and its
// fp64 gradients would dominate the oracle's run time.
Sample choose_sample(const SampledLayer& layer, int num_tokens, uint64_t seed);

struct SampledReference {
  // Per sampled token (Sample::tokens order), row-major [tokens, d].
  std::vector<double> out, dx;
  // The sampled tokens' pairs (token order, then pair order) and their
  // dscores.
  std::vector<int64_t> pairs;
  std::vector<double> dscores;
  // Per sampled expert (Sample::experts order): dw1 [R, d], db1 [R],
  // dw2 [d, n], db2 [d]; db* empty without the bias.
  std::vector<std::vector<double>> dw1, db1, dw2, db2;
};

// `threads` 0: one per hardware thread. Throws std::runtime_error when an
// input has the wrong size.
SampledReference sampled_reference(const SampledLayer& layer, const Sample& sample,
                                   SampledInputs& inputs, int threads = 0);

}  // namespace sonicmoe::testing
