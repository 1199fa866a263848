// The MoE layer of the CPU backend (bf16 tensors, fp32 math) against the fp64
// oracle (testing/naive.hpp), forward and backward, on a matrix of
// activations x bias x router orders and on the edges of the routing: empty
// experts, every token on one expert, K = E, K = 1, T = 1, tokens with no
// pairs. Also the routing metadata run_library hands back, inference mode and
// bitwise determinism (repeated runs, other thread counts).
//
// Tolerances. Inputs are bf16-representable and the oracle sees exactly the
// library's inputs, so the error is the library's own rounding:
// - out and h are stored in bf16: a half-ulp is 2^-9 of the element
//   (<= 2^-8 = 0.0039 of max|ref|), fp32 accumulation adds ~1e-6. Bound:
//   rel = max_abs / max|ref| <= 1e-2 (2.5x the storage error).
// - The backward recomputes A and act'(H) from the bf16-stored H (2^-9
//   relative per element), feeds them through sums of d..2n terms and stores
//   bf16 again, so the errors are a few times 2^-9 of max|ref|. Bound:
//   rel <= 2e-2. Measured maxima on the cases below: 5e-3 for most outputs,
//   9e-3 for dw2 with ReLU2 (squaring doubles the relative error of H).
// Both bounds trip on a 3% systematic error in any output (checked when they
// were set by scaling one oracle tensor by 1.03 or flipping the sign of one
// element: every scaled quantity failed).
// Where the reference is exactly zero by construction (experts with no pairs,
// tokens with no pairs) the library must give exactly zero: the API promises
// it for weight gradients, and an empty sum is 0 in any precision.
#include <gtest/gtest.h>

#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include <sonicmoe/sonicmoe.hpp>

#include "cpu/parallel.hpp"
#include "harness.hpp"
#include "naive.hpp"

namespace sonicmoe::testing {
namespace {

constexpr double kForwardTol = 1e-2;
constexpr double kGradTol = 2e-2;

constexpr Activation kActivations[] = {Activation::SwiGLU, Activation::GeGLU, Activation::ReGLU,
                                       Activation::GeLU,   Activation::ReLU,  Activation::ReLU2,
                                       Activation::SiLU};

void expect_close(const char* what, const std::vector<double>& lib,
                  const std::vector<double>& ref, double tol) {
  ASSERT_EQ(lib.size(), ref.size()) << what;
  const ErrorStats s = compare(lib, ref);
  EXPECT_LE(s.rel(), tol) << what << ": max_abs=" << s.max_abs << " ref_max=" << s.ref_max;
}

// The metadata must describe a stable counting sort of the pairs by expert.
void expect_routing_metadata(const NaiveLayer& L, const LibResult& r) {
  const int64_t N = L.N(), E = L.E, T = L.T;
  ASSERT_EQ(static_cast<int64_t>(r.expert_offsets.size()), E + 1);
  ASSERT_EQ(static_cast<int64_t>(r.token_offsets.size()), T + 1);
  ASSERT_EQ(static_cast<int64_t>(r.sorted_token.size()), N);
  ASSERT_EQ(static_cast<int64_t>(r.sorted_pair.size()), N);
  ASSERT_EQ(static_cast<int64_t>(r.pair_position.size()), N);
  std::vector<int64_t> expert_count(E, 0), token_count(T, 0);
  for (int64_t i = 0; i < N; ++i) {
    ++expert_count[L.pair_expert[i]];
    ++token_count[L.pair_token[i]];
  }
  EXPECT_EQ(r.expert_offsets[0], 0);
  for (int64_t e = 0; e < E; ++e)
    EXPECT_EQ(r.expert_offsets[e + 1] - r.expert_offsets[e], expert_count[e]) << "expert " << e;
  EXPECT_EQ(r.token_offsets[0], 0);
  for (int64_t t = 0; t < T; ++t)
    EXPECT_EQ(r.token_offsets[t + 1] - r.token_offsets[t], token_count[t]) << "token " << t;
  std::vector<bool> seen(N, false);
  for (int64_t e = 0; e < E; ++e) {
    for (int64_t p = r.expert_offsets[e]; p < r.expert_offsets[e + 1]; ++p) {
      ASSERT_TRUE(p >= 0 && p < N) << "position " << p;
      const int32_t i = r.sorted_pair[p];
      ASSERT_TRUE(i >= 0 && i < N) << "sorted_pair[" << p << "] = " << i;
      ASSERT_FALSE(seen[i]) << "pair " << i << " appears twice in sorted_pair";
      seen[i] = true;
      ASSERT_EQ(L.pair_expert[i], e) << "position " << p << " holds pair " << i;
      ASSERT_EQ(r.sorted_token[p], L.pair_token[i]) << "position " << p;
      ASSERT_EQ(r.pair_position[i], p) << "pair " << i;
      if (p > r.expert_offsets[e]) {
        ASSERT_LT(r.sorted_pair[p - 1], i) << "unstable order at position " << p;
      }
    }
  }
}

// Library vs oracle on every output, plus the exact zeros that empty experts
// and pair-less tokens must give.
void check_against_oracle(const Case& c, bool use_topk) {
  SCOPED_TRACE(describe(c.spec) + (use_topk ? " topk" : " pairs"));
  const NaiveLayer& L = c.layer;
  const LibResult lib = run_library(c, Device{}, /*backward=*/true, use_topk);
  expect_routing_metadata(L, lib);

  const NaiveForward fwd = naive_forward(L);
  const NaiveGrads grad = naive_backward(L, c.dout);
  expect_close("out", lib.out, fwd.out, kForwardTol);
  expect_close("h", lib.h_pair_order(), fwd.h, kForwardTol);
  expect_close("dx", lib.dx, grad.dx, kGradTol);
  expect_close("dw1", lib.dw1, grad.dw1, kGradTol);
  expect_close("db1", lib.db1, grad.db1, kGradTol);
  expect_close("dw2", lib.dw2, grad.dw2, kGradTol);
  expect_close("db2", lib.db2, grad.db2, kGradTol);
  expect_close("dscores", lib.dscores, grad.dscores, kGradTol);

  const int64_t d = L.d, n = L.n, R = L.R();
  std::vector<int64_t> expert_count(L.E, 0), token_count(L.T, 0);
  for (int64_t i = 0; i < L.N(); ++i) {
    ++expert_count[L.pair_expert[i]];
    ++token_count[L.pair_token[i]];
  }
  auto expect_zero = [](const std::vector<double>& v, int64_t begin, int64_t len,
                        const char* what, int64_t index) {
    for (int64_t k = begin; k < begin + len; ++k)
      if (v[k] != 0.0) {
        ADD_FAILURE() << what << " " << index << ": element " << k - begin << " is " << v[k]
                      << ", must be exactly 0";
        return;
      }
  };
  for (int64_t e = 0; e < L.E; ++e) {
    if (expert_count[e] != 0) continue;
    expect_zero(lib.dw1, e * R * d, R * d, "dw1 of empty expert", e);
    expect_zero(lib.dw2, e * d * n, d * n, "dw2 of empty expert", e);
    if (!lib.db1.empty()) expect_zero(lib.db1, e * R, R, "db1 of empty expert", e);
    if (!lib.db2.empty()) expect_zero(lib.db2, e * d, d, "db2 of empty expert", e);
  }
  for (int64_t t = 0; t < L.T; ++t) {
    if (token_count[t] != 0) continue;
    expect_zero(lib.out, t * d, d, "out row of pair-less token", t);
    expect_zero(lib.dx, t * d, d, "dx row of pair-less token", t);
  }
}

// ---------------------------------------------------------------- matrix ---

struct RouterCfg {
  RouterOrder order;
  bool renormalize;
};
constexpr RouterCfg kRouters[] = {{RouterOrder::TopKThenSoftmax, false},
                                  {RouterOrder::SoftmaxThenTopK, false},
                                  {RouterOrder::SoftmaxThenTopK, true}};

using MatrixParam = std::tuple<Activation, bool, int>;  // activation, bias, router index

class LayerReference : public ::testing::TestWithParam<MatrixParam> {};

TEST_P(LayerReference, MatchesOracle) {
  const auto [act, bias, router] = GetParam();
  CaseSpec s;
  // d and n multiples of 8 but not of 64; T not a multiple of anything.
  s.T = 37;
  s.d = 24;
  s.n = 40;
  s.E = 5;
  s.K = 2;
  s.act = act;
  s.bias = bias;
  s.order = kRouters[router].order;
  s.renormalize = kRouters[router].renormalize;
  s.seed = 100 + static_cast<uint64_t>(act) * 10 + (bias ? 5 : 0) + router;
  const Case c = make_case(s);
  check_against_oracle(c, /*use_topk=*/true);
}

std::string matrix_name(const ::testing::TestParamInfo<MatrixParam>& info) {
  const auto [act, bias, router] = info.param;
  static const char* kRouterNames[] = {"TopKSoftmax", "SoftmaxTopK", "SoftmaxTopKRenorm"};
  return std::string(to_string(act)) + (bias ? "_Bias_" : "_NoBias_") + kRouterNames[router];
}

INSTANTIATE_TEST_SUITE_P(Layer, LayerReference,
                         ::testing::Combine(::testing::ValuesIn(kActivations), ::testing::Bool(),
                                            ::testing::Values(0, 1, 2)),
                         matrix_name);

// ----------------------------------------------------------------- edges ---

using EdgeParam = std::tuple<Activation, bool>;

class LayerEdge : public ::testing::TestWithParam<EdgeParam> {
 protected:
  CaseSpec spec(uint64_t seed) const {
    CaseSpec s;
    s.T = 37;
    s.d = 24;
    s.n = 40;
    s.E = 5;
    s.K = 2;
    s.act = std::get<0>(GetParam());
    s.bias = std::get<1>(GetParam());
    s.seed = seed + 1000 * static_cast<uint64_t>(s.act) + (s.bias ? 500 : 0);
    return s;
  }
};

// Experts 0 (first), 2 (middle) and 5 (last) of 6 get no pairs.
TEST_P(LayerEdge, EmptyExperts) {
  CaseSpec s = spec(1);
  s.E = 6;
  Case c = make_case(s);
  const int32_t used[] = {1, 3, 4};
  std::mt19937_64 rng(s.seed);
  std::uniform_real_distribution<double> score(0.05, 1.0);
  std::vector<int32_t> tok, exp;
  std::vector<double> sc;
  for (int32_t t = 0; t < s.T; ++t) {
    const int a = static_cast<int>(rng() % 3), b = (a + 1 + static_cast<int>(rng() % 2)) % 3;
    for (int k : {a, b}) {
      tok.push_back(t);
      exp.push_back(used[k]);
      sc.push_back(score(rng));
    }
  }
  set_pairs(c, tok, exp, sc);
  check_against_oracle(c, /*use_topk=*/true);
  check_against_oracle(c, /*use_topk=*/false);
}

TEST_P(LayerEdge, AllTokensOnOneExpertK1) {
  CaseSpec s = spec(2);
  s.K = 1;
  s.hot_expert = 2;
  const Case c = make_case(s);
  for (int32_t e : c.layer.pair_expert) ASSERT_EQ(e, 2);
  check_against_oracle(c, /*use_topk=*/true);
}

TEST_P(LayerEdge, AllTokensOnOneExpertK2) {
  CaseSpec s = spec(3);
  s.K = 2;
  s.hot_expert = 2;
  const Case c = make_case(s);
  for (int64_t t = 0; t < s.T; ++t) ASSERT_EQ(c.layer.pair_expert[t * 2], 2);
  check_against_oracle(c, /*use_topk=*/true);
}

TEST_P(LayerEdge, KEqualsE) {
  CaseSpec s = spec(4);
  s.E = 4;
  s.K = 4;
  check_against_oracle(make_case(s), /*use_topk=*/true);
  s.order = RouterOrder::SoftmaxThenTopK;  // all E picked: scores are the full softmax
  check_against_oracle(make_case(s), /*use_topk=*/true);
}

TEST_P(LayerEdge, KOne) {
  CaseSpec s = spec(5);
  s.K = 1;
  check_against_oracle(make_case(s), /*use_topk=*/true);
  s.order = RouterOrder::SoftmaxThenTopK;
  check_against_oracle(make_case(s), /*use_topk=*/true);
}

TEST_P(LayerEdge, OneToken) {
  CaseSpec s = spec(6);
  s.T = 1;
  check_against_oracle(make_case(s), /*use_topk=*/true);
}

// General routing: 0 to E pairs per token, pair-less tokens first, inside and
// last, experts listed in no particular order within a token.
TEST_P(LayerEdge, VariablePairsPerToken) {
  CaseSpec s = spec(7);
  s.T = 8;
  Case c = make_case(s);
  const std::vector<std::vector<int32_t>> experts = {
      {}, {1, 3, 0}, {}, {4}, {0, 1, 2, 3, 4}, {2, 0}, {3}, {}};
  std::mt19937_64 rng(s.seed);
  std::uniform_real_distribution<double> score(0.05, 1.0);
  std::vector<int32_t> tok, exp;
  std::vector<double> sc;
  for (int32_t t = 0; t < s.T; ++t)
    for (int32_t e : experts[t]) {
      tok.push_back(t);
      exp.push_back(e);
      sc.push_back(score(rng));
    }
  set_pairs(c, tok, exp, sc);
  check_against_oracle(c, /*use_topk=*/false);
}

// N = 0: every token without pairs, every expert empty.
TEST_P(LayerEdge, NoPairsAtAll) {
  CaseSpec s = spec(9);
  s.T = 5;
  Case c = make_case(s);
  set_pairs(c, {}, {}, {});
  check_against_oracle(c, /*use_topk=*/false);
}

TEST_P(LayerEdge, InferenceMatchesTraining) {
  const Case c = make_case(spec(8));
  const LibResult train = run_library(c, Device{}, false, true, ForwardMode::Training);
  const LibResult infer = run_library(c, Device{}, false, true, ForwardMode::Inference);
  EXPECT_TRUE(infer.h.empty());
  ASSERT_EQ(train.out.size(), infer.out.size());
  for (size_t i = 0; i < train.out.size(); ++i)
    ASSERT_EQ(std::bit_cast<uint64_t>(train.out[i]), std::bit_cast<uint64_t>(infer.out[i]))
        << "out element " << i << ": training " << train.out[i] << ", inference "
        << infer.out[i];
}

std::string edge_name(const ::testing::TestParamInfo<EdgeParam>& info) {
  return std::string(to_string(std::get<0>(info.param))) +
         (std::get<1>(info.param) ? "_Bias" : "_NoBias");
}

INSTANTIATE_TEST_SUITE_P(Layer, LayerEdge,
                         ::testing::Combine(::testing::ValuesIn(kActivations), ::testing::Bool()),
                         edge_name);

// ----------------------------------------------------------- determinism ---

// Large enough that every parallel loop of the forward and the backward
// splits over 3 threads (parallel_for gives each thread at least 2^16
// multiply-adds; the smallest loops, the per-token sums, cost T*4d = 196864),
// with T prime so that the chunks differ with the thread count.
Case determinism_case() {
  CaseSpec s;
  s.T = 769;
  s.d = 64;
  s.n = 64;
  s.E = 7;
  s.K = 2;
  s.act = Activation::SwiGLU;
  s.bias = true;
  s.seed = 77;
  return make_case(s);
}

std::vector<double> flatten(const LibResult& r) {
  std::vector<double> v;
  for (const auto* part : {&r.out, &r.h, &r.dx, &r.dw1, &r.db1, &r.dw2, &r.db2, &r.dscores})
    v.insert(v.end(), part->begin(), part->end());
  return v;
}

void expect_bitwise_equal(const std::vector<double>& a, const std::vector<double>& b,
                          const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i)
    ASSERT_EQ(std::bit_cast<uint64_t>(a[i]), std::bit_cast<uint64_t>(b[i]))
        << what << ": flat element " << i << ": " << a[i] << " vs " << b[i];
}

TEST(LayerDeterminism, RepeatedRunsAreBitwiseEqual) {
  const Case c = determinism_case();
  const std::vector<double> first = flatten(run_library(c, Device{}, true));
  const std::vector<double> second = flatten(run_library(c, Device{}, true));
  expect_bitwise_equal(first, second, "second run");
  for (double v : first) ASSERT_FALSE(std::isnan(v));
}

// The CPU backend reads SONICMOE_CPU_THREADS once per process, so another
// thread count needs another process: the test runs this binary again with
// the variable set and only the dump below enabled, and compares the bits.
// The child writes its thread count first, so a variable that is not honoured
// fails the test instead of passing vacuously.
TEST(LayerDeterminism, DISABLED_DumpForThreadCountChild) {
  const char* path = std::getenv("SONICMOE_LAYER_DUMP");
  ASSERT_NE(path, nullptr) << "run by ThreadCountDoesNotChangeBits only";
  const std::vector<double> v = flatten(run_library(determinism_case(), Device{}, true));
  std::ofstream f(path, std::ios::binary);
  const int64_t threads = cpu::thread_count(), count = static_cast<int64_t>(v.size());
  f.write(reinterpret_cast<const char*>(&threads), sizeof threads);
  f.write(reinterpret_cast<const char*>(&count), sizeof count);
  f.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(count * 8));
  ASSERT_TRUE(f.good());
}

TEST(LayerDeterminism, ThreadCountDoesNotChangeBits) {
  char exe[4096];
  const ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (len <= 0) GTEST_SKIP() << "no /proc/self/exe: cannot re-run the test binary";
  exe[len] = '\0';
  const std::vector<double> here = flatten(run_library(determinism_case(), Device{}, true));
  for (int64_t threads : {1, 3}) {
    const std::string dump = ::testing::TempDir() + "sonicmoe_layer_dump_" +
                             std::to_string(getpid()) + "_" + std::to_string(threads);
    const std::string cmd = "SONICMOE_CPU_THREADS=" + std::to_string(threads) +
                            " SONICMOE_LAYER_DUMP='" + dump + "' '" + exe +
                            "' --gtest_also_run_disabled_tests"
                            " --gtest_filter=LayerDeterminism.DISABLED_DumpForThreadCountChild"
                            " >/dev/null 2>&1";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    std::ifstream f(dump, std::ios::binary);
    int64_t child_threads = 0, count = 0;
    f.read(reinterpret_cast<char*>(&child_threads), sizeof child_threads);
    f.read(reinterpret_cast<char*>(&count), sizeof count);
    ASSERT_TRUE(f.good()) << "no dump at " << dump;
    ASSERT_EQ(child_threads, threads) << "SONICMOE_CPU_THREADS not honoured";
    std::vector<double> there(static_cast<size_t>(count));
    f.read(reinterpret_cast<char*>(there.data()), static_cast<std::streamsize>(count * 8));
    ASSERT_TRUE(f.good());
    f.close();
    std::remove(dump.c_str());
    expect_bitwise_equal(here, there,
                         std::to_string(cpu::thread_count()) + " threads vs " +
                             std::to_string(threads));
  }
}

}  // namespace
}  // namespace sonicmoe::testing
