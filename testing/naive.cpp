// Written from the math in ../shared/SONICMOE.md without looking at the
// library's reference: loops over pairs, everything in double.
#include "naive.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace sonicmoe::testing {

namespace {

double sig(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// The gate (or sole) nonlinearity and its derivative.
double f(Activation a, double v) {
  switch (a) {
    case Activation::SwiGLU:
    case Activation::SiLU: return v * sig(v);
    case Activation::GeGLU:
    case Activation::GeLU: return 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)));
    case Activation::ReGLU:
    case Activation::ReLU: return v > 0 ? v : 0.0;
    case Activation::ReLU2: return v > 0 ? v * v : 0.0;
  }
  return 0;
}

double df(Activation a, double v) {
  switch (a) {
    case Activation::SwiGLU:
    case Activation::SiLU: return sig(v) + v * sig(v) * (1.0 - sig(v));
    case Activation::GeGLU:
    case Activation::GeLU:
      return 0.5 * (1.0 + std::erf(v / std::sqrt(2.0))) +
             v * std::exp(-0.5 * v * v) / std::sqrt(2.0 * M_PI);
    case Activation::ReGLU:
    case Activation::ReLU: return v > 0 ? 1.0 : 0.0;
    case Activation::ReLU2: return v > 0 ? 2.0 * v : 0.0;
  }
  return 0;
}

}  // namespace

double naive_gate(Activation a, double v) { return f(a, v); }
double naive_gate_grad(Activation a, double v) { return df(a, v); }

double naive_activation(Activation a, double g, double u) {
  return is_gated(a) ? f(a, g) * u : f(a, g);
}

NaiveForward naive_forward(const NaiveLayer& L) {
  const int64_t d = L.d, n = L.n, R = L.R(), N = L.N();
  NaiveForward r;
  r.out.assign(L.T * d, 0.0);
  r.h.assign(N * R, 0.0);
  std::vector<double> a(n);
  for (int64_t i = 0; i < N; ++i) {
    const int64_t t = L.pair_token[i], e = L.pair_expert[i];
    double* h = &r.h[i * R];
    for (int64_t j = 0; j < R; ++j) {
      double s = L.b1.empty() ? 0.0 : L.b1[e * R + j];
      for (int64_t k = 0; k < d; ++k) s += L.x[t * d + k] * L.w1[(e * R + j) * d + k];
      h[j] = s;
    }
    for (int64_t j = 0; j < n; ++j)
      a[j] = is_gated(L.act) ? naive_activation(L.act, h[2 * j], h[2 * j + 1])
                             : naive_activation(L.act, h[j], 0.0);
    for (int64_t c = 0; c < d; ++c) {
      double y = L.b2.empty() ? 0.0 : L.b2[e * d + c];
      for (int64_t j = 0; j < n; ++j) y += a[j] * L.w2[(e * d + c) * n + j];
      r.out[t * d + c] += L.pair_score[i] * y;
    }
  }
  return r;
}

NaiveGrads naive_backward(const NaiveLayer& L, const std::vector<double>& dout) {
  const int64_t d = L.d, n = L.n, R = L.R(), N = L.N(), E = L.E;
  const NaiveForward fwd = naive_forward(L);
  NaiveGrads g;
  g.dx.assign(L.T * d, 0.0);
  g.dw1.assign(E * R * d, 0.0);
  g.dw2.assign(E * d * n, 0.0);
  if (!L.b1.empty()) g.db1.assign(E * R, 0.0);
  if (!L.b2.empty()) g.db2.assign(E * d, 0.0);
  g.dscores.assign(N, 0.0);
  std::vector<double> a(n), dy(d), da(n), dh(R);
  for (int64_t i = 0; i < N; ++i) {
    const int64_t t = L.pair_token[i], e = L.pair_expert[i];
    const double s = L.pair_score[i];
    const double* h = &fwd.h[i * R];
    for (int64_t j = 0; j < n; ++j)
      a[j] = is_gated(L.act) ? naive_activation(L.act, h[2 * j], h[2 * j + 1])
                             : naive_activation(L.act, h[j], 0.0);
    // out[t] += s * y, y = W2 a + b2: dscore = <dout[t], y>, dy = s dout[t].
    double dscore = 0;
    for (int64_t c = 0; c < d; ++c) {
      double y = L.b2.empty() ? 0.0 : L.b2[e * d + c];
      for (int64_t j = 0; j < n; ++j) y += a[j] * L.w2[(e * d + c) * n + j];
      dscore += dout[t * d + c] * y;
      dy[c] = s * dout[t * d + c];
    }
    g.dscores[i] = dscore;
    std::fill(da.begin(), da.end(), 0.0);
    for (int64_t c = 0; c < d; ++c) {
      if (!L.b2.empty()) g.db2[e * d + c] += dy[c];
      for (int64_t j = 0; j < n; ++j) {
        g.dw2[(e * d + c) * n + j] += dy[c] * a[j];
        da[j] += dy[c] * L.w2[(e * d + c) * n + j];
      }
    }
    for (int64_t j = 0; j < n; ++j) {
      if (is_gated(L.act)) {
        const double gate = h[2 * j], up = h[2 * j + 1];
        dh[2 * j] = da[j] * up * df(L.act, gate);
        dh[2 * j + 1] = da[j] * f(L.act, gate);
      } else {
        dh[j] = da[j] * df(L.act, h[j]);
      }
    }
    for (int64_t j = 0; j < R; ++j) {
      if (!L.b1.empty()) g.db1[e * R + j] += dh[j];
      for (int64_t k = 0; k < d; ++k) {
        g.dw1[(e * R + j) * d + k] += dh[j] * L.x[t * d + k];
        g.dx[t * d + k] += dh[j] * L.w1[(e * R + j) * d + k];
      }
    }
  }
  return g;
}

NaiveRoute naive_router(const std::vector<double>& z, int64_t K, RouterOrder order,
                        bool renormalize) {
  const int64_t E = static_cast<int64_t>(z.size());
  std::vector<int32_t> idx(E);
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return z[a] > z[b]; });
  NaiveRoute r;
  r.ids.assign(idx.begin(), idx.begin() + K);
  r.scores.resize(K);
  if (order == RouterOrder::TopKThenSoftmax) {
    double sum = 0;
    for (int64_t k = 0; k < K; ++k) sum += std::exp(z[r.ids[k]] - z[r.ids[0]]);
    for (int64_t k = 0; k < K; ++k) r.scores[k] = std::exp(z[r.ids[k]] - z[r.ids[0]]) / sum;
  } else {
    const double m = *std::max_element(z.begin(), z.end());
    double sum = 0;
    for (double v : z) sum += std::exp(v - m);
    double picked = 0;
    for (int64_t k = 0; k < K; ++k) picked += r.scores[k] = std::exp(z[r.ids[k]] - m) / sum;
    if (renormalize)
      for (auto& s : r.scores) s /= picked;
  }
  return r;
}

std::vector<double> naive_router_backward(const std::vector<double>& z,
                                          const std::vector<int32_t>& ids,
                                          const std::vector<double>& ds, RouterOrder order,
                                          bool renormalize) {
  // Jacobian of the scores w.r.t. every logit, built column by column from
  // the softmax derivative d p_a / d z_b = p_a (delta_ab - p_b).
  const int64_t E = static_cast<int64_t>(z.size()), K = static_cast<int64_t>(ids.size());
  std::vector<double> dz(E, 0.0);
  if (order == RouterOrder::TopKThenSoftmax) {
    std::vector<double> s(K);
    double sum = 0;
    for (int64_t k = 0; k < K; ++k) sum += s[k] = std::exp(z[ids[k]]);
    for (auto& v : s) v /= sum;
    for (int64_t k = 0; k < K; ++k)      // score k
      for (int64_t l = 0; l < K; ++l)    // logit of slot l
        dz[ids[l]] += ds[k] * s[k] * ((k == l ? 1.0 : 0.0) - s[l]);
    return dz;
  }
  std::vector<double> p(E);
  double sum = 0;
  for (int64_t e = 0; e < E; ++e) sum += p[e] = std::exp(z[e]);
  for (auto& v : p) v /= sum;
  double S = 0;
  for (int64_t k = 0; k < K; ++k) S += p[ids[k]];
  for (int64_t b = 0; b < E; ++b) {
    // d p_{id_k} / d z_b, then through the optional renormalisation.
    std::vector<double> dp(K);
    double dS = 0;
    for (int64_t k = 0; k < K; ++k) {
      dp[k] = p[ids[k]] * ((ids[k] == b ? 1.0 : 0.0) - p[b]);
      dS += dp[k];
    }
    for (int64_t k = 0; k < K; ++k) {
      const double dsk = renormalize ? (dp[k] * S - p[ids[k]] * dS) / (S * S) : dp[k];
      dz[b] += ds[k] * dsk;
    }
  }
  return dz;
}

}  // namespace sonicmoe::testing
