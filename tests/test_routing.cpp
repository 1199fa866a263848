// Routing metadata (routing_from_topk, routing_from_pairs) against a plain
// host computation, and the gate/up row permutations.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <sonicmoe/sonicmoe.hpp>

#include "device_buffer.hpp"
#include "routing_tensors.hpp"

namespace sonicmoe {
namespace {

using testing::Buffer;
using testing::DevTensor;
using testing::from_ints;
using testing::make;
using testing::to_ints;

const Device kCpu{};

using Meta = testing::RoutingMeta;
using testing::RoutingTensors;

// The expected metadata from the definition: a stable sort of pair indices
// by expert.
Meta expected_meta(const std::vector<int32_t>& token, const std::vector<int32_t>& expert,
                   int64_t T, int64_t E) {
  const int64_t N = static_cast<int64_t>(token.size());
  Meta m;
  m.counts.assign(E, 0);
  for (int32_t e : expert) ++m.counts[e];
  m.expert_offsets.assign(E + 1, 0);
  for (int64_t e = 0; e < E; ++e) m.expert_offsets[e + 1] = m.expert_offsets[e] + m.counts[e];
  m.token_offsets.assign(T + 1, 0);
  for (int32_t t : token) ++m.token_offsets[t + 1];
  for (int64_t t = 0; t < T; ++t) m.token_offsets[t + 1] += m.token_offsets[t];
  for (int64_t e = 0; e < E; ++e)
    for (int64_t i = 0; i < N; ++i)
      if (expert[i] == e) {
        m.sorted_pair.push_back(static_cast<int32_t>(i));
        m.sorted_token.push_back(token[i]);
      }
  m.pair_position.assign(N, -1);
  for (int64_t p = 0; p < N; ++p) m.pair_position[m.sorted_pair[p]] = static_cast<int32_t>(p);
  return m;
}

Meta run_topk(const std::vector<int32_t>& ids, int64_t T, int64_t K, int64_t E) {
  DevTensor t = make(kCpu, DType::I32, {T, K});
  t.buf->upload(ids.data());
  RoutingTensors out(kCpu, T, E, T * K);
  Buffer ws(kCpu, routing_workspace_size(kCpu, T, E, T * K));
  routing_from_topk(t.t, E, out.routing(), ws.workspace());
  return out.read();
}

Meta run_pairs(const std::vector<int32_t>& token, const std::vector<int32_t>& expert, int64_t T,
               int64_t E) {
  const int64_t N = static_cast<int64_t>(token.size());
  DevTensor tt = from_ints(kCpu, token), te = from_ints(kCpu, expert);
  RoutingTensors out(kCpu, T, E, N);
  Buffer ws(kCpu, routing_workspace_size(kCpu, T, E, N));
  routing_from_pairs(tt.t, te.t, T, E, out.routing(), ws.workspace());
  return out.read();
}

// Every property of the metadata, checked both against the expected arrays and
// structurally (so that a failure says which property broke).
void check_meta(const Meta& got, const std::vector<int32_t>& token,
                const std::vector<int32_t>& expert, int64_t T, int64_t E) {
  const int64_t N = static_cast<int64_t>(token.size());
  const Meta want = expected_meta(token, expert, T, E);
  EXPECT_EQ(got.counts, want.counts) << "expert_counts";
  EXPECT_EQ(got.expert_offsets, want.expert_offsets) << "expert_offsets (exclusive prefix sum)";
  EXPECT_EQ(got.token_offsets, want.token_offsets) << "token_offsets";
  EXPECT_EQ(got.sorted_pair, want.sorted_pair) << "sorted_pair (stable by pair index)";
  EXPECT_EQ(got.sorted_token, want.sorted_token) << "sorted_token";
  EXPECT_EQ(got.pair_position, want.pair_position) << "pair_position";

  ASSERT_EQ(got.expert_offsets.size(), static_cast<size_t>(E + 1));
  ASSERT_EQ(got.sorted_pair.size(), static_cast<size_t>(N));
  ASSERT_EQ(got.pair_position.size(), static_cast<size_t>(N));
  EXPECT_EQ(got.expert_offsets[0], 0);
  EXPECT_EQ(got.expert_offsets[E], N);
  for (int64_t e = 0; e < E; ++e) {
    EXPECT_EQ(got.expert_offsets[e + 1] - got.expert_offsets[e], got.counts[e]) << "expert " << e;
    for (int64_t p = got.expert_offsets[e]; p < got.expert_offsets[e + 1]; ++p) {
      const int32_t i = got.sorted_pair[p];
      ASSERT_GE(i, 0);
      ASSERT_LT(i, N);
      EXPECT_EQ(expert[i], e) << "position " << p;
      EXPECT_EQ(got.sorted_token[p], token[i]) << "position " << p;
      if (p > got.expert_offsets[e]) EXPECT_LT(got.sorted_pair[p - 1], i) << "not stable at " << p;
    }
  }
  for (int64_t p = 0; p < N; ++p) EXPECT_EQ(got.pair_position[got.sorted_pair[p]], p);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = got.token_offsets[t]; i < got.token_offsets[t + 1]; ++i)
      EXPECT_EQ(token[i], t) << "pair " << i;
}

std::vector<int32_t> topk_tokens(int64_t T, int64_t K) {
  std::vector<int32_t> t(T * K);
  for (int64_t i = 0; i < T * K; ++i) t[i] = static_cast<int32_t>(i / K);
  return t;
}

std::vector<int32_t> random_ids(int64_t count, int64_t E, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(E - 1));
  std::vector<int32_t> v(count);
  for (auto& x : v) x = dist(rng);
  return v;
}

// Distinct ids per token, like a real top-K.
std::vector<int32_t> random_topk(int64_t T, int64_t K, int64_t E, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> perm(E), ids;
  std::iota(perm.begin(), perm.end(), 0);
  for (int64_t t = 0; t < T; ++t) {
    std::shuffle(perm.begin(), perm.end(), rng);
    ids.insert(ids.end(), perm.begin(), perm.begin() + K);
  }
  return ids;
}

// ------------------------------------------------------------- top-K ------

TEST(RoutingFromTopk, RandomTopK) {
  const int64_t T = 57, K = 3, E = 7;
  const auto ids = random_topk(T, K, E, 1);
  check_meta(run_topk(ids, T, K, E), topk_tokens(T, K), ids, T, E);
}

TEST(RoutingFromTopk, LargeRandom) {
  const int64_t T = 1000, K = 8, E = 64;
  const auto ids = random_topk(T, K, E, 2);
  check_meta(run_topk(ids, T, K, E), topk_tokens(T, K), ids, T, E);
}

TEST(RoutingFromTopk, ExpertsWithNoPairs) {
  // Experts 0, 2, 5 (the first, a middle one, the last) get nothing.
  const int64_t T = 6, K = 2, E = 6;
  const std::vector<int32_t> ids = {1, 3, 4, 1, 3, 4, 4, 1, 1, 3, 3, 4};
  const Meta m = run_topk(ids, T, K, E);
  check_meta(m, topk_tokens(T, K), ids, T, E);
  EXPECT_EQ(m.counts, (std::vector<int32_t>{0, 4, 0, 4, 4, 0}));
  EXPECT_EQ(m.expert_offsets, (std::vector<int32_t>{0, 0, 4, 4, 8, 12, 12}));
}

TEST(RoutingFromTopk, AllPairsOnOneExpert) {
  const int64_t T = 9, K = 1, E = 5;
  const std::vector<int32_t> ids(T * K, 3);
  const Meta m = run_topk(ids, T, K, E);
  check_meta(m, topk_tokens(T, K), ids, T, E);
  EXPECT_EQ(m.expert_offsets, (std::vector<int32_t>{0, 0, 0, 0, 9, 9}));
  std::vector<int32_t> identity(T);
  std::iota(identity.begin(), identity.end(), 0);
  EXPECT_EQ(m.sorted_pair, identity);
  EXPECT_EQ(m.pair_position, identity);
}

TEST(RoutingFromTopk, KEqualsE) {
  const int64_t T = 11, E = 5, K = E;
  const auto ids = random_topk(T, K, E, 3);
  const Meta m = run_topk(ids, T, K, E);
  check_meta(m, topk_tokens(T, K), ids, T, E);
  for (int64_t e = 0; e < E; ++e) {
    EXPECT_EQ(m.counts[e], T);
    // Each expert sees every token once, in token order.
    for (int64_t j = 0; j < T; ++j) EXPECT_EQ(m.sorted_token[m.expert_offsets[e] + j], j);
  }
}

TEST(RoutingFromTopk, SingleToken) {
  const std::vector<int32_t> ids = {4, 0, 2};
  const Meta m = run_topk(ids, 1, 3, 6);
  check_meta(m, {0, 0, 0}, ids, 1, 6);
  EXPECT_EQ(m.sorted_pair, (std::vector<int32_t>{1, 2, 0}));
  EXPECT_EQ(m.pair_position, (std::vector<int32_t>{2, 0, 1}));
  EXPECT_EQ(m.token_offsets, (std::vector<int32_t>{0, 3}));
}

TEST(RoutingFromTopk, RepeatedExpertWithinAToken) {
  // Not a real top-K, but accepted: the stable order must still hold.
  const int64_t T = 4, K = 3, E = 3;
  const std::vector<int32_t> ids = {2, 2, 0, 1, 1, 1, 0, 2, 0, 2, 2, 2};
  check_meta(run_topk(ids, T, K, E), topk_tokens(T, K), ids, T, E);
}

TEST(RoutingFromTopk, SingleExpert) {
  const std::vector<int32_t> ids(5, 0);
  check_meta(run_topk(ids, 5, 1, 1), topk_tokens(5, 1), ids, 5, 1);
}

// ------------------------------------------------------------- pairs ------

TEST(RoutingFromPairs, TokensWithZeroPairs) {
  // Token 0, 2, 5 and 7 (the last) have no pairs; token 1 has three, 6 has one.
  const int64_t T = 8, E = 4;
  const std::vector<int32_t> token = {1, 1, 1, 3, 3, 4, 6};
  const std::vector<int32_t> expert = {3, 0, 2, 2, 0, 3, 3};
  const Meta m = run_pairs(token, expert, T, E);
  check_meta(m, token, expert, T, E);
  EXPECT_EQ(m.token_offsets, (std::vector<int32_t>{0, 0, 3, 3, 5, 6, 6, 7, 7}));
}

TEST(RoutingFromPairs, RandomVariableExpertsPerToken) {
  const int64_t T = 200, E = 13;
  std::mt19937_64 rng(7);
  std::uniform_int_distribution<int> per_token(0, 5);
  std::vector<int32_t> token, expert;
  for (int64_t t = 0; t < T; ++t) {
    const auto ids = random_ids(per_token(rng), E, static_cast<uint64_t>(t + 100));
    for (int32_t e : ids) {
      token.push_back(static_cast<int32_t>(t));
      expert.push_back(e);
    }
  }
  check_meta(run_pairs(token, expert, T, E), token, expert, T, E);
}

TEST(RoutingFromPairs, NoPairs) {
  const int64_t T = 4, E = 3;
  const Meta m = run_pairs({}, {}, T, E);
  check_meta(m, {}, {}, T, E);
  EXPECT_EQ(m.counts, (std::vector<int32_t>{0, 0, 0}));
  EXPECT_EQ(m.expert_offsets, (std::vector<int32_t>{0, 0, 0, 0}));
  EXPECT_EQ(m.token_offsets, (std::vector<int32_t>{0, 0, 0, 0, 0}));
}

TEST(RoutingFromPairs, AllPairsOnOneExpertAndOneToken) {
  const int64_t T = 3, E = 4;
  const std::vector<int32_t> token(6, 2), expert(6, 0);
  const Meta m = run_pairs(token, expert, T, E);
  check_meta(m, token, expert, T, E);
  EXPECT_EQ(m.token_offsets, (std::vector<int32_t>{0, 0, 0, 6}));
}

TEST(RoutingFromPairs, SingleToken) {
  const std::vector<int32_t> token = {0, 0}, expert = {1, 0};
  check_meta(run_pairs(token, expert, 1, 2), token, expert, 1, 2);
}

TEST(RoutingFromPairs, AgreesWithTopkOnTopkShapedPairs) {
  const int64_t T = 33, K = 4, E = 9;
  const auto ids = random_topk(T, K, E, 11);
  const Meta a = run_topk(ids, T, K, E);
  const Meta b = run_pairs(topk_tokens(T, K), ids, T, E);
  EXPECT_EQ(a.counts, b.counts);
  EXPECT_EQ(a.expert_offsets, b.expert_offsets);
  EXPECT_EQ(a.token_offsets, b.token_offsets);
  EXPECT_EQ(a.sorted_token, b.sorted_token);
  EXPECT_EQ(a.sorted_pair, b.sorted_pair);
  EXPECT_EQ(a.pair_position, b.pair_position);
}

TEST(RoutingWorkspace, SizeIsEnoughAndCallsWriteNothingOutside) {
  // The routing calls may use exactly the workspace they report: surround it
  // with guard bytes that must survive.
  const int64_t T = 20, K = 2, E = 10, N = T * K;
  const size_t need = routing_workspace_size(kCpu, T, E, N);
  Buffer big(kCpu, need + 512);
  std::memset(big.get(), 0x5a, need + 512);
  auto* base = static_cast<unsigned char*>(big.get()) + 256;
  const auto ids = random_topk(T, K, E, 5);
  DevTensor t = make(kCpu, DType::I32, {T, K});
  t.buf->upload(ids.data());
  RoutingTensors out(kCpu, T, E, N);
  routing_from_topk(t.t, E, out.routing(), Workspace{base, need});
  check_meta(out.read(), topk_tokens(T, K), ids, T, E);
  const auto* p = static_cast<unsigned char*>(big.get());
  for (size_t i = 0; i < 256; ++i) ASSERT_EQ(p[i], 0x5a) << "guard before, byte " << i;
  for (size_t i = 256 + need; i < need + 512; ++i)
    ASSERT_EQ(p[i], 0x5a) << "guard after, byte " << i;
}

// ------------------------------------------------------- gate / up ---------

template <class Bits>
std::vector<Bits> distinct_bits(size_t count, Bits base) {
  std::vector<Bits> v(count);
  // Finite values in both bf16 and f32 bit patterns; all distinct.
  for (size_t i = 0; i < count; ++i) v[i] = static_cast<Bits>(base + i);
  return v;
}

template <class Bits>
std::vector<Bits> download(const DevTensor& d) {
  std::vector<Bits> v(static_cast<size_t>(d.t.numel()));
  d.buf->download(v.data());
  return v;
}

struct PermuteCase {
  DType dtype;
  int64_t E, n, d;  // d == 0: the 2-D [E, 2n] bias layout
};

template <class Bits>
void check_permutation(const PermuteCase& c) {
  const int64_t rows = 2 * c.n, cols = c.d == 0 ? 1 : c.d;
  auto shaped = [&](DType dt) {
    return c.d == 0 ? make(kCpu, dt, {c.E, rows}) : make(kCpu, dt, {c.E, rows, c.d});
  };
  DevTensor src = shaped(c.dtype), inter = shaped(c.dtype), back = shaped(c.dtype);
  const auto in = distinct_bits<Bits>(static_cast<size_t>(c.E * rows * cols), Bits(0x3c00));
  src.buf->upload(in.data());

  interleave_gate_up(src.t, inter.t);
  const auto mid = download<Bits>(inter);
  for (int64_t e = 0; e < c.E; ++e)
    for (int64_t j = 0; j < c.n; ++j)
      for (int64_t k = 0; k < cols; ++k) {
        const auto at = [&](int64_t r) { return static_cast<size_t>((e * rows + r) * cols + k); };
        ASSERT_EQ(mid[at(2 * j)], in[at(j)]) << "gate j=" << j << " e=" << e << " col " << k;
        ASSERT_EQ(mid[at(2 * j + 1)], in[at(c.n + j)])
            << "up j=" << j << " e=" << e << " col " << k;
      }

  deinterleave_gate_up(inter.t, back.t);
  EXPECT_EQ(download<Bits>(back), in) << "deinterleave(interleave(x)) != x";
  // The source is read-only.
  EXPECT_EQ(download<Bits>(src), in);
}

TEST(RoutingGateUp, InterleaveAndDeinterleave) {
  const std::vector<PermuteCase> cases = {
      {DType::BF16, 3, 4, 8},  {DType::BF16, 2, 5, 24}, {DType::BF16, 4, 8, 0},
      {DType::BF16, 1, 1, 8},  {DType::F32, 3, 4, 8},   {DType::F32, 2, 7, 3},
      {DType::F32, 5, 6, 0},   {DType::F32, 1, 1, 0},   {DType::BF16, 8, 16, 64},
  };
  for (const PermuteCase& c : cases) {
    SCOPED_TRACE(std::string(to_string(c.dtype)) + " E=" + std::to_string(c.E) +
                 " n=" + std::to_string(c.n) + " d=" + std::to_string(c.d));
    if (c.dtype == DType::BF16) check_permutation<uint16_t>(c);
    else check_permutation<uint32_t>(c);
  }
}

TEST(RoutingGateUp, DeinterleaveIsTheInverseOnArbitraryInput) {
  // deinterleave first, then interleave, also gives back the input.
  const int64_t E = 2, n = 3, d = 8;
  DevTensor a = make(kCpu, DType::BF16, {E, 2 * n, d}), b = make(kCpu, DType::BF16, {E, 2 * n, d}),
            c = make(kCpu, DType::BF16, {E, 2 * n, d});
  const auto in = distinct_bits<uint16_t>(static_cast<size_t>(E * 2 * n * d), uint16_t(0x4000));
  a.buf->upload(in.data());
  deinterleave_gate_up(a.t, b.t);
  const auto mid = download<uint16_t>(b);
  // Concatenated row j (gate) comes from interleaved row 2j, row n+j from 2j+1.
  for (int64_t e = 0; e < E; ++e)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t k = 0; k < d; ++k) {
        EXPECT_EQ(mid[(e * 2 * n + j) * d + k], in[(e * 2 * n + 2 * j) * d + k]);
        EXPECT_EQ(mid[(e * 2 * n + n + j) * d + k], in[(e * 2 * n + 2 * j + 1) * d + k]);
      }
  interleave_gate_up(b.t, c.t);
  EXPECT_EQ(download<uint16_t>(c), in);
}

}  // namespace
}  // namespace sonicmoe
