// The token-choice router on CPU tensors: router_forward and router_backward
// against the fp64 oracle (testing/naive.hpp), tie-breaking, and
// finite-difference checks of both the library's reference row backward (in
// double) and the oracle's backward.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <sonicmoe/sonicmoe.hpp>

#include "cpu/router_reference.hpp"
#include "device_buffer.hpp"
#include "harness.hpp"
#include "naive.hpp"

namespace sonicmoe {
namespace {

using testing::DevTensor;
using testing::from_doubles;
using testing::make;
using testing::naive_router;
using testing::naive_router_backward;
using testing::NaiveRoute;
using testing::to_doubles;
using testing::to_ints;

const Device kCpu{};

// f32 math against fp64: a few ulps of every exp, sum and division.
constexpr double kF32Rel = 1e-5;
// A bf16 output is rounded to nearest: at most 2^-9 relative, 2^-8 leaves room
// for the f32 error before the rounding.
constexpr double kBf16Rel = 1.0 / 256;

std::vector<double> random_logits(int64_t count, uint64_t seed, double scale = 1.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(0.0, scale);
  std::vector<double> v(static_cast<size_t>(count));
  for (auto& x : v) x = testing::round_to_f32(dist(rng));
  return v;
}

// What a tensor of `dtype` holds when given these doubles.
std::vector<double> stored_as(DType dtype, std::vector<double> v) {
  for (auto& x : v) x = dtype == DType::BF16 ? testing::round_to_bf16(x) : testing::round_to_f32(x);
  return v;
}

std::vector<double> row_of(const std::vector<double>& m, int64_t r, int64_t cols) {
  return {m.begin() + r * cols, m.begin() + (r + 1) * cols};
}

struct RouterOut {
  std::vector<int32_t> ids;
  std::vector<double> scores;
};

RouterOut run_router(const std::vector<double>& logits, int64_t T, int64_t E, int64_t K,
                     DType dtype, RouterOrder order, bool renormalize) {
  DevTensor z = from_doubles(kCpu, dtype, logits, {T, E});
  DevTensor s = make(kCpu, DType::F32, {T, K});
  DevTensor ids = make(kCpu, DType::I32, {T, K});
  router_forward(RouterArgs{z.t, K, order, renormalize, s.t, ids.t});
  return {to_ints(ids), to_doubles(s)};
}

std::vector<double> run_router_backward(const std::vector<double>& logits, int64_t T, int64_t E,
                                        const std::vector<int32_t>& ids, int64_t K,
                                        const std::vector<double>& dscores, DType dtype,
                                        RouterOrder order, bool renormalize) {
  DevTensor z = from_doubles(kCpu, dtype, logits, {T, E});
  DevTensor id = make(kCpu, DType::I32, {T, K});
  id.buf->upload(ids.data());
  DevTensor ds = from_doubles(kCpu, DType::F32, dscores, {T, K});
  DevTensor dz = make(kCpu, dtype, {T, E});
  router_backward(RouterBackwardArgs{z.t, id.t, ds.t, order, renormalize, dz.t});
  return to_doubles(dz);
}

// ----------------------------------------------------------- forward ------

struct RouterCase {
  int64_t T, E, K;
  DType dtype;
  RouterOrder order;
  bool renormalize;
};

std::string case_name(const ::testing::TestParamInfo<RouterCase>& info) {
  const RouterCase& c = info.param;
  return "T" + std::to_string(c.T) + "_E" + std::to_string(c.E) + "_K" + std::to_string(c.K) +
         "_" + to_string(c.dtype) + "_" +
         (c.order == RouterOrder::TopKThenSoftmax ? "topk_softmax" : "softmax_topk") +
         (c.renormalize ? "_renorm" : "");
}

std::vector<RouterCase> router_cases() {
  std::vector<RouterCase> cases;
  // E a power of two and not; K = 1, a middle value and K = E; E = 1.
  const std::vector<std::pair<int64_t, int64_t>> ek = {{8, 2}, {6, 1}, {13, 4}, {13, 13},
                                                       {1, 1}, {64, 8}, {129, 7}};
  for (DType dt : {DType::F32, DType::BF16})
    for (RouterOrder o : {RouterOrder::TopKThenSoftmax, RouterOrder::SoftmaxThenTopK})
      for (bool renorm : {false, true})
        for (auto [E, K] : ek) cases.push_back({E >= 64 ? 300 : 37, E, K, dt, o, renorm});
  return cases;
}

class RouterForward : public ::testing::TestWithParam<RouterCase> {};

TEST_P(RouterForward, MatchesNaiveRouter) {
  const RouterCase c = GetParam();
  const uint64_t seed = static_cast<uint64_t>(c.E * 1000 + c.K * 10 + c.renormalize);
  const std::vector<double> z = stored_as(c.dtype, random_logits(c.T * c.E, seed));
  const RouterOut got = run_router(z, c.T, c.E, c.K, c.dtype, c.order, c.renormalize);
  ASSERT_EQ(got.ids.size(), static_cast<size_t>(c.T * c.K));
  for (int64_t t = 0; t < c.T; ++t) {
    const NaiveRoute ref = naive_router(row_of(z, t, c.E), c.K, c.order, c.renormalize);
    double sum = 0;
    for (int64_t k = 0; k < c.K; ++k) {
      const size_t i = static_cast<size_t>(t * c.K + k);
      // bf16 logits tie often: the ids must still agree exactly (lower id first).
      ASSERT_EQ(got.ids[i], ref.ids[k]) << "token " << t << " slot " << k;
      EXPECT_NEAR(got.scores[i], ref.scores[k], kF32Rel * std::abs(ref.scores[k]))
          << "token " << t << " slot " << k;
      if (k > 0) {
        // Slots are in descending logit order.
        EXPECT_GE(z[t * c.E + got.ids[i - 1]], z[t * c.E + got.ids[i]]);
      }
      sum += got.scores[i];
    }
    if (c.order == RouterOrder::TopKThenSoftmax || c.renormalize || c.K == c.E)
      EXPECT_NEAR(sum, 1.0, 1e-5) << "token " << t;
    else
      EXPECT_LT(sum, 1.0 + 1e-6) << "token " << t;
  }
}

INSTANTIATE_TEST_SUITE_P(Router, RouterForward, ::testing::ValuesIn(router_cases()), case_name);

// ------------------------------------------------------------- ties -------

TEST(RouterTies, AllEqualLogitsPickTheLowestIds) {
  const int64_t T = 3, E = 7;
  for (DType dt : {DType::F32, DType::BF16})
    for (RouterOrder o : {RouterOrder::TopKThenSoftmax, RouterOrder::SoftmaxThenTopK})
      for (bool renorm : {false, true})
        for (int64_t K : {1, 3, 7}) {
          // Three rows of equal values: 0, a negative and a positive constant.
          std::vector<double> z;
          for (double v : {0.0, -2.5, 1.25}) z.insert(z.end(), E, v);
          const RouterOut got = run_router(z, T, E, K, dt, o, renorm);
          const double each =
              o == RouterOrder::SoftmaxThenTopK && !renorm ? 1.0 / E : 1.0 / K;
          for (int64_t t = 0; t < T; ++t)
            for (int64_t k = 0; k < K; ++k) {
              EXPECT_EQ(got.ids[t * K + k], k)
                  << to_string(dt) << " " << to_string(o) << " K=" << K;
              EXPECT_NEAR(got.scores[t * K + k], each, 1e-6);
            }
        }
}

TEST(RouterTies, PartialTiesGoToTheLowerId) {
  // 3 appears at ids 1, 2 and 4; 2 at ids 3 and 5.
  const std::vector<double> z = {1, 3, 3, 2, 3, 2, -1};
  const int64_t E = 7;
  for (DType dt : {DType::F32, DType::BF16}) {
    const RouterOut got = run_router(z, 1, E, 6, dt, RouterOrder::TopKThenSoftmax, false);
    EXPECT_EQ(got.ids, (std::vector<int32_t>{1, 2, 4, 3, 5, 0}));
    const RouterOut two = run_router(z, 1, E, 2, dt, RouterOrder::SoftmaxThenTopK, true);
    EXPECT_EQ(two.ids, (std::vector<int32_t>{1, 2}));
    EXPECT_NEAR(two.scores[0], 0.5, 1e-7);
    EXPECT_NEAR(two.scores[1], 0.5, 1e-7);
  }
}

TEST(RouterTies, NegativeAndPositiveZeroTie) {
  const std::vector<double> z = {-1.0, -0.0, 0.0, -0.0};
  const RouterOut got = run_router(z, 1, 4, 3, DType::F32, RouterOrder::TopKThenSoftmax, false);
  EXPECT_EQ(got.ids, (std::vector<int32_t>{1, 2, 3}));
}

TEST(RouterForwardStability, LargeLogitsStayFinite) {
  // exp(1000) overflows: both orders must subtract the maximum first.
  const std::vector<double> z = {1000.0, 999.0, -1000.0, 998.5, 1000.0 - 1.0 / 64};
  for (RouterOrder o : {RouterOrder::TopKThenSoftmax, RouterOrder::SoftmaxThenTopK})
    for (bool renorm : {false, true}) {
      const RouterOut got = run_router(z, 1, 5, 3, DType::F32, o, renorm);
      const NaiveRoute ref = naive_router(z, 3, o, renorm);
      EXPECT_EQ(got.ids, ref.ids);
      for (int k = 0; k < 3; ++k) {
        ASSERT_TRUE(std::isfinite(got.scores[k]));
        EXPECT_NEAR(got.scores[k], ref.scores[k], kF32Rel * ref.scores[k]);
      }
    }
}

TEST(RouterDeterminism, ForwardIsBitwiseRepeatable) {
  const int64_t T = 300, E = 64, K = 8;
  const std::vector<double> z = random_logits(T * E, 99);
  for (RouterOrder o : {RouterOrder::TopKThenSoftmax, RouterOrder::SoftmaxThenTopK}) {
    const RouterOut a = run_router(z, T, E, K, DType::F32, o, true);
    const RouterOut b = run_router(z, T, E, K, DType::F32, o, true);
    EXPECT_EQ(a.ids, b.ids);
    EXPECT_EQ(a.scores, b.scores);
  }
}

// ----------------------------------------------------------- backward -----

class RouterBackward : public ::testing::TestWithParam<RouterCase> {};

TEST_P(RouterBackward, MatchesNaiveRouterBackward) {
  const RouterCase c = GetParam();
  const uint64_t seed = static_cast<uint64_t>(c.E * 7 + c.K * 3 + c.renormalize + 5);
  const std::vector<double> z = stored_as(c.dtype, random_logits(c.T * c.E, seed));
  const std::vector<double> ds = random_logits(c.T * c.K, seed + 1);
  const RouterOut fwd = run_router(z, c.T, c.E, c.K, c.dtype, c.order, c.renormalize);
  const std::vector<double> got =
      run_router_backward(z, c.T, c.E, fwd.ids, c.K, ds, c.dtype, c.order, c.renormalize);
  for (int64_t t = 0; t < c.T; ++t) {
    const std::vector<int32_t> ids(fwd.ids.begin() + t * c.K, fwd.ids.begin() + (t + 1) * c.K);
    const std::vector<double> ref = naive_router_backward(
        row_of(z, t, c.E), ids, row_of(ds, t, c.K), c.order, c.renormalize);
    double ref_max = 0;
    for (double v : ref) ref_max = std::max(ref_max, std::abs(v));
    for (int64_t e = 0; e < c.E; ++e) {
      const double g = got[t * c.E + e], r = ref[e];
      const bool chosen = std::find(ids.begin(), ids.end(), e) != ids.end();
      if (c.order == RouterOrder::TopKThenSoftmax && !chosen) {
        EXPECT_EQ(g, 0.0) << "token " << t << " expert " << e << " (not chosen)";
        continue;
      }
      const double tol =
          (c.dtype == DType::BF16 ? kBf16Rel * std::abs(r) : 0.0) + kF32Rel * ref_max;
      EXPECT_NEAR(g, r, tol) << "token " << t << " expert " << e;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Router, RouterBackward, ::testing::ValuesIn(router_cases()), case_name);

// Ids chosen by the caller (not the top-K, in any order, one repeated): the
// backward recomputes the scores from those ids and sums repeated slots.
TEST(RouterBackwardIds, ArbitraryIdsMatchNaive) {
  const int64_t E = 9, K = 4;
  const std::vector<double> z = random_logits(E, 17);
  const std::vector<double> ds = {0.5, -1.25, 2.0, 0.75};
  for (const std::vector<int32_t>& ids :
       {std::vector<int32_t>{8, 0, 3, 5}, std::vector<int32_t>{2, 2, 7, 1}}) {
    for (RouterOrder o : {RouterOrder::TopKThenSoftmax, RouterOrder::SoftmaxThenTopK})
      for (bool renorm : {false, true}) {
        const std::vector<double> got =
            run_router_backward(z, 1, E, ids, K, ds, DType::F32, o, renorm);
        const std::vector<double> ref = naive_router_backward(z, ids, ds, o, renorm);
        double ref_max = 0;
        for (double v : ref) ref_max = std::max(ref_max, std::abs(v));
        for (int64_t e = 0; e < E; ++e)
          EXPECT_NEAR(got[e], ref[e], kF32Rel * ref_max)
              << to_string(o) << " renorm " << renorm << " expert " << e << " ids[0] " << ids[0];
      }
  }
}

// ------------------------------------------------ finite differences -------

// The loss L(z) = sum_k ds_k s_k(z) with the ids held fixed, by the
// library's reference in double.
double reference_loss(const std::vector<double>& z, const std::vector<int32_t>& ids,
                      const std::vector<double>& ds, bool softmax_first, bool renormalize) {
  const int64_t E = static_cast<int64_t>(z.size()), K = static_cast<int64_t>(ids.size());
  std::vector<double> s(K), p_all(E);
  cpu::scores_row<double, double>(z.data(), E, K, ids.data(), softmax_first, renormalize,
                                  s.data(), p_all.data());
  double l = 0;
  for (int64_t k = 0; k < K; ++k) l += ds[k] * s[k];
  return l;
}

double naive_loss(const std::vector<double>& z, const std::vector<int32_t>& ids,
                  const std::vector<double>& ds, RouterOrder order, bool renormalize) {
  const NaiveRoute r = naive_router(z, static_cast<int64_t>(ids.size()), order, renormalize);
  EXPECT_EQ(r.ids, ids) << "the perturbation changed the top-K: the FD check is invalid";
  double l = 0;
  for (size_t k = 0; k < ids.size(); ++k) l += ds[k] * r.scores[k];
  return l;
}

constexpr double kFdStep = 1e-5;
// Central differences: O(h^2) truncation plus O(eps / h) rounding.
constexpr double kFdTol = 1e-8;

struct FdCase {
  int64_t E, K;
  RouterOrder order;
  bool renormalize;
};

std::vector<FdCase> fd_cases() {
  std::vector<FdCase> v;
  for (RouterOrder o : {RouterOrder::TopKThenSoftmax, RouterOrder::SoftmaxThenTopK})
    for (bool r : {false, true})
      for (auto [E, K] : std::vector<std::pair<int64_t, int64_t>>{{7, 3}, {5, 1}, {6, 6}, {12, 5}})
        v.push_back({E, K, o, r});
  return v;
}

// Logits with gaps much larger than the FD step, so the top-K is stable.
std::vector<double> separated_logits(int64_t E, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<double> z(E);
  for (int64_t e = 0; e < E; ++e) z[e] = 0.37 * static_cast<double>(e) - 1.1;
  std::shuffle(z.begin(), z.end(), rng);
  std::uniform_real_distribution<double> jitter(-0.1, 0.1);
  for (auto& v : z) v += jitter(rng);
  return z;
}

TEST(RouterGradient, ReferenceRowBackwardMatchesFiniteDifferences) {
  for (const FdCase& c : fd_cases()) {
    const bool softmax_first = c.order == RouterOrder::SoftmaxThenTopK;
    const std::vector<double> z = separated_logits(c.E, static_cast<uint64_t>(c.E * 31 + c.K));
    std::vector<int32_t> ids(c.K);
    cpu::topk_row<double, double>(z.data(), c.E, c.K, ids.data());
    std::vector<double> ds(c.K);
    for (int64_t k = 0; k < c.K; ++k) ds[k] = std::sin(1.7 * static_cast<double>(k) + 0.3) * 2.0;

    std::vector<double> s(c.K), p_all(c.E), dz(c.E);
    cpu::router_backward_row<double, double>(z.data(), c.E, c.K, ids.data(), ds.data(),
                                             softmax_first, c.renormalize, s.data(),
                                             p_all.data(), dz.data());
    for (int64_t e = 0; e < c.E; ++e) {
      std::vector<double> zp = z, zm = z;
      zp[e] += kFdStep;
      zm[e] -= kFdStep;
      const double fd = (reference_loss(zp, ids, ds, softmax_first, c.renormalize) -
                         reference_loss(zm, ids, ds, softmax_first, c.renormalize)) /
                        (2 * kFdStep);
      EXPECT_NEAR(dz[e], fd, kFdTol * std::max(1.0, std::abs(fd)))
          << to_string(c.order) << " renorm " << c.renormalize << " E=" << c.E << " K=" << c.K
          << " logit " << e;
    }
  }
}

// The ids need not be the top-K for the reference's backward: any fixed ids
// (a repeated one included) define a differentiable function.
TEST(RouterGradient, ReferenceRowBackwardWithArbitraryIds) {
  const std::vector<double> z = {0.3, -1.2, 0.8, 2.1, -0.4, 0.05};
  const std::vector<int32_t> ids = {4, 1, 1, 5};
  const std::vector<double> ds = {1.5, -0.5, 0.25, -2.0};
  const int64_t E = 6, K = 4;
  for (bool softmax_first : {false, true})
    for (bool renorm : {false, true}) {
      std::vector<double> s(K), p_all(E), dz(E);
      cpu::router_backward_row<double, double>(z.data(), E, K, ids.data(), ds.data(),
                                               softmax_first, renorm, s.data(), p_all.data(),
                                               dz.data());
      for (int64_t e = 0; e < E; ++e) {
        std::vector<double> zp = z, zm = z;
        zp[e] += kFdStep;
        zm[e] -= kFdStep;
        const double fd = (reference_loss(zp, ids, ds, softmax_first, renorm) -
                           reference_loss(zm, ids, ds, softmax_first, renorm)) /
                          (2 * kFdStep);
        EXPECT_NEAR(dz[e], fd, kFdTol * std::max(1.0, std::abs(fd)))
            << "softmax_first " << softmax_first << " renorm " << renorm << " logit " << e;
      }
    }
}

TEST(RouterGradient, NaiveRouterBackwardMatchesFiniteDifferences) {
  for (const FdCase& c : fd_cases()) {
    const std::vector<double> z = separated_logits(c.E, static_cast<uint64_t>(c.E * 13 + c.K));
    const std::vector<int32_t> ids = naive_router(z, c.K, c.order, c.renormalize).ids;
    std::vector<double> ds(c.K);
    for (int64_t k = 0; k < c.K; ++k) ds[k] = std::cos(0.9 * static_cast<double>(k) + 0.1);
    const std::vector<double> dz = naive_router_backward(z, ids, ds, c.order, c.renormalize);
    ASSERT_EQ(dz.size(), static_cast<size_t>(c.E));
    for (int64_t e = 0; e < c.E; ++e) {
      std::vector<double> zp = z, zm = z;
      zp[e] += kFdStep;
      zm[e] -= kFdStep;
      const double fd = (naive_loss(zp, ids, ds, c.order, c.renormalize) -
                         naive_loss(zm, ids, ds, c.order, c.renormalize)) /
                        (2 * kFdStep);
      EXPECT_NEAR(dz[e], fd, kFdTol * std::max(1.0, std::abs(fd)))
          << to_string(c.order) << " renorm " << c.renormalize << " E=" << c.E << " K=" << c.K
          << " logit " << e;
    }
  }
}

// The reference in double and the oracle agree to rounding (they are
// derived independently).
TEST(RouterGradient, ReferenceInDoubleMatchesNaive) {
  for (const FdCase& c : fd_cases()) {
    const std::vector<double> z = random_logits(c.E, static_cast<uint64_t>(c.E + 100 * c.K));
    std::vector<int32_t> ids(c.K);
    cpu::topk_row<double, double>(z.data(), c.E, c.K, ids.data());
    const NaiveRoute ref = naive_router(z, c.K, c.order, c.renormalize);
    ASSERT_EQ(ids, ref.ids);
    std::vector<double> ds(c.K);
    for (int64_t k = 0; k < c.K; ++k) ds[k] = 1.0 - 0.3 * static_cast<double>(k);
    const bool softmax_first = c.order == RouterOrder::SoftmaxThenTopK;
    std::vector<double> s(c.K), p_all(c.E), dz(c.E);
    cpu::router_backward_row<double, double>(z.data(), c.E, c.K, ids.data(), ds.data(),
                                             softmax_first, c.renormalize, s.data(),
                                             p_all.data(), dz.data());
    for (int64_t k = 0; k < c.K; ++k) EXPECT_NEAR(s[k], ref.scores[k], 1e-14);
    const std::vector<double> dref = naive_router_backward(z, ids, ds, c.order, c.renormalize);
    for (int64_t e = 0; e < c.E; ++e) EXPECT_NEAR(dz[e], dref[e], 1e-13);
  }
}

}  // namespace
}  // namespace sonicmoe
