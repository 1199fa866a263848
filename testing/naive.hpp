// An independent, straightforward fp64 implementation of the MoE layer and
// the router: the oracle of the tests and of the bench's CPU check.
//
// It shares nothing with the library but the public enums: no metadata, no
// sorting, no workspace. The layer loops over (token, expert, score) triples
// in the order given; the backward is derived by hand from the forward below
// and checked against finite differences in the tests.
#pragma once

#include <cstdint>
#include <vector>

#include <sonicmoe/types.hpp>

namespace sonicmoe::testing {

// All tensors row-major in double. W1 rows are interleaved (gate 2j, up 2j+1)
// for gated activations, like the library's. b1 / b2 empty when absent.
struct NaiveLayer {
  int64_t T = 0, d = 0, n = 0, E = 0;
  Activation act = Activation::SwiGLU;
  std::vector<double> x;       // [T, d]
  std::vector<double> w1, b1;  // [E, R, d], [E, R]
  std::vector<double> w2, b2;  // [E, d, n], [E, d]
  // Routing as pairs sorted by token: pair i routes token pair_token[i] to
  // expert pair_expert[i] with weight pair_score[i].
  std::vector<int32_t> pair_token, pair_expert;
  std::vector<double> pair_score;

  int64_t R() const { return is_gated(act) ? 2 * n : n; }
  int64_t N() const { return static_cast<int64_t>(pair_token.size()); }
};

struct NaiveForward {
  std::vector<double> out;  // [T, d]
  std::vector<double> h;    // [N, R] pre-activation, pair order
};
NaiveForward naive_forward(const NaiveLayer& L);

struct NaiveGrads {
  std::vector<double> dx, dw1, db1, dw2, db2;  // db* empty when the bias is absent
  std::vector<double> dscores;                 // [N], pair order
};
NaiveGrads naive_backward(const NaiveLayer& L, const std::vector<double>& dout);

// Scalar activation in double (gated: act(g, u); plain: act(v), u ignored).
double naive_activation(Activation a, double g, double u);
// The gate (or sole) nonlinearity f of an activation and its derivative:
// gated activations are f(g) * u.
double naive_gate(Activation a, double v);
double naive_gate_grad(Activation a, double v);

// Router on one row of E logits: ids (descending logit, ties to the lower
// id) and scores, for both orders.
struct NaiveRoute {
  std::vector<int32_t> ids;
  std::vector<double> scores;
};
NaiveRoute naive_router(const std::vector<double>& logits, int64_t K, RouterOrder order,
                        bool renormalize);
// d scores / d logits contracted with dscores, the ids held fixed.
std::vector<double> naive_router_backward(const std::vector<double>& logits,
                                          const std::vector<int32_t>& ids,
                                          const std::vector<double>& dscores, RouterOrder order,
                                          bool renormalize);

}  // namespace sonicmoe::testing
