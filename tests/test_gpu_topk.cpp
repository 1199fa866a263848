// The bitonic top-K router (kernels/router_bitonic.cu) on the GPU: ids equal
// to the CPU reference's exactly, and ids and scores equal bit for bit to the
// first version's (SONICMOE_ROUTER=select), on the shapes it takes (f32,
// E <= 512, K <= 16): E not a power of two, K = E, exact ties, special values
// and near-ties (values a few ulps apart, which the exactness rule sends to
// the exact selection).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <sonicmoe/sonicmoe.hpp>

#include "device_buffer.hpp"

namespace sonicmoe::testing {
namespace {

const Device kCpu{DeviceType::CPU, 0};
const Device kGpu{DeviceType::CUDA, 0};

struct Out {
  std::vector<int32_t> ids;
  std::vector<double> scores;
};

Out route(Device dev, const std::vector<double>& z, int64_t T, int64_t E, int64_t K,
          RouterOrder order, bool renorm, bool select) {
  if (select) setenv("SONICMOE_ROUTER", "select", 1);
  DevTensor logits = from_doubles(dev, DType::F32, z, {T, E});
  DevTensor scores = make(dev, DType::F32, {T, K}), ids = make(dev, DType::I32, {T, K});
  router_forward({logits.t, K, order, renorm, scores.t, ids.t});
  unsetenv("SONICMOE_ROUTER");
  return {to_ints(ids), to_doubles(scores)};
}

bool same_bits(double a, double b) {
  const float x = static_cast<float>(a), y = static_cast<float>(b);
  return std::memcmp(&x, &y, sizeof x) == 0;
}

// kind 0: normal; 1: small integers (exact ties); 2: 1 + a few ulps
// (near-ties); 3: specials (NaN, +-inf, +-0) among normals.
std::vector<double> logits_of(int kind, int64_t n, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::normal_distribution<double> normal;
  const double nan = std::nan(""), inf = std::numeric_limits<double>::infinity();
  const double specials[] = {nan, -inf, inf, -0.0, 0.0};
  std::vector<double> z(static_cast<size_t>(n));
  for (auto& v : z) {
    const int r = static_cast<int>(g() % 7) - 3;
    switch (kind) {
      case 0: v = normal(g); break;
      case 1: v = r; break;
      case 2: v = 1.0 + r * double(std::numeric_limits<float>::epsilon()); break;
      default: v = g() % 3 ? normal(g) : specials[g() % 5];
    }
  }
  return z;
}

void check(int64_t T, int64_t E, int64_t K, int kind, uint64_t seed) {
  const std::vector<double> z = logits_of(kind, T * E, seed);
  for (RouterOrder order : {RouterOrder::TopKThenSoftmax, RouterOrder::SoftmaxThenTopK})
    for (bool renorm : {false, true}) {
      if (renorm && order == RouterOrder::TopKThenSoftmax) continue;
      SCOPED_TRACE("E=" + std::to_string(E) + " K=" + std::to_string(K) + " kind " +
                   std::to_string(kind) + " " + to_string(order) + (renorm ? " renorm" : ""));
      const Out cpu = route(kCpu, z, T, E, K, order, renorm, false);
      const Out fast = route(kGpu, z, T, E, K, order, renorm, false);
      const Out first = route(kGpu, z, T, E, K, order, renorm, true);
      ASSERT_EQ(fast.ids, cpu.ids);
      ASSERT_EQ(fast.ids, first.ids);
      for (size_t i = 0; i < fast.scores.size(); ++i)
        ASSERT_TRUE(same_bits(fast.scores[i], first.scores[i]))
            << "score " << i << ": " << fast.scores[i] << " vs " << first.scores[i];
    }
}

TEST(GpuBitonicTopK, MatchesReferenceAndFirstVersion) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  uint64_t seed = 1;
  for (int64_t E : {1, 5, 32, 33, 64, 100, 128, 200, 256, 300, 512})
    for (int64_t K : {1, 2, 4, 7, 8, 13, 16})
      if (K <= E)
        for (int kind = 0; kind < 4; ++kind) check(131, E, K, kind, ++seed);
}

TEST(GpuBitonicTopK, KEqualsE) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  for (int64_t E : {1, 3, 8, 16})
    for (int kind = 0; kind < 4; ++kind) check(64, E, E, kind, 100 + E * 4 + kind);
}

TEST(GpuBitonicTopK, ManyRowsAndRunToRun) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  check(32768, 256, 8, 0, 7);
  const std::vector<double> z = logits_of(2, 4096 * 512, 9);
  const Out a = route(kGpu, z, 4096, 512, 16, RouterOrder::SoftmaxThenTopK, true, false);
  const Out b = route(kGpu, z, 4096, 512, 16, RouterOrder::SoftmaxThenTopK, true, false);
  EXPECT_EQ(a.ids, b.ids);
  for (size_t i = 0; i < a.scores.size(); ++i) ASSERT_TRUE(same_bits(a.scores[i], b.scores[i]));
}

}  // namespace
}  // namespace sonicmoe::testing
