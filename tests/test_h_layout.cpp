// The layout of the saved pre-activation h (h_stored_column, types.hpp):
// what every backend writes and the dH epilogues read, and what the C ABI
// reports to callers that read h themselves.
#include <sonicmoe/sonicmoe.h>
#include <sonicmoe/sonicmoe.hpp>

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace sonicmoe {
namespace {

constexpr Activation kGated[] = {Activation::SwiGLU, Activation::GeGLU, Activation::ReGLU};
constexpr Activation kPlain[] = {Activation::GeLU, Activation::ReLU, Activation::ReLU2,
                                 Activation::SiLU};

// Every row width a gated layer can have (2n, n a multiple of 8), short and
// long, with and without a 16-column last block.
std::vector<int64_t> gated_widths() {
  std::vector<int64_t> w;
  for (int64_t R = 16; R <= 336; R += 16) w.push_back(R);
  w.push_back(4096);
  w.push_back(4096 + 16);
  return w;
}

TEST(HLayout, GatedRowsArePermutationsKeepingPairsTogether) {
  for (Activation a : kGated)
    for (int64_t R : gated_widths()) {
      SCOPED_TRACE(std::string(to_string(a)) + " R=" + std::to_string(R));
      std::vector<int> hits(R, 0);
      for (int64_t j = 0; j < R; ++j) {
        const int64_t s = h_stored_column(j, R, a);
        ASSERT_GE(s, 0);
        ASSERT_LT(s, R);
        ++hits[s];
        // Within its 32-column block.
        EXPECT_EQ(s / 32, j / 32) << j;
        // (gate, up) stay adjacent, gate first.
        if (j % 2 == 0) EXPECT_EQ(h_stored_column(j + 1, R, a), s + 1) << j;
      }
      for (int64_t s = 0; s < R; ++s) EXPECT_EQ(hits[s], 1) << "stored column " << s;
    }
}

// The meaning of the order: lane b of an accumulator quad holds pairs b of
// the block's groups a = 0..3 (columns 8 a + 2 b, + 1) and stores them as
// they are, together at 8 b (4 b in a 16-column last block).
TEST(HLayout, GatedBlocksHoldEachLanesPairsTogether) {
  for (int64_t R : {int64_t{64}, int64_t{80}}) {
    for (int64_t block = 0; block < R; block += 32) {
      const int64_t groups = R - block >= 32 ? 4 : 2;
      for (int64_t a = 0; a < groups; ++a)
        for (int64_t b = 0; b < 4; ++b)
          for (int64_t e = 0; e < 2; ++e)
            EXPECT_EQ(h_stored_column(block + 8 * a + 2 * b + e, R, Activation::SwiGLU),
                      block + 2 * (groups * b + a) + e)
                << "R=" << R << " block=" << block << " a=" << a << " b=" << b;
    }
  }
  // Spelled out for one full block: stored order of columns 0..31.
  const int64_t expect[32] = {0, 1, 8,  9,  16, 17, 24, 25, 2, 3, 10, 11, 18, 19, 26, 27,
                              4, 5, 12, 13, 20, 21, 28, 29, 6, 7, 14, 15, 22, 23, 30, 31};
  for (int64_t s = 0; s < 32; ++s)
    EXPECT_EQ(h_stored_column(expect[s], 32, Activation::SwiGLU), s) << s;
}

TEST(HLayout, NonGatedRowsAreNatural) {
  for (Activation a : kPlain)
    for (int64_t R : {int64_t{8}, int64_t{24}, int64_t{40}, int64_t{4096}})
      for (int64_t j = 0; j < R; ++j) ASSERT_EQ(h_stored_column(j, R, a), j);
}

TEST(HLayout, CAbiAgreesAndChecksItsArguments) {
  int64_t s = -1;
  for (int64_t j = 0; j < 48; ++j) {
    ASSERT_EQ(smoe_h_stored_column(j, 48, 0, &s), SMOE_STATUS_OK) << smoe_last_error();
    EXPECT_EQ(s, h_stored_column(j, 48, Activation::SwiGLU));
    ASSERT_EQ(smoe_h_stored_column(j, 48, 4, &s), SMOE_STATUS_OK) << smoe_last_error();
    EXPECT_EQ(s, j);
  }
  auto fails = [](int64_t j, int64_t R, int32_t a, int64_t* out, const std::string& expect) {
    EXPECT_EQ(smoe_h_stored_column(j, R, a, out), SMOE_STATUS_INVALID_ARGUMENT);
    const std::string msg = smoe_last_error();
    EXPECT_NE(msg.find(expect), std::string::npos) << msg;
  };
  fails(48, 48, 0, &s, "'column'");
  fails(-1, 48, 0, &s, "'column'");
  fails(0, 40, 0, &s, "multiple of 16");  // gated: 2n with n a multiple of 8
  fails(0, 12, 4, &s, "multiple of 8");
  fails(0, 0, 4, &s, "'width'");
  fails(0, 48, 7, &s, "'activation'");
  fails(0, 48, 0, nullptr, "'stored'");
}

}  // namespace
}  // namespace sonicmoe
