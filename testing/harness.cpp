#include "harness.hpp"

#include "device_buffer.hpp"
#include "routing_tensors.hpp"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <sstream>
#include <stdexcept>
#include <utility>

#include <sonicmoe/bfloat16.hpp>

namespace sonicmoe::testing {

double round_to_bf16(double v) { return static_cast<float>(bf16(static_cast<float>(v))); }
double round_to_f32(double v) { return static_cast<float>(v); }

namespace {

std::vector<double> normal(std::mt19937_64& rng, int64_t count, double std, bool bf16_round) {
  std::normal_distribution<double> dist(0.0, std);
  std::vector<double> v(static_cast<size_t>(count));
  for (auto& x : v) x = bf16_round ? round_to_bf16(dist(rng)) : round_to_f32(dist(rng));
  return v;
}

}  // namespace

Case make_case(const CaseSpec& s) {
  Case c;
  c.spec = s;
  std::mt19937_64 rng(s.seed);
  NaiveLayer& L = c.layer;
  L.T = s.T;
  L.d = s.d;
  L.n = s.n;
  L.E = s.E;
  L.act = s.act;
  const int64_t R = L.R();
  L.x = normal(rng, s.T * s.d, 1.0, true);
  L.w1 = normal(rng, s.E * R * s.d, s.weight_std, true);
  L.w2 = normal(rng, s.E * s.d * s.n, s.weight_std, true);
  if (s.bias) {
    L.b1 = normal(rng, s.E * R, 0.1, true);
    L.b2 = normal(rng, s.E * s.d, 0.1, true);
  }
  c.logits = normal(rng, s.T * s.E, 1.0, false);
  if (s.hot_expert >= 0)
    for (int64_t t = 0; t < s.T; ++t) c.logits[t * s.E + s.hot_expert] += 100.0;
  c.dout = normal(rng, s.T * s.d, 1.0, true);
  for (int64_t t = 0; t < s.T; ++t) {
    std::vector<double> row(c.logits.begin() + t * s.E, c.logits.begin() + (t + 1) * s.E);
    const NaiveRoute r = naive_router(row, s.K, s.order, s.renormalize);
    for (int64_t k = 0; k < s.K; ++k) {
      L.pair_token.push_back(static_cast<int32_t>(t));
      L.pair_expert.push_back(r.ids[k]);
      L.pair_score.push_back(round_to_f32(r.scores[k]));
    }
  }
  return c;
}

void set_pairs(Case& c, std::vector<int32_t> token, std::vector<int32_t> expert,
               std::vector<double> score) {
  for (auto& v : score) v = round_to_f32(v);
  c.layer.pair_token = std::move(token);
  c.layer.pair_expert = std::move(expert);
  c.layer.pair_score = std::move(score);
}

LibResult run_library(const Case& c, Device dev, bool backward, bool use_topk, ForwardMode mode,
                      GradSet grads, int repeats) {
  const NaiveLayer& L = c.layer;
  const int64_t T = L.T, d = L.d, n = L.n, E = L.E, R = L.R(), N = L.N();
  const int64_t K = c.spec.K;
  bool topk_shaped = N == T * K;
  for (int64_t i = 0; topk_shaped && i < N; ++i) topk_shaped = L.pair_token[i] == i / K;
  use_topk = use_topk && topk_shaped;

  // Routing metadata.
  const RoutingTensors meta(dev, T, E, N);
  const Routing routing = meta.routing();
  Buffer rws(dev, routing_workspace_size(dev, T, E, N));
  DevTensor pexp = from_ints(dev, L.pair_expert);
  if (use_topk) {
    Tensor ids = pexp.t;
    ids.ndim = 2;
    ids.shape[0] = T;
    ids.shape[1] = K;
    ids.strides[0] = K;
    ids.strides[1] = 1;
    routing_from_topk(ids, E, routing, Workspace{rws.get(), rws.bytes()});
  } else {
    DevTensor ptok = from_ints(dev, L.pair_token);
    routing_from_pairs(ptok.t, pexp.t, T, E, routing, Workspace{rws.get(), rws.bytes()});
  }

  DevTensor x = from_doubles(dev, DType::BF16, L.x, {T, d});
  DevTensor w1 = from_doubles(dev, DType::BF16, L.w1, {E, R, d});
  DevTensor w2 = from_doubles(dev, DType::BF16, L.w2, {E, d, n});
  DevTensor b1, b2;
  if (!L.b1.empty()) b1 = from_doubles(dev, DType::BF16, L.b1, {E, R});
  if (!L.b2.empty()) b2 = from_doubles(dev, DType::BF16, L.b2, {E, d});
  DevTensor scores = from_doubles(dev, DType::F32, L.pair_score, {N});
  DevTensor out = make(dev, DType::BF16, {T, d});
  DevTensor h;
  if (mode == ForwardMode::Training) h = make(dev, DType::BF16, {N, R});

  const MoeProblem problem{T, d, n, E, N, L.act};
  Buffer fws(dev, moe_forward_workspace_size(dev, problem, mode));
  MoeForwardArgs fa;
  fa.x = x.t;
  fa.w1 = w1.t;
  fa.b1 = b1.t;
  fa.w2 = w2.t;
  fa.b2 = b2.t;
  fa.scores = scores.t;
  fa.routing = routing;
  fa.activation = L.act;
  fa.mode = mode;
  fa.out = out.t;
  fa.h = h.t;
  fa.workspace = Workspace{fws.get(), fws.bytes()};
  for (int i = 0; i < repeats; ++i) moe_forward(fa);

  LibResult r;
  r.act = L.act;
  r.out = to_doubles(out);
  if (mode == ForwardMode::Training) r.h = to_doubles(h);
  RoutingMeta m = meta.read();
  r.expert_offsets = std::move(m.expert_offsets);
  r.token_offsets = std::move(m.token_offsets);
  r.sorted_token = std::move(m.sorted_token);
  r.sorted_pair = std::move(m.sorted_pair);
  r.pair_position = std::move(m.pair_position);
  if (!backward) return r;

  DevTensor dout = from_doubles(dev, DType::BF16, c.dout, {T, d});
  // An output not asked for stays an empty DevTensor: an absent Tensor.
  DevTensor dx, dw1, dw2, dsc, db1, db2;
  if (grads.dx) dx = make(dev, DType::BF16, {T, d});
  if (grads.dw1) dw1 = make(dev, DType::BF16, {E, R, d});
  if (grads.dw2) dw2 = make(dev, DType::BF16, {E, d, n});
  if (grads.dscores) dsc = make(dev, DType::F32, {N});
  if (grads.db1 && !L.b1.empty()) db1 = make(dev, DType::BF16, {E, R});
  if (grads.db2 && !L.b2.empty()) db2 = make(dev, DType::BF16, {E, d});
  Buffer bws(dev, moe_backward_workspace_size(dev, problem));
  MoeBackwardArgs ba;
  ba.x = x.t;
  ba.w1 = w1.t;
  ba.b1 = b1.t;
  ba.w2 = w2.t;
  ba.b2 = b2.t;
  ba.scores = scores.t;
  ba.routing = routing;
  ba.activation = L.act;
  ba.h = h.t;
  ba.dout = dout.t;
  ba.dx = dx.t;
  ba.dw1 = dw1.t;
  ba.db1 = db1.t;
  ba.dw2 = dw2.t;
  ba.db2 = db2.t;
  ba.dscores = dsc.t;
  ba.workspace = Workspace{bws.get(), bws.bytes()};
  for (int i = 0; i < repeats; ++i) moe_backward(ba);
  if (dx.buf) r.dx = to_doubles(dx);
  if (dw1.buf) r.dw1 = to_doubles(dw1);
  if (dw2.buf) r.dw2 = to_doubles(dw2);
  if (dsc.buf) r.dscores = to_doubles(dsc);
  if (db1.buf) r.db1 = to_doubles(db1);
  if (db2.buf) r.db2 = to_doubles(db2);
  return r;
}

std::vector<double> LibResult::h_pair_order() const {
  const size_t N = pair_position.size();
  if (N == 0) return {};
  const size_t R = h.size() / N;
  std::vector<double> r(h.size());
  for (size_t i = 0; i < N; ++i) {
    if (pair_position[i] < 0) continue;  // a dropped pair: no row
    const double* row = h.data() + static_cast<int64_t>(pair_position[i]) * R;
    for (size_t j = 0; j < R; ++j)
      r[i * R + j] = row[h_stored_column(static_cast<int64_t>(j), static_cast<int64_t>(R), act)];
  }
  return r;
}

ErrorStats compare(const std::vector<double>& lib, const std::vector<double>& ref) {
  if (lib.size() != ref.size())
    throw std::runtime_error("compare: sizes differ: " + std::to_string(lib.size()) + " vs " +
                             std::to_string(ref.size()));
  ErrorStats s;
  for (size_t i = 0; i < lib.size(); ++i) {
    const double diff = std::abs(lib[i] - ref[i]);
    // NaN never passes: it makes the error infinite.
    s.max_abs = std::max(s.max_abs, std::isnan(diff) ? INFINITY : diff);
    s.ref_max = std::max(s.ref_max, std::abs(ref[i]));
  }
  return s;
}

std::string describe(const CaseSpec& s) {
  std::ostringstream o;
  o << "T=" << s.T << " d=" << s.d << " n=" << s.n << " E=" << s.E << " K=" << s.K
    << " act=" << to_string(s.act) << " bias=" << s.bias << " order=" << to_string(s.order)
    << (s.renormalize ? "+renorm" : "") << " seed=" << s.seed;
  if (s.hot_expert >= 0) o << " hot_expert=" << s.hot_expert;
  return o.str();
}

}  // namespace sonicmoe::testing
