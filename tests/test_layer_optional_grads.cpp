// Absent gradients in moe_backward: the outputs left absent are not
// computed (frozen experts skip the weight-gradient products, an input that
// needs no gradient skips dX~), and every output that is given holds the
// same bits as in a backward that computes everything. On the CPU backend
// and, where present, the GPU (each engine through SONICMOE_ENGINE).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "harness.hpp"

namespace sonicmoe::testing {
namespace {

struct Subset {
  const char* name;
  GradSet grads;
};

// Training setups and corner cases: frozen experts (dx and dscores only),
// first layer (weights only), each output alone, nothing at all.
const std::vector<Subset>& subsets() {
  static const std::vector<Subset> s = {
      {"frozen experts", {true, false, false, false, false, true}},
      {"no dx", {false, true, true, true, true, true}},
      {"dx only", {true, false, false, false, false, false}},
      {"dw1 only", {false, true, false, false, false, false}},
      {"db1 only", {false, false, true, false, false, false}},
      {"dw2 only", {false, false, false, true, false, false}},
      {"db2 only", {false, false, false, false, true, false}},
      {"dscores only", {false, false, false, false, false, true}},
      {"none", {false, false, false, false, false, false}},
  };
  return s;
}

void expect_subset(const std::vector<double>& got, const std::vector<double>& full, bool asked,
                   const char* name) {
  if (asked) EXPECT_EQ(got, full) << name << ": not the bits of the full backward";
  else EXPECT_TRUE(got.empty()) << name << " was not asked for";
}

void check_subsets(Device dev) {
  for (const bool bias : {false, true}) {
    CaseSpec s;
    s.T = 150, s.d = 64, s.n = 48, s.E = 6, s.K = 2, s.bias = bias, s.seed = 7;
    const Case c = make_case(s);
    const LibResult full = run_library(c, dev, true);
    ASSERT_FALSE(full.dx.empty());
    for (const Subset& sub : subsets()) {
      SCOPED_TRACE(std::string(sub.name) + (bias ? ", with biases" : ", no biases"));
      const GradSet& g = sub.grads;
      const LibResult r = run_library(c, dev, true, true, ForwardMode::Training, g);
      EXPECT_EQ(r.out, full.out);
      expect_subset(r.dx, full.dx, g.dx, "dx");
      expect_subset(r.dw1, full.dw1, g.dw1, "dw1");
      expect_subset(r.dw2, full.dw2, g.dw2, "dw2");
      expect_subset(r.dscores, full.dscores, g.dscores, "dscores");
      expect_subset(r.db1, full.db1, g.db1 && bias, "db1");
      expect_subset(r.db2, full.db2, g.db2 && bias, "db2");
    }
  }
}

TEST(LayerOptionalGrads, CpuComputesOnlyWhatIsAsked) { check_subsets(Device{}); }

TEST(LayerOptionalGrads, GpuComputesOnlyWhatIsAsked) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device present";
  check_subsets(Device{DeviceType::CUDA, 0});
}

}  // namespace
}  // namespace sonicmoe::testing
