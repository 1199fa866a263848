// Test and bench harness: random cases, running the library on a device from
// double-valued host data, and error metrics.
//
// Inputs are generated in double and rounded to what the library's dtypes
// can hold (bf16 tensors, f32 scores), so the library and the fp64 oracle
// see exactly the same numbers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <sonicmoe/sonicmoe.hpp>

#include "naive.hpp"

namespace sonicmoe::testing {

struct CaseSpec {
  int64_t T = 64, d = 64, n = 32, E = 8, K = 2;
  Activation act = Activation::SwiGLU;
  bool bias = false;
  RouterOrder order = RouterOrder::TopKThenSoftmax;
  bool renormalize = false;
  uint64_t seed = 1;
  double weight_std = 0.02;  // BENCHMARK.md: x ~ N(0,1), weights ~ N(0, 0.02)
  // >= 0: every token picks this expert first (logit boost), to load one expert.
  int32_t hot_expert = -1;
};

struct Case {
  CaseSpec spec;
  NaiveLayer layer;             // bf16-representable inputs, routing as pairs
  std::vector<double> logits;   // [T, E], f32-representable
  std::vector<double> dout;     // [T, d], bf16-representable
};

// Random inputs; top-K routing from random router logits through the oracle's
// router (scores rounded to f32).
Case make_case(const CaseSpec& spec);

// Replace the routing with explicit pairs (sorted by token).
void set_pairs(Case& c, std::vector<int32_t> token, std::vector<int32_t> expert,
               std::vector<double> score);

double round_to_bf16(double v);
double round_to_f32(double v);

// What the library computed, converted to double. Gradients are filled only
// when `backward` is set; h only in training mode. h is stored by the library
// in expert-sorted position order (row p) and its own column layout
// (h_stored_column); h_pair_order() reorders it by pair and by column like
// the oracle's NaiveForward::h.
struct LibResult {
  Activation act = Activation::SwiGLU;
  std::vector<double> out, h;
  std::vector<double> h_pair_order() const;
  std::vector<double> dx, dw1, db1, dw2, db2, dscores;
  std::vector<int32_t> expert_offsets, sorted_token, sorted_pair, pair_position, token_offsets;
};

// Which gradients moe_backward is given (the others are absent, not
// computed, and stay empty in LibResult); bias gradients only with biases.
struct GradSet {
  bool dx = true, dw1 = true, db1 = true, dw2 = true, db2 = true, dscores = true;
};

// Runs routing_from_pairs (or routing_from_topk when the case is top-K with
// K pairs per token and `use_topk` is set), moe_forward and, if `backward`,
// moe_backward on `device`, each of the two `repeats` times in a row on the
// same tensors (the results are those of the last call). Throws
// sonicmoe::Error on failure.
LibResult run_library(const Case& c, Device device, bool backward, bool use_topk = true,
                      ForwardMode mode = ForwardMode::Training, GradSet grads = {},
                      int repeats = 1);

struct ErrorStats {
  double max_abs = 0;     // max |lib - ref|
  double ref_max = 0;     // max |ref|
  double rel() const { return ref_max > 0 ? max_abs / ref_max : max_abs; }
};
ErrorStats compare(const std::vector<double>& lib, const std::vector<double>& ref);

std::string describe(const CaseSpec& s);

}  // namespace sonicmoe::testing
