// The sampled oracle: the layer's math in double, restricted to what the
// sample needs. Multi-threaded with a static split of output rows, so every
// output element is summed by one thread in a fixed order.
#include "sampled.hpp"

#include "naive.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>

namespace sonicmoe::testing {

namespace {

// The oracle's own activation (naive.cpp): one definition of the math.
double act_f(Activation a, double v) { return naive_gate(a, v); }
double act_df(Activation a, double v) { return naive_gate_grad(a, v); }

// Four partial sums: a single chain would be bound by the add latency.
// float * float is exact in double, so only the sums round.
template <class A, class B>
double dot(const A* a, const B* b, int64_t n) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t k = 0;
  for (; k + 4 <= n; k += 4) {
    s0 += double(a[k]) * double(b[k]);
    s1 += double(a[k + 1]) * double(b[k + 1]);
    s2 += double(a[k + 2]) * double(b[k + 2]);
    s3 += double(a[k + 3]) * double(b[k + 3]);
  }
  for (; k < n; ++k) s0 += double(a[k]) * double(b[k]);
  return (s0 + s1) + (s2 + s3);
}

template <class X>
void axpy(double* y, const X* x, double g, int64_t n) {
  for (int64_t k = 0; k < n; ++k) y[k] += g * double(x[k]);
}

// f(begin, end) over a static split of [0, n).
template <class F>
void parallel_ranges(int64_t n, int threads, F&& f) {
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(threads, n));
  if (parts == 1) {
    f(int64_t{0}, n);
    return;
  }
  const int64_t chunk = (n + parts - 1) / parts;
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < parts; ++t)
    pool.emplace_back([&, t] { f(std::min(n, t * chunk), std::min(n, (t + 1) * chunk)); });
  f(int64_t{0}, std::min(n, chunk));
  for (auto& th : pool) th.join();
}

void expect_size(const char* what, size_t got, int64_t want) {
  if (static_cast<int64_t>(got) != want)
    throw std::runtime_error(std::string("sampled_reference: ") + what + " has " +
                             std::to_string(got) + " elements, expected " + std::to_string(want));
}

struct Shape {
  int64_t d, n, R;
  Activation act;
  bool gated;
};

// a = act(h) for one row.
void activate(const Shape& s, const double* h, double* a) {
  for (int64_t j = 0; j < s.n; ++j)
    a[j] = s.gated ? act_f(s.act, h[2 * j]) * h[2 * j + 1] : act_f(s.act, h[j]);
}

// dh from da = dL/da (already scaled by the pair's score) and h.
void activate_backward(const Shape& s, const double* h, const double* da, double* dh) {
  for (int64_t j = 0; j < s.n; ++j) {
    if (s.gated) {
      const double g = h[2 * j], u = h[2 * j + 1];
      dh[2 * j] = da[j] * u * act_df(s.act, g);
      dh[2 * j + 1] = da[j] * act_f(s.act, g);
    } else {
      dh[j] = da[j] * act_df(s.act, h[j]);
    }
  }
}

// A sampled pair: its index, its token's row in the sample, its score.
struct SampledPair {
  int64_t slot;  // index into SampledReference::pairs / dscores
  int64_t row;   // index into Sample::tokens
  double score;
};

// Everything the sampled tokens' pairs on one expert contribute: out and dx
// rows, dscores. Each pass is split over the rows of the weight it streams.
void token_pairs(const Shape& s, const ExpertTensors& P, const std::vector<SampledPair>& qs,
                 const std::vector<float>& xs, const std::vector<float>& dos, int threads,
                 SampledReference& ref) {
  const int64_t d = s.d, n = s.n, R = s.R, Q = static_cast<int64_t>(qs.size());
  std::vector<double> H(Q * R), A(Q * n), Y(Q * d), DA(Q * n, 0.0), DH(Q * R);
  parallel_ranges(R, threads, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j)
      for (int64_t q = 0; q < Q; ++q)
        H[q * R + j] = dot(&P.w1[j * d], &xs[qs[q].row * d], d) + (P.b1.empty() ? 0.0 : P.b1[j]);
  });
  for (int64_t q = 0; q < Q; ++q) activate(s, &H[q * R], &A[q * n]);
  parallel_ranges(d, threads, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c)
      for (int64_t q = 0; q < Q; ++q)
        Y[q * d + c] = dot(&P.w2[c * n], &A[q * n], n) + (P.b2.empty() ? 0.0 : P.b2[c]);
  });
  // out[t] += s * y and dscore = <dout[t], y>: the bias b2 is part of y.
  for (int64_t q = 0; q < Q; ++q) {
    const float* g = &dos[qs[q].row * d];
    ref.dscores[qs[q].slot] = dot(g, &Y[q * d], d);
    axpy(&ref.out[qs[q].row * d], &Y[q * d], qs[q].score, d);
  }
  // da = dout[t] . W2 (then times the score), split over columns j.
  parallel_ranges(n, threads, [&](int64_t j0, int64_t j1) {
    for (int64_t c = 0; c < d; ++c)
      for (int64_t q = 0; q < Q; ++q)
        axpy(&DA[q * n + j0], &P.w2[c * n + j0], dos[qs[q].row * d + c], j1 - j0);
  });
  for (int64_t q = 0; q < Q; ++q) {
    for (int64_t j = 0; j < n; ++j) DA[q * n + j] *= qs[q].score;
    activate_backward(s, &H[q * R], &DA[q * n], &DH[q * R]);
  }
  // dx[t] += dh . W1, split over columns k.
  parallel_ranges(d, threads, [&](int64_t k0, int64_t k1) {
    for (int64_t j = 0; j < R; ++j)
      for (int64_t q = 0; q < Q; ++q)
        axpy(&ref.dx[qs[q].row * d + k0], &P.w1[j * d + k0], DH[q * R + j], k1 - k0);
  });
}

// The whole gradient slice of one expert from all its pairs.
void expert_gradients(const Shape& s, const ExpertTensors& P, const std::vector<int32_t>& tokens,
                      const std::vector<double>& scores, SampledInputs& in, int threads,
                      std::vector<double>& dw1, std::vector<double>& db1, std::vector<double>& dw2,
                      std::vector<double>& db2) {
  const int64_t d = s.d, n = s.n, R = s.R, Pn = static_cast<int64_t>(tokens.size());
  dw1.assign(R * d, 0.0);
  dw2.assign(d * n, 0.0);
  if (!P.b1.empty()) db1.assign(R, 0.0);
  if (!P.b2.empty()) db2.assign(d, 0.0);
  if (Pn == 0) return;
  const std::vector<float> xe = in.x_rows(tokens), ge = in.dout_rows(tokens);
  expect_size("x_rows", xe.size(), Pn * d);
  expect_size("dout_rows", ge.size(), Pn * d);

  // Pass 1, split over pairs: dh [P, R] and a [P, n]. Blocks of pairs share
  // each weight row while it is in cache.
  std::vector<double> DH(Pn * R), A(Pn * n);
  parallel_ranges(Pn, threads, [&](int64_t p0, int64_t p1) {
    constexpr int64_t kBlock = 8;
    std::vector<double> h(kBlock * R), da(kBlock * n);
    for (int64_t b0 = p0; b0 < p1; b0 += kBlock) {
      const int64_t B = std::min(kBlock, p1 - b0);
      for (int64_t j = 0; j < R; ++j)
        for (int64_t b = 0; b < B; ++b)
          h[b * R + j] = dot(&P.w1[j * d], &xe[(b0 + b) * d], d) + (P.b1.empty() ? 0.0 : P.b1[j]);
      std::fill(da.begin(), da.end(), 0.0);
      for (int64_t c = 0; c < d; ++c)
        for (int64_t b = 0; b < B; ++b) axpy(&da[b * n], &P.w2[c * n], ge[(b0 + b) * d + c], n);
      for (int64_t b = 0; b < B; ++b) {
        activate(s, &h[b * R], &A[(b0 + b) * n]);
        for (int64_t j = 0; j < n; ++j) da[b * n + j] *= scores[b0 + b];
        activate_backward(s, &h[b * R], &da[b * n], &DH[(b0 + b) * R]);
      }
    }
  });

  // Pass 2: dw1 = sum_p dh_p^T x_p split over rows j, dw2 = sum_p (s_p
  // dout_p)^T a_p split over rows c; four rows share each streamed row.
  constexpr int64_t kRows = 4;
  parallel_ranges(R, threads, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; j += kRows) {
      const int64_t J = std::min(kRows, j1 - j);
      for (int64_t p = 0; p < Pn; ++p)
        for (int64_t jj = 0; jj < J; ++jj) axpy(&dw1[(j + jj) * d], &xe[p * d], DH[p * R + j + jj], d);
      if (!db1.empty())
        for (int64_t jj = 0; jj < J; ++jj)
          for (int64_t p = 0; p < Pn; ++p) db1[j + jj] += DH[p * R + j + jj];
    }
  });
  parallel_ranges(d, threads, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; c += kRows) {
      const int64_t C = std::min(kRows, c1 - c);
      for (int64_t p = 0; p < Pn; ++p)
        for (int64_t cc = 0; cc < C; ++cc)
          axpy(&dw2[(c + cc) * n], &A[p * n], scores[p] * ge[p * d + c + cc], n);
      if (!db2.empty())
        for (int64_t cc = 0; cc < C; ++cc)
          for (int64_t p = 0; p < Pn; ++p) db2[c + cc] += scores[p] * ge[p * d + c + cc];
    }
  });
}

}  // namespace

Sample choose_sample(const SampledLayer& L, int num_tokens, uint64_t seed) {
  Sample s;
  std::set<int32_t> tokens;
  if (L.T <= num_tokens) {
    for (int64_t t = 0; t < L.T; ++t) tokens.insert(static_cast<int32_t>(t));
  } else {
    std::mt19937_64 rng(seed);
    std::uniform_int_distribution<int64_t> pick(0, L.T - 1);
    tokens = {0, static_cast<int32_t>(L.T - 1)};
    while (static_cast<int>(tokens.size()) < num_tokens)
      tokens.insert(static_cast<int32_t>(pick(rng)));
  }
  s.tokens.assign(tokens.begin(), tokens.end());

  std::vector<int64_t> load(L.E, 0);
  for (int32_t e : L.pair_expert) ++load[e];
  std::vector<int32_t> by_load(L.E);
  for (int64_t e = 0; e < L.E; ++e) by_load[e] = static_cast<int32_t>(e);
  std::stable_sort(by_load.begin(), by_load.end(),
                   [&](int32_t a, int32_t b) { return load[a] < load[b]; });
  s.experts.push_back(by_load[L.E / 2]);
  if (by_load.front() != by_load[L.E / 2]) s.experts.push_back(by_load.front());
  return s;
}

SampledReference sampled_reference(const SampledLayer& L, const Sample& S, SampledInputs& in,
                                   int threads) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const Shape s{L.d, L.n, L.R(), L.act, is_gated(L.act)};
  const int64_t d = L.d, N = L.N(), Sn = static_cast<int64_t>(S.tokens.size());
  if (static_cast<int64_t>(L.pair_expert.size()) != N ||
      static_cast<int64_t>(L.pair_score.size()) != N)
    throw std::runtime_error("sampled_reference: pair_token, pair_expert, pair_score differ in size");

  // Pairs of token t: [first[t], first[t+1]) since pairs are sorted by token.
  std::vector<int64_t> first(L.T + 1, 0);
  for (int64_t i = 0; i < N; ++i) ++first[L.pair_token[i] + 1];
  for (int64_t t = 0; t < L.T; ++t) first[t + 1] += first[t];

  SampledReference ref;
  ref.out.assign(Sn * d, 0.0);
  ref.dx.assign(Sn * d, 0.0);
  std::map<int32_t, std::vector<SampledPair>> by_expert;  // ordered: a fixed visiting order
  for (int64_t r = 0; r < Sn; ++r)
    for (int64_t i = first[S.tokens[r]]; i < first[S.tokens[r] + 1]; ++i) {
      by_expert[L.pair_expert[i]].push_back(
          SampledPair{static_cast<int64_t>(ref.pairs.size()), r, L.pair_score[i]});
      ref.pairs.push_back(i);
    }
  ref.dscores.assign(ref.pairs.size(), 0.0);
  for (int32_t e : S.experts) by_expert[e];  // sampled experts are visited even with no sampled pair

  const std::vector<float> xs = in.x_rows(S.tokens), dos = in.dout_rows(S.tokens);
  expect_size("x_rows", xs.size(), Sn * d);
  expect_size("dout_rows", dos.size(), Sn * d);
  const size_t X = S.experts.size();
  ref.dw1.resize(X);
  ref.db1.resize(X);
  ref.dw2.resize(X);
  ref.db2.resize(X);

  // One expert's parameters in memory at a time.
  for (const auto& [e, qs] : by_expert) {
    const ExpertTensors P = in.expert_params(e);
    expect_size("w1", P.w1.size(), s.R * d);
    expect_size("w2", P.w2.size(), d * s.n);
    expect_size("b1", P.b1.size(), L.has_b1 ? s.R : 0);
    expect_size("b2", P.b2.size(), L.has_b2 ? d : 0);
    if (!qs.empty()) token_pairs(s, P, qs, xs, dos, threads, ref);
    for (size_t x = 0; x < X; ++x) {
      if (S.experts[x] != e) continue;
      std::vector<int32_t> tokens;
      std::vector<double> scores;
      for (int64_t i = 0; i < N; ++i)
        if (L.pair_expert[i] == e) {
          tokens.push_back(L.pair_token[i]);
          scores.push_back(L.pair_score[i]);
        }
      expert_gradients(s, P, tokens, scores, in, threads, ref.dw1[x], ref.db1[x], ref.dw2[x],
                       ref.db2[x]);
    }
  }
  return ref;
}

}  // namespace sonicmoe::testing
