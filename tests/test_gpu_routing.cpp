// The GPU router and routing metadata against the CPU reference, both through
// the public API (CUDA tensors vs CPU tensors).
//
// Exact: expert ids and every metadata array. Values: scores within 1e-6
// relative, dlogits within 1e-5 of the largest |dlogit| (f32) or 2^-8 of it
// / one bf16 rounding step (bf16). One allowance on top: without
// renormalisation, SoftmaxThenTopK divides by a sum over all E, which the
// reference accumulates in order in float, an error of up to ~E * 2^-24
// (2e-6 at E = 1000 on these inputs) that the GPU does not share. The tests
// measure that error row by row and add it to the tolerance.
//
// Behaviour the CPU backend rejects (out-of-range ids) is checked against
// the contract in src/kernels/routing.cuh: the pair or slot is dropped.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include <sonicmoe/bfloat16.hpp>
#include <sonicmoe/sonicmoe.hpp>

#include "device_buffer.hpp"
#include "routing_tensors.hpp"

namespace sonicmoe::testing {
namespace {

const Device kCpu{DeviceType::CPU, 0};
const Device kGpu{DeviceType::CUDA, 0};
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// ------------------------------------------------------------------ helpers --

DevTensor ints(Device dev, const std::vector<int32_t>& v, std::initializer_list<int64_t> shape) {
  DevTensor d = from_ints(dev, v);
  d.t = Tensor::contiguous(d.buf->get(), DType::I32, shape, dev);
  return d;
}

std::vector<uint8_t> bytes_of(const DevTensor& d) {
  std::vector<uint8_t> b(d.buf->bytes());
  d.buf->download(b.data());
  return b;
}

// First mismatch only: these arrays run to half a million entries.
template <class T>
void expect_same(const std::vector<T>& gpu, const std::vector<T>& ref, const std::string& what) {
  ASSERT_EQ(gpu.size(), ref.size()) << what;
  for (size_t i = 0; i < gpu.size(); ++i)
    if (gpu[i] != ref[i]) {
      ADD_FAILURE() << what << ": first difference at " << i << ": gpu " << gpu[i] << ", expected "
                    << ref[i];
      return;
    }
}

// What the library sees of a logit.
float stored(double v, DType dtype) {
  return dtype == DType::BF16 ? round_bf16(static_cast<float>(v)) : static_cast<float>(v);
}

// Relative rounding error of the reference's softmax denominator for one row
// (cpu::scores_row: std::max chain, then an in-order float sum of std::exp).
double reference_sum_error(const std::vector<double>& logits, int64_t row, int64_t E, DType dtype) {
  std::vector<float> z(E);
  for (int64_t e = 0; e < E; ++e) z[e] = stored(logits[row * E + e], dtype);
  float m = z[0];
  for (float v : z) m = std::max(m, v);
  float sum = 0;
  double exact = 0;
  for (float v : z) {
    const float x = std::exp(v - m);
    sum += x;
    exact += x;
  }
  return exact > 0 && std::isfinite(exact) ? std::fabs(sum - exact) / exact : 0.0;
}

std::vector<double> normal(size_t n, double stddev, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> d(0.0, stddev);
  std::vector<double> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// ------------------------------------------------------------------- router --

struct RouterCase {
  int64_t T, E, K;
  RouterOrder order;
  bool renormalize;
  DType dtype;
};

std::string describe(const RouterCase& c) {
  return "T=" + std::to_string(c.T) + " E=" + std::to_string(c.E) + " K=" + std::to_string(c.K) +
         " " + to_string(c.order) + (c.renormalize ? " renorm" : "") + " " + to_string(c.dtype);
}

bool sum_error_applies(const RouterCase& c) {
  return c.order == RouterOrder::SoftmaxThenTopK && !c.renormalize;
}

struct Forward {
  DevTensor logits, scores, ids;
};

Forward run_forward(Device dev, const RouterCase& c, const std::vector<double>& logits) {
  Forward f{from_doubles(dev, c.dtype, logits, {c.T, c.E}), make(dev, DType::F32, {c.T, c.K}),
            make(dev, DType::I32, {c.T, c.K})};
  router_forward({f.logits.t, c.K, c.order, c.renormalize, f.scores.t, f.ids.t});
  return f;
}

struct Backward {
  DevTensor logits, ids, dscores, dlogits;
};

Backward run_backward(Device dev, const RouterCase& c, const std::vector<double>& logits,
                      const std::vector<int32_t>& ids, const std::vector<double>& dscores) {
  Backward b{from_doubles(dev, c.dtype, logits, {c.T, c.E}), ints(dev, ids, {c.T, c.K}),
             from_doubles(dev, DType::F32, dscores, {c.T, c.K}), make(dev, c.dtype, {c.T, c.E})};
  router_backward({b.logits.t, b.ids.t, b.dscores.t, c.order, c.renormalize, b.dlogits.t});
  return b;
}

// Per element: |gpu - cpu| <= (1e-6 + the row's reference sum error) |cpu|;
// NaN exactly where the reference has NaN.
void expect_scores_near(const RouterCase& c, const std::vector<double>& logits,
                        const std::vector<double>& gpu, const std::vector<double>& cpu) {
  for (int64_t t = 0; t < c.T; ++t) {
    const double tol = 1e-6 + (sum_error_applies(c) ? reference_sum_error(logits, t, c.E, c.dtype) : 0);
    for (int64_t k = 0; k < c.K; ++k) {
      const double g = gpu[t * c.K + k], r = cpu[t * c.K + k];
      const bool ok = std::isnan(r) ? std::isnan(g)
                                    : std::fabs(g - r) <= tol * std::max(std::fabs(r), 1e-38);
      if (!ok) {
        ADD_FAILURE() << describe(c) << ": score [" << t << ", " << k << "]: gpu " << g
                      << ", cpu " << r << ", tolerance " << tol << " relative";
        return;
      }
    }
  }
}

// One bf16 rounding step at |x|.
double bf16_step(double x) {
  if (x == 0 || !std::isfinite(x)) return 0;
  int exp = 0;
  std::frexp(x, &exp);  // |x| in [2^(exp-1), 2^exp)
  return std::ldexp(1.0, exp - 8);
}

void expect_gradient_near(const RouterCase& c, const std::vector<double>& logits,
                          const std::vector<double>& gpu, const std::vector<double>& cpu) {
  ASSERT_EQ(gpu.size(), cpu.size());
  double ref_max = 0, slack = 0;
  for (double r : cpu)
    if (std::isfinite(r)) ref_max = std::max(ref_max, std::fabs(r));
  if (sum_error_applies(c))
    for (int64_t t = 0; t < c.T; ++t)
      slack = std::max(slack, reference_sum_error(logits, t, c.E, c.dtype));
  // An absolute floor: with K = 1 and renormalisation every score is 1 and
  // the exact gradient is 0, which the CPU reproduces and the GPU (reciprocal
  // instead of division) misses by float rounding of the O(1) dscores.
  constexpr double kFloor = 1e-6;
  for (size_t i = 0; i < gpu.size(); ++i) {
    const double g = gpu[i], r = cpu[i];
    const double allowed = std::max(kFloor, c.dtype == DType::F32
                                                ? (1e-5 + slack) * ref_max
                                                : std::max(std::ldexp(ref_max, -8), bf16_step(r)));
    const bool ok = std::isnan(r) ? std::isnan(g) : std::fabs(g - r) <= allowed;
    if (!ok) {
      ADD_FAILURE() << describe(c) << ": dlogits[" << i / c.E << ", " << i % c.E << "]: gpu " << g
                    << ", cpu " << r << ", allowed difference " << allowed;
      return;
    }
  }
}

// Forward on both devices (ids exact, scores close), then backward from the
// reference's ids on both devices.
void check_router(const RouterCase& c, const std::vector<double>& logits, uint64_t seed) {
  SCOPED_TRACE(describe(c));
  const Forward cpu = run_forward(kCpu, c, logits);
  const Forward gpu = run_forward(kGpu, c, logits);
  const std::vector<int32_t> ids = to_ints(cpu.ids);
  expect_same(to_ints(gpu.ids), ids, describe(c) + ": expert_ids");
  expect_scores_near(c, logits, to_doubles(gpu.scores), to_doubles(cpu.scores));

  const std::vector<double> ds = normal(static_cast<size_t>(c.T * c.K), 1.0, seed + 1);
  const Backward cpu_b = run_backward(kCpu, c, logits, ids, ds);
  const Backward gpu_b = run_backward(kGpu, c, logits, ids, ds);
  expect_gradient_near(c, logits, to_doubles(gpu_b.dlogits), to_doubles(cpu_b.dlogits));
}

struct Mode {
  RouterOrder order;
  bool renormalize;
};
constexpr Mode kModes[] = {{RouterOrder::TopKThenSoftmax, false},
                           {RouterOrder::SoftmaxThenTopK, false},
                           {RouterOrder::SoftmaxThenTopK, true}};

std::vector<int64_t> ks_for(int64_t E) {
  std::vector<int64_t> ks;
  for (int64_t k : {int64_t{1}, int64_t{2}, int64_t{8}, E <= 64 ? E : int64_t{0}})
    if (k >= 1 && k <= E && std::find(ks.begin(), ks.end(), k) == ks.end()) ks.push_back(k);
  return ks;
}

class GpuRouterMatrix : public ::testing::TestWithParam<std::tuple<int64_t, DType>> {};

TEST_P(GpuRouterMatrix, ForwardAndBackwardMatchCpu) {
  if (sonicmoe::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const auto [E, dtype] = GetParam();
  uint64_t seed = 100 * static_cast<uint64_t>(E);
  for (int64_t K : ks_for(E))
    for (int64_t T : {1, 37, 4096})
      for (const Mode& m : kModes) {
        const RouterCase c{T, E, K, m.order, m.renormalize, dtype};
        // bf16 rounding of N(0, 2) logits leaves many exact ties in a row.
        ++seed;
        check_router(c, normal(static_cast<size_t>(T * E), 2.0, seed), seed);
      }
}

// Prefix and suite both match the filter GpuRouter*.
INSTANTIATE_TEST_SUITE_P(
    GpuRouter, GpuRouterMatrix,
    ::testing::Combine(::testing::Values(1, 7, 8, 64, 128, 200, 256, 512, 1000),
                       ::testing::Values(DType::F32, DType::BF16)),
    [](const auto& info) {
      return "E" + std::to_string(std::get<0>(info.param)) + "_" +
             to_string(std::get<1>(info.param));
    });

// Rows wider than the register path (E > 1024) stream from memory.
TEST(GpuRouterWide, StreamedRowsMatchCpu) {
  if (sonicmoe::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  uint64_t seed = 7;
  for (int64_t E : {1025, 2048, 4096})
    for (int64_t K : {1, 8, 64})
      for (DType dtype : {DType::F32, DType::BF16})
        for (const Mode& m : kModes) {
          const RouterCase c{37, E, K, m.order, m.renormalize, dtype};
          ++seed;
          check_router(c, normal(static_cast<size_t>(37 * E), 2.0, seed), seed);
        }
}

TEST(GpuRouterTies, EqualLogitsPickTheLowestIds) {
  if (sonicmoe::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  for (int64_t E : {8, 300, 2000})
    for (int64_t K : {1, 5, 8})
      for (const Mode& m : kModes) {
        const RouterCase c{3, E, K, m.order, m.renormalize, DType::F32};
        SCOPED_TRACE(describe(c));
        const std::vector<double> logits(static_cast<size_t>(c.T * E), 0.75);
        const Forward gpu = run_forward(kGpu, c, logits);
        const std::vector<int32_t> ids = to_ints(gpu.ids);
        for (int64_t t = 0; t < c.T; ++t)
          for (int64_t k = 0; k < K; ++k) ASSERT_EQ(ids[t * K + k], k) << "row " << t;
        check_router(c, logits, 3);
      }
}

// NaN ranks below -inf, -0 ties with +0 (lower index first), +inf on top.
TEST(GpuRouterTies, SpecialValuesRankLikeTheReference) {
  if (sonicmoe::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const std::vector<double> specials = {kNaN, -kInf, kInf, -0.0, 0.0, 1.0, -1.0};
  for (int64_t E : {8, 40, 1500}) {
    std::mt19937_64 rng(static_cast<uint64_t>(E));
    const int64_t T = 64;
    std::vector<double> logits = normal(static_cast<size_t>(T * E), 1.0, 11);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t e = 0; e < E; ++e)
        if (rng() % 3 != 0) logits[t * E + e] = specials[rng() % (t % 2 ? 5 : specials.size())];
    for (int64_t K : {1, 3, 8})
      for (DType dtype : {DType::F32, DType::BF16})
        for (const Mode& m : kModes) {
          const RouterCase c{T, E, K, m.order, m.renormalize, dtype};
          SCOPED_TRACE(describe(c));
          const Forward cpu = run_forward(kCpu, c, logits);
          const Forward gpu = run_forward(kGpu, c, logits);
          expect_same(to_ints(gpu.ids), to_ints(cpu.ids), describe(c) + ": expert_ids");
          expect_scores_near(c, logits, to_doubles(gpu.scores), to_doubles(cpu.scores));
        }
  }
}

// Arbitrary ids, repeats included: an expert chosen twice sums both slots.
TEST(GpuRouterBackward, RepeatedIdsSumLikeTheReference) {
  if (sonicmoe::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  for (int64_t E : {4, 64, 2000})
    for (const Mode& m : kModes)
      for (DType dtype : {DType::F32, DType::BF16}) {
        const RouterCase c{37, E, std::min<int64_t>(E, 6), m.order, m.renormalize, dtype};
        SCOPED_TRACE(describe(c));
        std::mt19937_64 rng(static_cast<uint64_t>(E));
        std::vector<int32_t> ids(static_cast<size_t>(c.T * c.K));
        for (auto& id : ids) id = static_cast<int32_t>(rng() % (E < 8 ? 2 : E));
        const std::vector<double> logits = normal(static_cast<size_t>(c.T * E), 2.0, 5);
        const std::vector<double> ds = normal(ids.size(), 1.0, 6);
        const Backward cpu = run_backward(kCpu, c, logits, ids, ds);
        const Backward gpu = run_backward(kGpu, c, logits, ids, ds);
        expect_gradient_near(c, logits, to_doubles(gpu.dlogits), to_doubles(cpu.dlogits));
      }
}

// The contract (routing.cuh): a slot whose id is outside [0, E) is absent.
// Equivalent reference: the same rows without that slot.
TEST(GpuRouterBackward, OutOfRangeIdIsAnAbsentSlot) {
  if (sonicmoe::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t T = 37, E = 64;
  const int32_t bad[] = {-1, static_cast<int32_t>(E), 1 << 30, std::numeric_limits<int32_t>::min()};
  std::vector<int32_t> ids3, ids2;
  std::vector<double> ds3 = normal(T * 3, 1.0, 9), ds2;
  for (int64_t t = 0; t < T; ++t) {
    const auto a = static_cast<int32_t>((7 * t) % E), b = static_cast<int32_t>((7 * t + 3) % E);
    ids3.insert(ids3.end(), {a, bad[t % 4], b});
    ids2.insert(ids2.end(), {a, b});
    ds2.insert(ds2.end(), {ds3[t * 3], ds3[t * 3 + 2]});
  }
  const std::vector<double> logits = normal(static_cast<size_t>(T * E), 2.0, 10);
  for (const Mode& m : kModes) {
    const RouterCase c3{T, E, 3, m.order, m.renormalize, DType::F32};
    const RouterCase c2{T, E, 2, m.order, m.renormalize, DType::F32};
    SCOPED_TRACE(describe(c3));
    const Backward gpu = run_backward(kGpu, c3, logits, ids3, ds3);
    const Backward cpu = run_backward(kCpu, c2, logits, ids2, ds2);
    expect_gradient_near(c2, logits, to_doubles(gpu.dlogits), to_doubles(cpu.dlogits));
  }
}

TEST(GpuRouterDeterminism, RunTwiceSameBytes) {
  if (sonicmoe::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  for (const Mode& m : kModes)
    for (int64_t E : {512, 3000}) {
      const RouterCase c{4096, E, 8, m.order, m.renormalize, DType::BF16};
      SCOPED_TRACE(describe(c));
      const std::vector<double> logits = normal(static_cast<size_t>(c.T * E), 2.0, 12);
      const Forward a = run_forward(kGpu, c, logits), b = run_forward(kGpu, c, logits);
      EXPECT_EQ(bytes_of(a.scores), bytes_of(b.scores));
      EXPECT_EQ(bytes_of(a.ids), bytes_of(b.ids));
      const std::vector<int32_t> ids = to_ints(a.ids);
      const std::vector<double> ds = normal(ids.size(), 1.0, 13);
      const Backward x = run_backward(kGpu, c, logits, ids, ds);
      const Backward y = run_backward(kGpu, c, logits, ids, ds);
      EXPECT_EQ(bytes_of(x.dlogits), bytes_of(y.dlogits));
    }
}

// ------------------------------------------------------------------ routing --

using Meta = RoutingMeta;

std::vector<std::vector<uint8_t>> bytes_of(const RoutingTensors& r) {
  std::vector<std::vector<uint8_t>> b;
  for (const DevTensor* t : r.all()) b.push_back(bytes_of(*t));
  return b;
}

RoutingTensors topk_routing(Device dev, const std::vector<int32_t>& ids, int64_t T, int64_t K,
                            int64_t E) {
  RoutingTensors out(dev, T, E, T * K);
  const DevTensor in = ints(dev, ids, {T, K});
  const Buffer ws(dev, routing_workspace_size(dev, T, E, T * K));
  routing_from_topk(in.t, E, out.routing(), ws.workspace());
  return out;
}

RoutingTensors pair_routing(Device dev, const std::vector<int32_t>& tokens,
                            const std::vector<int32_t>& experts, int64_t T, int64_t E) {
  const auto N = static_cast<int64_t>(tokens.size());
  RoutingTensors out(dev, T, E, N);
  const DevTensor tok = ints(dev, tokens, {N}), exp = ints(dev, experts, {N});
  const Buffer ws(dev, routing_workspace_size(dev, T, E, N));
  routing_from_pairs(tok.t, exp.t, T, E, out.routing(), ws.workspace());
  return out;
}

void expect_same_meta(const Meta& gpu, const Meta& ref, const std::string& what) {
  expect_same(gpu.counts, ref.counts, what + ": expert_counts");
  expect_same(gpu.expert_offsets, ref.expert_offsets, what + ": expert_offsets");
  expect_same(gpu.token_offsets, ref.token_offsets, what + ": token_offsets");
  expect_same(gpu.sorted_token, ref.sorted_token, what + ": sorted_token");
  expect_same(gpu.sorted_pair, ref.sorted_pair, what + ": sorted_pair");
  expect_same(gpu.pair_position, ref.pair_position, what + ": pair_position");
}

// The GPU contract for pairs with an id out of range (the CPU backend throws
// instead): such a pair is dropped from the counts and the order
// (pair_position -1); a pair with a bad token is not counted in
// token_offsets either; positions past expert_offsets[E] hold 0.
Meta expected_with_drops(const std::vector<int32_t>& tokens, const std::vector<int32_t>& experts,
                         int64_t T, int64_t E) {
  const size_t N = tokens.size();
  Meta m{std::vector<int32_t>(E, 0), std::vector<int32_t>(E + 1, 0),
         std::vector<int32_t>(T + 1, 0), std::vector<int32_t>(N, 0), std::vector<int32_t>(N, 0),
         std::vector<int32_t>(N, -1)};
  auto token_ok = [&](size_t i) { return tokens[i] >= 0 && tokens[i] < T; };
  auto kept = [&](size_t i) { return token_ok(i) && experts[i] >= 0 && experts[i] < E; };
  for (size_t i = 0; i < N; ++i) {
    if (token_ok(i)) ++m.token_offsets[tokens[i] + 1];
    if (kept(i)) ++m.counts[experts[i]];
  }
  std::partial_sum(m.token_offsets.begin(), m.token_offsets.end(), m.token_offsets.begin());
  std::partial_sum(m.counts.begin(), m.counts.end(), m.expert_offsets.begin() + 1);
  std::vector<int32_t> cursor(m.expert_offsets.begin(), m.expert_offsets.end() - 1);
  for (size_t i = 0; i < N; ++i) {
    if (!kept(i)) continue;
    const int32_t p = cursor[experts[i]]++;
    m.sorted_token[p] = tokens[i];
    m.sorted_pair[p] = static_cast<int32_t>(i);
    m.pair_position[i] = p;
  }
  return m;
}

// K distinct experts per token, uniformly (a partial Fisher-Yates per row).
std::vector<int32_t> distinct_ids(int64_t T, int64_t K, int64_t E, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> perm(E), ids;
  std::iota(perm.begin(), perm.end(), 0);
  ids.reserve(static_cast<size_t>(T * K));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < K; ++k) {
      std::swap(perm[k], perm[k + static_cast<int64_t>(rng() % (E - k))]);
      ids.push_back(perm[k]);
    }
  return ids;
}

void check_topk(const std::vector<int32_t>& ids, int64_t T, int64_t K, int64_t E) {
  const std::string what =
      "routing_from_topk T=" + std::to_string(T) + " K=" + std::to_string(K) + " E=" + std::to_string(E);
  expect_same_meta(topk_routing(kGpu, ids, T, K, E).read(), topk_routing(kCpu, ids, T, K, E).read(),
                   what);
}

void check_pairs(const std::vector<int32_t>& tokens, const std::vector<int32_t>& experts,
                 int64_t T, int64_t E) {
  const std::string what = "routing_from_pairs T=" + std::to_string(T) +
                           " N=" + std::to_string(tokens.size()) + " E=" + std::to_string(E);
  expect_same_meta(pair_routing(kGpu, tokens, experts, T, E).read(),
                   pair_routing(kCpu, tokens, experts, T, E).read(), what);
}

TEST(GpuRoutingTopK, MatchesCpu) {
  if (sonicmoe::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  // Includes several chunks per launch (N > 2048), E past the shared-memory
  // histogram (> 12288) and chunks of several tiles (E > 8192).
  const int64_t shapes[][3] = {{1, 1, 1},         {37, 1, 1},      {37, 2, 7},
                               {37, 7, 7},        {37, 64, 64},    {4096, 8, 64},
                               {4096, 8, 512},    {4096, 8, 1000}, {32768, 16, 512},
                               {8192, 4, 20000},  {1024, 8, 65536}};
  uint64_t seed = 1;
  for (const auto& s : shapes) check_topk(distinct_ids(s[0], s[1], s[2], ++seed), s[0], s[1], s[2]);
}

TEST(GpuRoutingTopK, IdleAndHotExperts) {
  if (sonicmoe::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t T = 5000, K = 4, E = 64;
  // Experts 0 and 63 get no pairs; every token's first pick is expert 3.
  std::vector<int32_t> ids = distinct_ids(T, K, E - 3, 21);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t k = 0; k < K; ++k) {
      int32_t& id = ids[t * K + k];
      id += 1;           // [1, 61]
      if (id >= 3) ++id;  // [1, 62] without 3
    }
    ids[t * K] = 3;
  }
  check_topk(ids, T, K, E);
}

TEST(GpuRoutingTopK, AllPairsOnOneExpert) {
  if (sonicmoe::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  for (int64_t E : {1, 8, 512}) {
    const int64_t T = 9000;
    check_topk(std::vector<int32_t>(T, static_cast<int32_t>(E - 1)), T, 1, E);
  }
}

TEST(GpuRoutingTopK, OutOfRangeIdsAreDropped) {
  if (sonicmoe::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t T = 3000, K = 2, E = 16;
  std::vector<int32_t> ids = distinct_ids(T, K, E, 22), tokens(T * K);
  for (int64_t i = 0; i < T * K; ++i) tokens[i] = static_cast<int32_t>(i / K);
  for (int64_t i = 5; i < T * K; i += 97) ids[i] = i % 2 ? -3 : static_cast<int32_t>(E);
  const Meta gpu = topk_routing(kGpu, ids, T, K, E).read();
  expect_same_meta(gpu, expected_with_drops(tokens, ids, T, E), "routing_from_topk with drops");
}

// Tokens with 0 to 5 pairs each; a token may list an expert twice.
void general_pairs(int64_t T, int64_t E, uint64_t seed, std::vector<int32_t>& tokens,
                   std::vector<int32_t>& experts) {
  std::mt19937_64 rng(seed);
  tokens.clear();
  experts.clear();
  for (int64_t t = 0; t < T; ++t)
    for (uint64_t j = rng() % 6; j > 0; --j) {
      tokens.push_back(static_cast<int32_t>(t));
      experts.push_back(static_cast<int32_t>(rng() % E));
    }
}

TEST(GpuRoutingPairs, MatchesCpu) {
  if (sonicmoe::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t shapes[][2] = {{1, 1}, {37, 8}, {4096, 200}, {20000, 512}, {3000, 13000}};
  uint64_t seed = 30;
  for (const auto& s : shapes) {
    std::vector<int32_t> tokens, experts;
    general_pairs(s[0], s[1], ++seed, tokens, experts);
    check_pairs(tokens, experts, s[0], s[1]);
  }
}

TEST(GpuRoutingPairs, NoPairs) {
  if (sonicmoe::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  for (int64_t E : {1, 5}) check_pairs({}, {}, 7, E);
}

TEST(GpuRoutingPairs, OutOfRangeIdsAreDropped) {
  if (sonicmoe::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t T = 4000, E = 32;
  std::vector<int32_t> tokens, experts;
  general_pairs(T, E, 40, tokens, experts);
  for (size_t i = 3; i < experts.size(); i += 101) experts[i] = i % 2 ? -1 : static_cast<int32_t>(E);
  tokens.back() = static_cast<int32_t>(T);  // still sorted, but no such token
  const Meta gpu = pair_routing(kGpu, tokens, experts, T, E).read();
  expect_same_meta(gpu, expected_with_drops(tokens, experts, T, E), "routing_from_pairs with drops");
  EXPECT_LT(gpu.expert_offsets[E], static_cast<int32_t>(tokens.size()));
}

TEST(GpuRoutingDeterminism, RunTwiceSameBytes) {
  if (sonicmoe::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t T = 32768, K = 16, E = 512;
  const std::vector<int32_t> ids = distinct_ids(T, K, E, 50);
  EXPECT_EQ(bytes_of(topk_routing(kGpu, ids, T, K, E)),
            bytes_of(topk_routing(kGpu, ids, T, K, E)));
  std::vector<int32_t> tokens, experts;
  general_pairs(20000, 20000, 51, tokens, experts);
  EXPECT_EQ(bytes_of(pair_routing(kGpu, tokens, experts, 20000, 20000)),
            bytes_of(pair_routing(kGpu, tokens, experts, 20000, 20000)));
}

}  // namespace
}  // namespace sonicmoe::testing
