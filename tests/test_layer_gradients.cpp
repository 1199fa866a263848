// Finite-difference checks in fp64 of the two backward passes the other
// tests lean on:
// - the CPU reference's own code (src/cpu/moe_reference.hpp) instantiated as
//   <double, double>, on metadata from the library's routing_from_pairs;
// - the oracle's naive_backward against naive_forward (testing/naive.hpp).
// Loss L = sum(out * G) for a fixed random G, so dout = G; every gradient
// (dx, dw1, db1, dw2, db2, dscores) is compared with central differences.
//
// Tolerance: central differences with eps = 1e-6 on O(1) inputs have a
// truncation error ~eps^2 * |f'''| ~ 1e-12 and a cancellation error
// ~1e-16 * |L| / eps ~ 1e-9, against gradients of order 0.1-1, so the
// max-normalised error max|fd - analytic| / max|analytic| is ~1e-10
// (measured); the bound is 1e-6. Scaling the largest element of any one
// analytic gradient by 1 + 1e-4 trips it (checked when it was set); a wrong
// term in a backward (a missing bias, a wrong activation derivative, a dropped
// score) shows up at 1e-2 or more.
// ReLU-type activations are not differentiable at 0: the cases are built from
// the first seed whose pre-activations all keep 1e-3 away from the kink,
// three orders of magnitude more than a perturbation moves them.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include <sonicmoe/sonicmoe.hpp>

#include "common/activation.hpp"
#include "cpu/moe_reference.hpp"
#include "device_buffer.hpp"
#include "harness.hpp"
#include "naive.hpp"

namespace sonicmoe::testing {
namespace {

constexpr double kEps = 1e-6;
constexpr double kFdTol = 1e-6;
constexpr double kKinkMargin = 1e-3;

constexpr Activation kActivations[] = {Activation::SwiGLU, Activation::GeGLU, Activation::ReGLU,
                                       Activation::GeLU,   Activation::ReLU,  Activation::ReLU2,
                                       Activation::SiLU};

constexpr bool has_kink(Activation a) {
  return a == Activation::ReGLU || a == Activation::ReLU || a == Activation::ReLU2;
}

enum class Routes { TopK, Variable };

// min |pre-activation| over the columns that pass through a ReLU.
double kink_distance(const NaiveLayer& L) {
  const std::vector<double> h = naive_forward(L).h;
  const int64_t R = L.R();
  double m = INFINITY;
  for (size_t k = 0; k < h.size(); ++k)
    if (!is_gated(L.act) || static_cast<int64_t>(k % R) % 2 == 0) m = std::min(m, std::abs(h[k]));
  return m;
}

// Tiny case, weights large enough (std 0.3) that the activations work in
// their nonlinear range.
Case tiny_case(Activation act, bool bias, Routes routes) {
  for (uint64_t seed = 1; seed < 200; ++seed) {
    CaseSpec s;
    s.T = routes == Routes::TopK ? 3 : 4;
    s.d = 8;
    s.n = 8;
    s.E = routes == Routes::TopK ? 3 : 4;
    s.K = 2;
    s.act = act;
    s.bias = bias;
    s.weight_std = 0.3;
    s.seed = seed + 1000 * static_cast<uint64_t>(act);
    Case c = make_case(s);
    if (routes == Routes::Variable) {
      // Token 1 has no pairs, token 2 has three, expert 3 has none.
      std::mt19937_64 rng(s.seed);
      std::uniform_real_distribution<double> score(0.1, 1.0);
      std::vector<double> sc(6);
      for (auto& v : sc) v = score(rng);
      set_pairs(c, {0, 0, 2, 2, 2, 3}, {2, 0, 1, 2, 0, 1}, sc);
    }
    if (!has_kink(act) || kink_distance(c.layer) > kKinkMargin) return c;
  }
  ADD_FAILURE() << "no seed keeps the pre-activations away from the ReLU kink";
  return {};
}

// max |fd - analytic| / max |analytic| over every element of `param`, where
// fd is the central difference of loss() in that element.
double fd_error(std::vector<double>& param, const std::vector<double>& analytic,
                const std::function<double()>& loss) {
  EXPECT_EQ(param.size(), analytic.size());
  double err = 0, norm = 0;
  for (size_t i = 0; i < param.size() && i < analytic.size(); ++i) {
    const double v = param[i];
    param[i] = v + kEps;
    const double up = loss();
    param[i] = v - kEps;
    const double down = loss();
    param[i] = v;
    const double fd = (up - down) / (2 * kEps);
    err = std::max(err, std::abs(fd - analytic[i]));
    norm = std::max(norm, std::abs(analytic[i]));
  }
  return norm > 0 ? err / norm : err;
}

double dot_loss(const std::vector<double>& out, const std::vector<double>& g) {
  double s = 0;
  for (size_t i = 0; i < out.size(); ++i) s += out[i] * g[i];
  return s;
}

struct Grads {
  std::vector<double> dx, dw1, db1, dw2, db2, dscores;
};

// Every gradient against central differences of `loss` in the matching
// parameter of L (which loss() reads).
void check_all(NaiveLayer& L, const Grads& g, const std::function<double()>& loss) {
  ASSERT_EQ(g.db1.empty(), L.b1.empty());
  ASSERT_EQ(g.db2.empty(), L.b2.empty());
  EXPECT_LE(fd_error(L.x, g.dx, loss), kFdTol) << "dx";
  EXPECT_LE(fd_error(L.w1, g.dw1, loss), kFdTol) << "dw1";
  EXPECT_LE(fd_error(L.b1, g.db1, loss), kFdTol) << "db1";
  EXPECT_LE(fd_error(L.w2, g.dw2, loss), kFdTol) << "dw2";
  EXPECT_LE(fd_error(L.b2, g.db2, loss), kFdTol) << "db2";
  EXPECT_LE(fd_error(L.pair_score, g.dscores, loss), kFdTol) << "dscores";
}

// ------------------------------------------- the reference in <double,double>

// Routing metadata of the layer's pairs, from the library's CPU routing.
struct Metadata {
  std::vector<int32_t> counts, expert_offsets, token_offsets, sorted_token, sorted_pair,
      pair_position;
};

Metadata metadata_of(const NaiveLayer& L) {
  const int64_t T = L.T, E = L.E, N = L.N();
  Metadata m;
  m.counts.resize(E);
  m.expert_offsets.resize(E + 1);
  m.token_offsets.resize(T + 1);
  m.sorted_token.resize(N);
  m.sorted_pair.resize(N);
  m.pair_position.resize(N);
  std::vector<int32_t> tok = L.pair_token, exp = L.pair_expert;
  auto i32 = [](std::vector<int32_t>& v) {
    return Tensor::contiguous(v.data(), DType::I32, {static_cast<int64_t>(v.size())});
  };
  const Routing r{i32(m.counts),      i32(m.expert_offsets), i32(m.token_offsets),
                  i32(m.sorted_token), i32(m.sorted_pair),    i32(m.pair_position)};
  Buffer ws(Device{}, routing_workspace_size(Device{}, T, E, N));
  routing_from_pairs(i32(tok), i32(exp), T, E, r, ws.workspace());
  return m;
}

cpu::LayerView<double, double> view_of(const NaiveLayer& L, const Metadata& m) {
  cpu::LayerView<double, double> V;
  V.T_ = L.T;
  V.d = L.d;
  V.n = L.n;
  V.E = L.E;
  V.N = L.N();
  V.act = L.act;
  V.x = L.x.data();
  V.w1 = L.w1.data();
  V.b1 = L.b1.empty() ? nullptr : L.b1.data();
  V.w2 = L.w2.data();
  V.b2 = L.b2.empty() ? nullptr : L.b2.data();
  V.scores = L.pair_score.data();
  V.expert_offsets = m.expert_offsets.data();
  V.token_offsets = m.token_offsets.data();
  V.sorted_token = m.sorted_token.data();
  V.sorted_pair = m.sorted_pair.data();
  V.pair_position = m.pair_position.data();
  return V;
}

// out [T, d]; h [N, R] in position order.
void reference_forward(const NaiveLayer& L, const Metadata& m, std::vector<double>& out,
                       std::vector<double>& h) {
  const auto V = view_of(L, m);
  out.assign(L.T * L.d, NAN);
  h.assign(L.N() * L.R(), NAN);
  std::vector<double> a(L.N() * L.n), y(L.N() * L.d);
  act::dispatch(L.act, [&]<Activation A>() {
    cpu::moe_forward<A>(V, out.data(), h.data(), a.data(), y.data());
  });
}

Grads reference_backward(const NaiveLayer& L, const Metadata& m, const std::vector<double>& h,
                         const std::vector<double>& dout) {
  const auto V = view_of(L, m);
  const int64_t N = L.N(), R = L.R(), d = L.d, n = L.n, E = L.E;
  Grads g;
  g.dx.assign(L.T * d, NAN);
  g.dw1.assign(E * R * d, NAN);
  g.dw2.assign(E * d * n, NAN);
  if (!L.b1.empty()) g.db1.assign(E * R, NAN);
  if (!L.b2.empty()) g.db2.assign(E * d, NAN);
  g.dscores.assign(N, NAN);
  std::vector<double> dh(N * R), ap(N * n), dxt(N * d);
  act::dispatch(L.act, [&]<Activation A>() {
    cpu::moe_backward<A>(V, h.data(), dout.data(), g.dx.data(), g.dw1.data(),
                         g.db1.empty() ? nullptr : g.db1.data(), g.dw2.data(),
                         g.db2.empty() ? nullptr : g.db2.data(), g.dscores.data(), dh.data(),
                         ap.data(), dxt.data());
  });
  return g;
}

using Param = std::tuple<Activation, bool, Routes>;

std::string param_name(const ::testing::TestParamInfo<Param>& info) {
  const auto [act, bias, routes] = info.param;
  return std::string(to_string(act)) + (bias ? "_Bias" : "_NoBias") +
         (routes == Routes::TopK ? "_TopK" : "_VariablePairs");
}

class LayerGradients : public ::testing::TestWithParam<Param> {};

TEST_P(LayerGradients, ReferenceMatchesFiniteDifferences) {
  const auto [act, bias, routes] = GetParam();
  Case c = tiny_case(act, bias, routes);
  ASSERT_FALSE(c.layer.x.empty());
  SCOPED_TRACE(describe(c.spec));
  NaiveLayer& L = c.layer;
  const Metadata m = metadata_of(L);

  std::vector<double> out, h;
  reference_forward(L, m, out, h);
  // The double reference agrees with the oracle to rounding (a cross-check
  // that the metadata and the view are wired as the backend wires them).
  const NaiveForward naive = naive_forward(L);
  EXPECT_LE(compare(out, naive.out).rel(), 1e-12);
  std::vector<double> h_pairs(h.size());
  const int64_t R = L.R();
  for (int64_t i = 0; i < L.N(); ++i)  // rows by pair, columns out of h's layout
    for (int64_t j = 0; j < R; ++j)
      h_pairs[i * R + j] = h[m.pair_position[i] * R + h_stored_column(j, R, L.act)];
  EXPECT_LE(compare(h_pairs, naive.h).rel(), 1e-12);

  // The backward gets the H this forward saved, bit for bit.
  const Grads g = reference_backward(L, m, h, c.dout);
  std::vector<double> out_p, h_p;
  check_all(L, g, [&] {
    reference_forward(L, m, out_p, h_p);
    return dot_loss(out_p, c.dout);
  });
}

TEST_P(LayerGradients, OracleMatchesFiniteDifferences) {
  const auto [act, bias, routes] = GetParam();
  Case c = tiny_case(act, bias, routes);
  ASSERT_FALSE(c.layer.x.empty());
  SCOPED_TRACE(describe(c.spec));
  NaiveLayer& L = c.layer;
  const NaiveGrads ng = naive_backward(L, c.dout);
  const Grads g{ng.dx, ng.dw1, ng.db1, ng.dw2, ng.db2, ng.dscores};
  check_all(L, g, [&] { return dot_loss(naive_forward(L).out, c.dout); });
}

INSTANTIATE_TEST_SUITE_P(Layer, LayerGradients,
                         ::testing::Combine(::testing::ValuesIn(kActivations), ::testing::Bool(),
                                            ::testing::Values(Routes::TopK, Routes::Variable)),
                         param_name);

}  // namespace
}  // namespace sonicmoe::testing
