// GPU token rounding against the CPU reference, both through the public API
// on the same inputs (CUDA tensors vs CPU tensors).
//
// Exact: the pair count, every expert's count, the picks kept, the padding
// tail, and every top-K score. Added pairs carry expf-formed probabilities,
// which may differ from the host's std::exp by an ulp: their scores must agree
// within 1e-6 relative, and where two tokens' probabilities are that close
// the GPU may take the other one, which the check allows for.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <sonicmoe/sonicmoe.hpp>

#include "device_buffer.hpp"

namespace sonicmoe::testing {
namespace {

const Device kCpu{DeviceType::CPU, 0};
const Device kGpu{DeviceType::CUDA, 0};

#define SKIP_WITHOUT_GPU() \
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device"

struct Result {
  std::vector<int32_t> token, expert;
  std::vector<double> score;
  int32_t count = 0;
};

DevTensor copy_to(Device dev, const DevTensor& src) {
  DevTensor d = make(dev, src.t.dtype, {src.t.numel()});
  std::vector<uint8_t> bytes(src.buf->bytes());
  src.buf->download(bytes.data());
  d.buf->upload(bytes.data());
  d.t = src.t;
  d.t.data = d.buf->get();
  d.t.device = dev;
  return d;
}

Result run(Device dev, const DevTensor& logits, const DevTensor& ids, const DevTensor& scores,
           int64_t tile, TokenRounding mode) {
  const int64_t T = logits.t.shape[0], E = logits.t.shape[1], K = ids.t.shape[1];
  const int64_t C = round_routing_capacity(T, E, K, tile, mode);
  DevTensor l = copy_to(dev, logits), i = copy_to(dev, ids), s = copy_to(dev, scores);
  DevTensor tok = make(dev, DType::I32, {C}), exp = make(dev, DType::I32, {C}),
            sc = make(dev, DType::F32, {C}), num = make(dev, DType::I32, {1});
  Buffer ws(dev, std::max<size_t>(round_routing_workspace_size(dev, T, E), 256));
  round_routing({l.t, i.t, s.t, tile, mode, tok.t, exp.t, sc.t, num.t, ws.workspace()});
  return {to_ints(tok), to_ints(exp), to_doubles(sc), to_ints(num)[0]};
}

struct Inputs {
  DevTensor logits, ids, scores;
};

Inputs make_inputs(int64_t T, int64_t E, int64_t K, DType dtype, RouterOrder order, uint32_t seed,
                   double spread) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> n(0.0, spread);
  std::vector<double> z(T * E);
  for (double& v : z) v = n(rng);
  Inputs in{from_doubles(kCpu, dtype, z, {T, E}), make(kCpu, DType::I32, {T, K}),
            make(kCpu, DType::F32, {T, K})};
  router_forward({in.logits.t, K, order, false, in.scores.t, in.ids.t});
  return in;
}

void expect_matches(const Result& gpu, const Result& ref, int64_t E, const std::string& what) {
  ASSERT_EQ(gpu.count, ref.count) << what;
  ASSERT_EQ(gpu.token.size(), ref.token.size()) << what;
  for (size_t i = gpu.count; i < gpu.token.size(); ++i)
    ASSERT_TRUE(gpu.token[i] == ref.token[i] && gpu.expert[i] == kNoExpert && gpu.score[i] == 0)
        << what << ": padding pair " << i;
  // Per expert: token -> score.
  std::vector<std::map<int32_t, double>> g(E), r(E);
  for (int32_t i = 0; i < gpu.count; ++i) {
    ASSERT_TRUE(gpu.expert[i] >= 0 && gpu.expert[i] < E) << what << ": pair " << i;
    if (i > 0)
      ASSERT_TRUE(gpu.token[i - 1] < gpu.token[i] ||
                  (gpu.token[i - 1] == gpu.token[i] && gpu.expert[i - 1] < gpu.expert[i]))
          << what << ": not sorted at " << i;
    g[gpu.expert[i]][gpu.token[i]] = gpu.score[i];
    r[ref.expert[i]][ref.token[i]] = ref.score[i];
  }
  for (int64_t e = 0; e < E; ++e) {
    ASSERT_EQ(g[e].size(), r[e].size()) << what << ": expert " << e << " count";
    std::vector<double> only_gpu, only_ref;
    for (const auto& [t, s] : g[e]) {
      const auto it = r[e].find(t);
      if (it == r[e].end()) only_gpu.push_back(s);
      else ASSERT_NEAR(s, it->second, 1e-6 * std::abs(it->second)) << what << ": (" << t << ", " << e << ")";
    }
    for (const auto& [t, s] : r[e])
      if (!g[e].count(t)) only_ref.push_back(s);
    std::sort(only_gpu.begin(), only_gpu.end());
    std::sort(only_ref.begin(), only_ref.end());
    for (size_t j = 0; j < only_gpu.size(); ++j)
      EXPECT_NEAR(only_gpu[j], only_ref[j], 1e-6 * only_ref[j])
          << what << ": expert " << e << " took a token the reference ranks clearly lower";
  }
}

struct Shape {
  int64_t T, E, K, tile;
};

TEST(GpuTokenRounding, MatchesCpuReference) {
  SKIP_WITHOUT_GPU();
  const Shape shapes[] = {{1, 1, 1, 128},    {1, 4, 4, 2},      {37, 5, 2, 4},
                          {300, 7, 3, 32},   {64, 16, 16, 8},   {513, 24, 4, 128},
                          {4096, 64, 8, 128}, {3000, 100, 6, 128}, {2048, 512, 8, 128},
                          {9000, 128, 1, 64}, {700, 33, 33, 16},
                          // beyond the shared-memory key cache (48K tokens)
                          {50000, 20, 2, 128}};
  uint32_t seed = 1;
  for (const Shape& s : shapes)
    for (DType dtype : {DType::F32, DType::BF16})
      for (RouterOrder order : {RouterOrder::TopKThenSoftmax, RouterOrder::SoftmaxThenTopK}) {
        const Inputs in = make_inputs(s.T, s.E, s.K, dtype, order, seed++, 2.0);
        for (TokenRounding mode : {TokenRounding::Nearest, TokenRounding::Up, TokenRounding::Down}) {
          const std::string what = "T=" + std::to_string(s.T) + " E=" + std::to_string(s.E) +
                                   " K=" + std::to_string(s.K) + " tile=" + std::to_string(s.tile) +
                                   " " + to_string(mode) + " " + to_string(dtype) + " " +
                                   to_string(order);
          const Result ref = run(kCpu, in.logits, in.ids, in.scores, s.tile, mode);
          const Result gpu = run(kGpu, in.logits, in.ids, in.scores, s.tile, mode);
          expect_matches(gpu, ref, s.E, what);
        }
      }
}

// Equal probabilities everywhere (bf16 logits on a coarse grid): the order
// is decided by the token id alone, so the results must be identical.
TEST(GpuTokenRounding, TiesMatchExactly) {
  SKIP_WITHOUT_GPU();
  const int64_t T = 1500, E = 12, K = 2;
  std::vector<double> z(T * E);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e) z[t * E + e] = static_cast<double>((t * 7 + e * 3) % 4);
  Inputs in{from_doubles(kCpu, DType::BF16, z, {T, E}), make(kCpu, DType::I32, {T, K}),
            make(kCpu, DType::F32, {T, K})};
  router_forward({in.logits.t, K, RouterOrder::SoftmaxThenTopK, false, in.scores.t, in.ids.t});
  for (int64_t tile : {16, 128})
    for (TokenRounding mode : {TokenRounding::Nearest, TokenRounding::Up, TokenRounding::Down}) {
      const Result ref = run(kCpu, in.logits, in.ids, in.scores, tile, mode);
      const Result gpu = run(kGpu, in.logits, in.ids, in.scores, tile, mode);
      EXPECT_EQ(gpu.count, ref.count);
      EXPECT_EQ(gpu.token, ref.token) << to_string(mode) << " tile " << tile;
      EXPECT_EQ(gpu.expert, ref.expert) << to_string(mode) << " tile " << tile;
    }
}

TEST(GpuTokenRounding, BitwiseReproducible) {
  SKIP_WITHOUT_GPU();
  const Inputs in = make_inputs(65536, 256, 8, DType::BF16, RouterOrder::TopKThenSoftmax, 9, 2.0);
  const Result a = run(kGpu, in.logits, in.ids, in.scores, 128, TokenRounding::Nearest);
  const Result b = run(kGpu, in.logits, in.ids, in.scores, 128, TokenRounding::Nearest);
  EXPECT_EQ(a.count, b.count);
  EXPECT_EQ(a.token, b.token);
  EXPECT_EQ(a.expert, b.expert);
  EXPECT_EQ(a.score, b.score);
}

// Out-of-range top-K ids (which the CPU backend rejects) pick nothing on the
// GPU: the result equals that of the ids without them.
TEST(GpuTokenRounding, InvalidIdsPickNothing) {
  SKIP_WITHOUT_GPU();
  const int64_t T = 200, E = 6, K = 2;
  const Inputs in = make_inputs(T, E, K, DType::F32, RouterOrder::TopKThenSoftmax, 4, 2.0);
  std::vector<int32_t> ids = to_ints(in.ids), k1(T);
  for (int64_t t = 0; t < T; ++t) {
    k1[t] = ids[t * K];
    ids[t * K + 1] = t % 2 ? -3 : static_cast<int32_t>(E + t);
  }
  DevTensor bad = from_ints(kCpu, ids);
  bad.t = Tensor::contiguous(bad.buf->get(), DType::I32, {T, K});
  // Reference: K = 1 with the first slots only.
  DevTensor one = from_ints(kCpu, k1);
  one.t = Tensor::contiguous(one.buf->get(), DType::I32, {T, 1});
  std::vector<double> s = to_doubles(in.scores), s1(T);
  for (int64_t t = 0; t < T; ++t) s1[t] = s[t * K];
  DevTensor sc1 = from_doubles(kCpu, DType::F32, s1, {T, 1});
  const Result gpu = run(kGpu, in.logits, bad, in.scores, 16, TokenRounding::Up);
  const Result ref = run(kCpu, in.logits, one, sc1, 16, TokenRounding::Up);
  ASSERT_EQ(gpu.count, ref.count);
  EXPECT_EQ(std::vector<int32_t>(gpu.expert.begin(), gpu.expert.begin() + gpu.count),
            std::vector<int32_t>(ref.expert.begin(), ref.expert.begin() + ref.count));
}

}  // namespace
}  // namespace sonicmoe::testing
