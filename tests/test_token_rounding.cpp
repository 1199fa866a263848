// Token rounding (round_routing) on the CPU reference against an oracle
// written from the definition the other way round: per expert, rank every
// token (picks first, then score, then token id) and take the first target.
// The oracle forms probabilities with the reference's float formula, so the
// comparison is exact; the formula itself is checked against double.
// Also: the properties the rounding promises, the padding tail, the padding
// pairs flowing through routing_from_pairs and the layer, and validation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include <sonicmoe/bfloat16.hpp>
#include <sonicmoe/sonicmoe.h>
#include <sonicmoe/sonicmoe.hpp>

#include "common/token_rounding.hpp"
#include "device_buffer.hpp"
#include "routing_tensors.hpp"

namespace sonicmoe::testing {
namespace {

const Device kCpu{};

struct Pairs {
  std::vector<int32_t> token, expert;
  std::vector<float> score;
  int32_t count = 0;
  bool operator==(const Pairs&) const = default;
};

// A router problem: logits, then the library's own top-K router.
struct Case {
  int64_t T, E, K;
  DType dtype;
  RouterOrder order;
  std::vector<float> logits;  // as stored (bf16-rounded for bf16)
  std::vector<int32_t> ids;
  std::vector<float> scores;
  DevTensor logits_t, ids_t, scores_t;
};

Case make_case(int64_t T, int64_t E, int64_t K, DType dtype, RouterOrder order, uint32_t seed,
               double spread = 3.0) {
  Case c{T, E, K, dtype, order, {}, {}, {}, {}, {}, {}};
  std::mt19937 rng(seed);
  std::normal_distribution<double> n(0.0, spread);
  std::vector<double> z(T * E);
  for (double& v : z) v = n(rng);
  c.logits_t = from_doubles(kCpu, dtype, z, {T, E});
  for (double v : to_doubles(c.logits_t)) c.logits.push_back(static_cast<float>(v));
  c.ids_t = make(kCpu, DType::I32, {T, K});
  c.scores_t = make(kCpu, DType::F32, {T, K});
  router_forward({c.logits_t.t, K, order, false, c.scores_t.t, c.ids_t.t});
  c.ids = to_ints(c.ids_t);
  for (double v : to_doubles(c.scores_t)) c.scores.push_back(static_cast<float>(v));
  return c;
}

Pairs run_rounding(const Case& c, int64_t tile, TokenRounding mode) {
  const int64_t C = round_routing_capacity(c.T, c.E, c.K, tile, mode);
  DevTensor tok = make(kCpu, DType::I32, {C}), exp = make(kCpu, DType::I32, {C}),
            sc = make(kCpu, DType::F32, {C}), num = make(kCpu, DType::I32, {1});
  Buffer ws(kCpu, std::max<size_t>(round_routing_workspace_size(kCpu, c.T, c.E), 256));
  round_routing({c.logits_t.t, c.ids_t.t, c.scores_t.t, tile, mode, tok.t, exp.t, sc.t, num.t,
                 ws.workspace()});
  Pairs p{to_ints(tok), to_ints(exp), {}, to_ints(num)[0]};
  for (double v : to_doubles(sc)) p.score.push_back(static_cast<float>(v));
  return p;
}

int64_t oracle_target(int64_t count, int64_t tile, TokenRounding mode, int64_t T) {
  const double q = static_cast<double>(count) / static_cast<double>(tile);
  int64_t m;
  if (mode == TokenRounding::Up) m = static_cast<int64_t>(std::ceil(q));
  else if (mode == TokenRounding::Down) m = static_cast<int64_t>(std::floor(q));
  else m = static_cast<int64_t>(std::nearbyint(q));  // default rounding: ties to even
  return std::min(m * tile, T);
}

uint32_t key_of(float s) {
  if (!(s >= 0.0f) || std::signbit(s)) return 0;
  uint32_t u;
  std::memcpy(&u, &s, 4);
  return u;
}

Pairs oracle(const Case& c, int64_t tile, TokenRounding mode) {
  const int64_t T = c.T, E = c.E, K = c.K;
  std::vector<float> mx(T), inv(T);
  for (int64_t t = 0; t < T; ++t) {
    float m = -INFINITY;
    for (int64_t e = 0; e < E; ++e) m = std::fmax(m, c.logits[t * E + e]);
    double s = 0;
    for (int64_t e = 0; e < E; ++e) s += std::exp(c.logits[t * E + e] - m);
    mx[t] = m;
    inv[t] = 1.0f / static_cast<float>(s);
  }
  struct Row { bool picked; float score; int32_t t; };
  std::vector<std::tuple<int32_t, int32_t, float>> chosen;  // (token, expert, score)
  for (int64_t e = 0; e < E; ++e) {
    std::vector<Row> rows;
    int64_t count = 0;
    for (int64_t t = 0; t < T; ++t) {
      Row r{false, std::exp(c.logits[t * E + e] - mx[t]) * inv[t], static_cast<int32_t>(t)};
      for (int64_t k = K - 1; k >= 0; --k)  // the first slot wins
        if (c.ids[t * K + k] == e) r = {true, c.scores[t * K + k], static_cast<int32_t>(t)};
      count += r.picked;
      rows.push_back(r);
    }
    std::sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) {
      if (a.picked != b.picked) return a.picked;
      if (key_of(a.score) != key_of(b.score)) return key_of(a.score) > key_of(b.score);
      return a.t < b.t;
    });
    const int64_t target = oracle_target(count, tile, mode, T);
    for (int64_t i = 0; i < target; ++i)
      chosen.emplace_back(rows[i].t, static_cast<int32_t>(e), rows[i].score);
  }
  std::sort(chosen.begin(), chosen.end());
  Pairs p;
  for (auto& [t, e, s] : chosen) {
    p.token.push_back(t);
    p.expert.push_back(e);
    p.score.push_back(s);
  }
  p.count = static_cast<int32_t>(chosen.size());
  const int64_t C = round_routing_capacity(T, E, K, tile, mode);
  p.token.resize(C, static_cast<int32_t>(T - 1));
  p.expert.resize(C, kNoExpert);
  p.score.resize(C, 0.0f);
  return p;
}

// The first difference, not half a million lines.
void expect_same(const Pairs& got, const Pairs& want, const std::string& what) {
  ASSERT_EQ(got.count, want.count) << what;
  ASSERT_EQ(got.token.size(), want.token.size()) << what;
  for (size_t i = 0; i < got.token.size(); ++i)
    if (got.token[i] != want.token[i] || got.expert[i] != want.expert[i] ||
        std::memcmp(&got.score[i], &want.score[i], 4) != 0) {
      ADD_FAILURE() << what << ": first difference at pair " << i << ": got (" << got.token[i]
                    << ", " << got.expert[i] << ", " << got.score[i] << "), expected ("
                    << want.token[i] << ", " << want.expert[i] << ", " << want.score[i] << ")";
      return;
    }
}

const TokenRounding kModes[] = {TokenRounding::Nearest, TokenRounding::Up, TokenRounding::Down};

std::string name_of(const Case& c, int64_t tile, TokenRounding mode) {
  return "T=" + std::to_string(c.T) + " E=" + std::to_string(c.E) + " K=" + std::to_string(c.K) +
         " tile=" + std::to_string(tile) + " " + to_string(mode) + " " + to_string(c.dtype) + " " +
         to_string(c.order);
}

TEST(TokenRounding, RoundedCountRoundsToTheTile) {
  using detail::rounded_count;
  EXPECT_EQ(rounded_count(5, 4, TokenRounding::Up, 100), 8);
  EXPECT_EQ(rounded_count(8, 4, TokenRounding::Up, 100), 8);
  EXPECT_EQ(rounded_count(0, 4, TokenRounding::Up, 100), 0);
  EXPECT_EQ(rounded_count(7, 4, TokenRounding::Down, 100), 4);
  EXPECT_EQ(rounded_count(3, 4, TokenRounding::Down, 100), 0);
  EXPECT_EQ(rounded_count(5, 4, TokenRounding::Nearest, 100), 4);
  EXPECT_EQ(rounded_count(7, 4, TokenRounding::Nearest, 100), 8);
  // Ties to the even multiple.
  EXPECT_EQ(rounded_count(2, 4, TokenRounding::Nearest, 100), 0);
  EXPECT_EQ(rounded_count(6, 4, TokenRounding::Nearest, 100), 8);
  EXPECT_EQ(rounded_count(10, 4, TokenRounding::Nearest, 100), 8);
  EXPECT_EQ(rounded_count(192, 128, TokenRounding::Nearest, 10000), 256);
  EXPECT_EQ(rounded_count(64, 128, TokenRounding::Nearest, 10000), 0);
  // Odd tiles have no ties.
  EXPECT_EQ(rounded_count(4, 7, TokenRounding::Nearest, 100), 7);
  EXPECT_EQ(rounded_count(3, 7, TokenRounding::Nearest, 100), 0);
  // Capped at the token count.
  EXPECT_EQ(rounded_count(5, 128, TokenRounding::Up, 50), 50);
  EXPECT_EQ(rounded_count(100, 128, TokenRounding::Nearest, 120), 120);
  for (int64_t count = 0; count < 300; ++count)
    for (int64_t tile : {1, 2, 3, 16, 128})
      for (TokenRounding m : kModes)
        ASSERT_EQ(rounded_count(count, tile, m, 250), oracle_target(count, tile, m, 250))
            << count << " " << tile << " " << to_string(m);
}

TEST(TokenRounding, CapacityBoundsEveryMode) {
  EXPECT_EQ(round_routing_capacity(1000, 16, 2, 128, TokenRounding::Up), 2000 + 16 * 127);
  EXPECT_EQ(round_routing_capacity(1000, 16, 2, 128, TokenRounding::Nearest), 2000 + 16 * 64);
  EXPECT_EQ(round_routing_capacity(1000, 16, 2, 128, TokenRounding::Down), 2000);
  EXPECT_EQ(round_routing_capacity(10, 16, 2, 128, TokenRounding::Up), 160);  // T * E
}

TEST(TokenRounding, MatchesOracle) {
  struct Shape { int64_t T, E, K, tile; };
  const Shape shapes[] = {{1, 1, 1, 128}, {1, 4, 4, 2},   {37, 5, 2, 4},  {200, 8, 2, 16},
                          {300, 7, 3, 32}, {64, 16, 16, 8}, {513, 24, 4, 128}, {130, 3, 1, 1}};
  uint32_t seed = 1;
  for (const Shape& s : shapes)
    for (DType dtype : {DType::F32, DType::BF16})
      for (RouterOrder order : {RouterOrder::TopKThenSoftmax, RouterOrder::SoftmaxThenTopK}) {
        const Case c = make_case(s.T, s.E, s.K, dtype, order, seed++);
        for (TokenRounding mode : kModes)
          expect_same(run_rounding(c, s.tile, mode), oracle(c, s.tile, mode),
                      name_of(c, s.tile, mode));
      }
}

// bf16 logits on a coarse grid make many equal probabilities: ties must go
// to the lower token, and ranks must not depend on anything else.
TEST(TokenRounding, TiesGoToTheLowerToken) {
  Case c = make_case(256, 6, 2, DType::BF16, RouterOrder::SoftmaxThenTopK, 99);
  std::vector<double> z(c.T * c.E);
  for (int64_t t = 0; t < c.T; ++t)
    for (int64_t e = 0; e < c.E; ++e) z[t * c.E + e] = static_cast<double>((t * 7 + e * 3) % 4);
  c.logits_t = from_doubles(kCpu, DType::BF16, z, {c.T, c.E});
  c.logits.assign(z.begin(), z.end());
  router_forward({c.logits_t.t, c.K, c.order, false, c.scores_t.t, c.ids_t.t});
  c.ids = to_ints(c.ids_t);
  c.scores.clear();
  for (double v : to_doubles(c.scores_t)) c.scores.push_back(static_cast<float>(v));
  for (int64_t tile : {16, 48, 100})
    for (TokenRounding mode : kModes)
      expect_same(run_rounding(c, tile, mode), oracle(c, tile, mode), name_of(c, tile, mode));
}

TEST(TokenRounding, PropertiesHold) {
  const int64_t T = 1000, E = 12, K = 2, tile = 64;
  const Case c = make_case(T, E, K, DType::F32, RouterOrder::TopKThenSoftmax, 7);
  for (TokenRounding mode : kModes) {
    const Pairs p = run_rounding(c, tile, mode);
    const std::string what = to_string(mode);
    EXPECT_EQ(run_rounding(c, tile, mode), p) << what << ": not reproducible";
    std::vector<int64_t> count(E, 0);
    for (int32_t i = 0; i < p.count; ++i) {
      ASSERT_TRUE(p.expert[i] >= 0 && p.expert[i] < E) << what;
      ++count[p.expert[i]];
      if (i > 0)
        ASSERT_TRUE(p.token[i - 1] < p.token[i] ||
                    (p.token[i - 1] == p.token[i] && p.expert[i - 1] < p.expert[i]))
            << what << ": not sorted by token, then expert, at " << i;
    }
    for (int64_t e = 0; e < E; ++e)
      EXPECT_TRUE(count[e] % tile == 0 || count[e] == T) << what << ": expert " << e << " has "
                                                         << count[e];
    for (size_t i = p.count; i < p.token.size(); ++i)
      ASSERT_TRUE(p.token[i] == T - 1 && p.expert[i] == kNoExpert && p.score[i] == 0.0f)
          << what << ": padding pair " << i;
    auto has = [&](int32_t t, int32_t e) {
      for (int32_t i = 0; i < p.count; ++i)
        if (p.token[i] == t && p.expert[i] == e) return true;
      return false;
    };
    for (int32_t t = 0; t < T; ++t) {
      const int32_t top1 = c.ids[t * K];
      if (mode == TokenRounding::Up) {
        EXPECT_TRUE(has(t, top1)) << "round-up lost token " << t << "'s top-1 expert";
      }
    }
    if (mode == TokenRounding::Down)
      for (int32_t i = 0; i < p.count; ++i) {
        const int32_t t = p.token[i];
        EXPECT_TRUE(c.ids[t * K] == p.expert[i] || c.ids[t * K + 1] == p.expert[i])
            << "round-down added a pair";
      }
  }
}

// Added pairs carry the raw softmax probability over all E.
TEST(TokenRounding, AddedScoresAreRawProbabilities) {
  const Case c = make_case(300, 9, 1, DType::F32, RouterOrder::TopKThenSoftmax, 3);
  const Pairs p = run_rounding(c, 32, TokenRounding::Up);
  for (int32_t i = 0; i < p.count; ++i) {
    const int32_t t = p.token[i], e = p.expert[i];
    if (c.ids[t] == e) {
      EXPECT_EQ(p.score[i], 1.0f);  // K = 1: the top-K score
      continue;
    }
    double s = 0, m = -INFINITY;
    for (int64_t f = 0; f < c.E; ++f) m = std::max<double>(m, c.logits[t * c.E + f]);
    for (int64_t f = 0; f < c.E; ++f) s += std::exp(c.logits[t * c.E + f] - m);
    const double want = std::exp(c.logits[t * c.E + e] - m) / s;
    EXPECT_NEAR(p.score[i], want, 1e-6 * want) << "pair " << i;
  }
}

// The padded routing runs the layer exactly as the compact routing of its
// first num_pairs pairs does; padding gets dscores 0.
TEST(TokenRounding, PaddingPairsAreDroppedByTheLayer) {
  const int64_t T = 40, E = 4, K = 2, d = 16, n = 8, R = 2 * n, tile = 8;
  const Case c = make_case(T, E, K, DType::F32, RouterOrder::TopKThenSoftmax, 5);
  const Pairs p = run_rounding(c, tile, TokenRounding::Up);
  const int64_t C = static_cast<int64_t>(p.token.size()), M = p.count;
  ASSERT_LT(M, C);
  std::mt19937 rng(11);
  std::normal_distribution<double> nd(0.0, 0.5);
  auto rnd = [&](std::initializer_list<int64_t> shape) {
    int64_t k = 1;
    for (int64_t s : shape) k *= s;
    std::vector<double> v(k);
    for (double& x : v) x = nd(rng);
    return from_doubles(kCpu, DType::BF16, v, shape);
  };
  DevTensor x = rnd({T, d}), w1 = rnd({E, R, d}), w2 = rnd({E, d, n}), dout = rnd({T, d});

  struct Result { std::vector<double> out, dx, dw1, dw2, ds; };
  auto run = [&](int64_t N) {
    std::vector<int32_t> tok(p.token.begin(), p.token.begin() + N),
        exp(p.expert.begin(), p.expert.begin() + N);
    std::vector<double> sc(p.score.begin(), p.score.begin() + N);
    DevTensor tk = from_ints(kCpu, tok), ex = from_ints(kCpu, exp),
              s = from_doubles(kCpu, DType::F32, sc, {N});
    const testing::RoutingTensors meta(kCpu, T, E, N);
    const Routing r = meta.routing();
    Buffer rws(kCpu, routing_workspace_size(kCpu, T, E, N));
    routing_from_pairs(tk.t, ex.t, T, E, r, rws.workspace());
    if (N > M) {
      EXPECT_EQ(to_ints(meta.expert_offsets)[E], M);
      for (int64_t i = M; i < N; ++i) EXPECT_EQ(to_ints(meta.pair_position)[i], -1);
    }
    const MoeProblem prob{T, d, n, E, N, Activation::SwiGLU};
    DevTensor out = make(kCpu, DType::BF16, {T, d}), h = make(kCpu, DType::BF16, {N, R});
    Buffer fws(kCpu, moe_forward_workspace_size(kCpu, prob, ForwardMode::Training));
    MoeForwardArgs f;
    f.x = x.t, f.w1 = w1.t, f.w2 = w2.t, f.scores = s.t, f.routing = r, f.out = out.t, f.h = h.t;
    f.workspace = fws.workspace();
    moe_forward(f);
    DevTensor dx = make(kCpu, DType::BF16, {T, d}), dw1 = make(kCpu, DType::BF16, {E, R, d}),
              dw2 = make(kCpu, DType::BF16, {E, d, n}), ds = make(kCpu, DType::F32, {N});
    Buffer bws(kCpu, moe_backward_workspace_size(kCpu, prob));
    MoeBackwardArgs b;
    b.x = x.t, b.w1 = w1.t, b.w2 = w2.t, b.scores = s.t, b.routing = r, b.h = h.t;
    b.dout = dout.t, b.dx = dx.t, b.dw1 = dw1.t, b.dw2 = dw2.t, b.dscores = ds.t;
    b.workspace = bws.workspace();
    moe_backward(b);
    return Result{to_doubles(out), to_doubles(dx), to_doubles(dw1), to_doubles(dw2),
                  to_doubles(ds)};
  };
  const Result padded = run(C), compact = run(M);
  EXPECT_EQ(padded.out, compact.out);
  EXPECT_EQ(padded.dx, compact.dx);
  EXPECT_EQ(padded.dw1, compact.dw1);
  EXPECT_EQ(padded.dw2, compact.dw2);
  EXPECT_EQ(std::vector<double>(padded.ds.begin(), padded.ds.begin() + M), compact.ds);
  for (int64_t i = M; i < C; ++i) EXPECT_EQ(padded.ds[i], 0.0) << i;
}

// ---------------------------------------------------------------- errors --

void expect_error(const std::function<void()>& f, std::initializer_list<std::string> parts,
                  Status status = Status::InvalidArgument) {
  try {
    f();
    ADD_FAILURE() << "no error, expected one with '" << *parts.begin() << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), status) << e.what();
    for (const std::string& part : parts)
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos)
          << "message '" << e.what() << "' lacks '" << part << "'";
  }
}

struct RoundArgsFixture {
  Case c = make_case(20, 4, 2, DType::F32, RouterOrder::TopKThenSoftmax, 2);
  int64_t C = round_routing_capacity(20, 4, 2, 8, TokenRounding::Up);
  DevTensor tok = make(kCpu, DType::I32, {C}), exp = make(kCpu, DType::I32, {C}),
            sc = make(kCpu, DType::F32, {C}), num = make(kCpu, DType::I32, {1});
  RoundRoutingArgs args() const {
    return {c.logits_t.t, c.ids_t.t, c.scores_t.t, 8, TokenRounding::Up, tok.t, exp.t, sc.t,
            num.t, {}};
  }
};

TEST(TokenRoundingValidation, NamesTheArgument) {
  RoundArgsFixture f;
  round_routing(f.args());  // valid
  auto a = f.args();
  a.mode = static_cast<TokenRounding>(3);
  expect_error([&] { round_routing(a); },
               {"sonicmoe::round_routing: argument 'mode'", "0 (nearest), 1 (up) or 2 (down)",
                "got 3"});
  a = f.args();
  a.tile = 0;
  expect_error([&] { round_routing(a); }, {"argument 'tile'", "[1, 2147483647]", "got 0"});
  a = f.args();
  a.mode = TokenRounding::Down;  // capacity T*K = 40, outputs are larger
  expect_error([&] { round_routing(a); },
               {"argument 'token_ids'", "expected shape [40]", "got [" + std::to_string(f.C) + "]"});
  a = f.args();
  a.topk_scores = f.c.ids_t.t;
  expect_error([&] { round_routing(a); }, {"argument 'topk_scores'", "f32", "i32"});
  a = f.args();
  a.num_pairs = f.tok.t;
  expect_error([&] { round_routing(a); }, {"argument 'num_pairs'", "expected shape [1]"});
  a = f.args();
  a.logits.dtype = DType::I32;
  expect_error([&] { round_routing(a); }, {"argument 'logits'", "dtype f32 or bf16", "i32"});
  a = f.args();
  static_cast<int32_t*>(f.c.ids_t.t.data)[5] = 4;
  expect_error([&] { round_routing(a); },
               {"argument 'topk_ids'", "expected values in [0, 4)", "got 4 at flat index 5"});
  expect_error([] { round_routing_capacity(10, 4, 5, 128, TokenRounding::Up); },
               {"sonicmoe::round_routing_capacity: argument 'k'", "[1, 4]", "got 5"});
  expect_error([] { round_routing_capacity(10, 4, 2, 128, static_cast<TokenRounding>(-1)); },
               {"argument 'mode'", "got -1"});
}

TEST(TokenRoundingValidation, PaddingExpertOnlyMinusOne) {
  // Only -1 marks a padding pair: routing_from_pairs still rejects -2.
  DevTensor tok = from_ints(kCpu, {0, 1, 1}), exp = from_ints(kCpu, {0, -2, 1});
  DevTensor counts = make(kCpu, DType::I32, {2}), offs = make(kCpu, DType::I32, {3}),
            toffs = make(kCpu, DType::I32, {3}), st = make(kCpu, DType::I32, {3}),
            sp = make(kCpu, DType::I32, {3}), pp = make(kCpu, DType::I32, {3});
  const Routing r{counts.t, offs.t, toffs.t, st.t, sp.t, pp.t};
  Buffer ws(kCpu, routing_workspace_size(kCpu, 2, 2, 3));
  expect_error([&] { routing_from_pairs(tok.t, exp.t, 2, 2, r, ws.workspace()); },
               {"argument 'expert_ids'", "expected values in [0, 2) or -1 (a padding pair)",
                "got -2 at flat index 1"});
  static_cast<int32_t*>(exp.t.data)[1] = -1;
  routing_from_pairs(tok.t, exp.t, 2, 2, r, ws.workspace());
  EXPECT_EQ(to_ints(counts), (std::vector<int32_t>{1, 1}));
  EXPECT_EQ(to_ints(offs), (std::vector<int32_t>{0, 1, 2}));
  EXPECT_EQ(to_ints(toffs), (std::vector<int32_t>{0, 1, 3}));
  EXPECT_EQ(to_ints(pp), (std::vector<int32_t>{0, -1, 1}));
}

TEST(TokenRoundingValidation, CAbi) {
  RoundArgsFixture f;
  int64_t cap = 0;
  ASSERT_EQ(smoe_round_routing_capacity(20, 4, 2, 8, SMOE_ROUNDING_UP, &cap), SMOE_STATUS_OK);
  EXPECT_EQ(cap, f.C);
  EXPECT_EQ(smoe_round_routing_capacity(20, 4, 2, 8, SMOE_ROUNDING_UP, nullptr),
            SMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(std::string(smoe_last_error()).find("argument 'capacity'"), std::string::npos);
  EXPECT_EQ(smoe_round_routing(nullptr, nullptr), SMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(std::string(smoe_last_error()).find("round_routing: argument 'args'"),
            std::string::npos);
  size_t bytes = 1;
  ASSERT_EQ(smoe_round_routing_workspace_size(SMOE_DEVICE_CPU, 0, 20, 4, &bytes), SMOE_STATUS_OK);
  auto c = [](const Tensor& t) {
    smoe_tensor_t r;
    std::memcpy(&r, &t, sizeof r);
    return r;
  };
  const RoundRoutingArgs a = f.args();
  smoe_round_routing_args_t ca{c(a.logits), c(a.topk_ids), c(a.topk_scores), 8, SMOE_ROUNDING_UP,
                               0, c(a.token_ids), c(a.expert_ids), c(a.scores), c(a.num_pairs),
                               {nullptr, 0}};
  ASSERT_EQ(smoe_round_routing(&ca, nullptr), SMOE_STATUS_OK) << smoe_last_error();
  const Pairs want = oracle(f.c, 8, TokenRounding::Up);
  EXPECT_EQ(to_ints(f.num)[0], want.count);
  EXPECT_EQ(to_ints(f.exp), want.expert);
  ca.mode = 7;
  EXPECT_EQ(smoe_round_routing(&ca, nullptr), SMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(std::string(smoe_last_error()).find("argument 'mode'"), std::string::npos);
}

}  // namespace
}  // namespace sonicmoe::testing
