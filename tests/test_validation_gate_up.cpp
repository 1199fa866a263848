// Validation of interleave_gate_up and deinterleave_gate_up.
// (validation.hpp: what every validation test asserts.)
#include "validation.hpp"

namespace sonicmoe {
namespace {

using namespace validation_test;

// ========================================= interleave / deinterleave =======

using PermuteFn = void (*)(const Tensor&, const Tensor&, Stream);

class ValidationGateUp : public Validation {
 protected:
  static constexpr int64_t E = 2, R = 4, d = 8;
  DevTensor src = from_doubles(kCpu, DType::BF16, ramp(E * R * d, 1.0), {E, R, d});
  DevTensor dst = make(kCpu, DType::BF16, {E, R, d});
  DevTensor big = make(kCpu, DType::BF16, {2 * E, R, d});  // for overlapping views

  const std::vector<std::pair<PermuteFn, const char*>> fns = {
      {&interleave_gate_up, "interleave_gate_up"}, {&deinterleave_gate_up, "deinterleave_gate_up"}};

  void expect_fail(const Tensor& s, const Tensor& t, const std::vector<std::string>& parts,
                   Status status = Status::InvalidArgument) {
    const std::vector<double> before = testing::to_doubles(src);
    for (auto [fn, name] : fns) {
      SCOPED_TRACE(name);
      expect_error([&] { fn(s, t, nullptr); }, status, name, parts);
      EXPECT_TRUE(poisoned(dst)) << "dst written by a failed call";
    }
    EXPECT_EQ(testing::to_doubles(src), before);
  }
};

TEST_F(ValidationGateUp, ValidArgumentsRun) {
  for (auto [fn, name] : fns) {
    SCOPED_TRACE(name);
    EXPECT_NO_THROW(fn(src.t, dst.t, nullptr));
    DevTensor s2 = make(kCpu, DType::F32, {3, 6}), d2 = make(kCpu, DType::F32, {3, 6});
    EXPECT_NO_THROW(fn(s2.t, d2.t, nullptr));
  }
  EXPECT_FALSE(poisoned(dst));
}

TEST_F(ValidationGateUp, MissingTensors) {
  expect_fail(Tensor{}, dst.t, {"argument 'src' is required"});
  expect_fail(src.t, Tensor{}, {"argument 'dst' is required"});
}

TEST_F(ValidationGateUp, SrcWrongRank) {
  expect_fail(fresh(DType::BF16, {E * R * d}), dst.t,
              {"argument 'src'", "expected 2 dimensions [E, 2n] or 3 [E, 2n, d]",
               "got 1 dimensions"});
  expect_fail(fresh(DType::BF16, {E, R, d, 1}), dst.t,
              {"argument 'src'", "expected 2 dimensions [E, 2n] or 3 [E, 2n, d]",
               "got 4 dimensions"});
}

TEST_F(ValidationGateUp, SrcWrongDtype) {
  expect_fail(fresh(DType::I32, {E, R, d}), dst.t,
              {"argument 'src'", "expected dtype bf16 or f32", "got i32"});
}

TEST_F(ValidationGateUp, OddOrZeroRows) {
  expect_fail(fresh(DType::BF16, {E, 3, d}), dst.t,
              {"argument 'src'", "expected an even, positive shape[1] (2n rows: gate then up)",
               "got 3"});
  expect_fail(fresh(DType::BF16, {E, 0, d}), dst.t,
              {"argument 'src'", "expected an even, positive shape[1]", "got 0"});
}

TEST_F(ValidationGateUp, SrcLayout) {
  expect_fail(transposed(src.t), dst.t,
              {"argument 'src'", "expected a contiguous (row-major) tensor",
               "got strides [32, 1, 4]"});
  expect_fail(misaligned(src.t, 2), dst.t,
              {"argument 'src'", "expected 16-byte aligned data", "(offset 2)"});
  expect_fail(null_data(src.t), dst.t,
              {"argument 'src'", "expected a data pointer", "got nullptr"});
}

TEST_F(ValidationGateUp, DstWrongShapeOrDtype) {
  expect_fail(src.t, fresh(DType::BF16, {E, R, d + 1}),
              {"argument 'dst'", "expected shape [2, 4, 8]", "got [2, 4, 9]"});
  expect_fail(src.t, fresh(DType::BF16, {E, R * d}),
              {"argument 'dst'", "expected shape [2, 4, 8]", "got [2, 32]"});
  expect_fail(src.t, fresh(DType::F32, {E, R, d}),
              {"argument 'dst'", "expected dtype bf16", "got dtype f32"});
}

TEST_F(ValidationGateUp, DstLayout) {
  expect_fail(src.t, transposed(dst.t),
              {"argument 'dst'", "expected a contiguous (row-major) tensor",
               "got strides [32, 1, 4]"});
  expect_fail(src.t, misaligned(dst.t, 2),
              {"argument 'dst'", "expected 16-byte aligned data", "(offset 2)"});
  expect_fail(src.t, null_data(dst.t),
              {"argument 'dst'", "expected a data pointer", "got nullptr"});
}

TEST_F(ValidationGateUp, Devices) {
  expect_fail(src.t, on(dst.t, kCuda0),
              {"argument 'dst'", "expected a tensor on cpu:0 like the others",
               "got one on cuda:0"});
}

TEST_F(ValidationGateUp, CudaTensorsWithoutGpuBackend) {
  SKIP_IF_CUDA_DEVICE_PRESENT();
  expect_fail(on(src.t, kCuda0), on(dst.t, kCuda0), {"CUDA tensors cannot run"},
              Status::Unsupported);
}

TEST_F(ValidationGateUp, Overlap) {
  // In place, and two views of one buffer that share 16 bytes.
  for (auto [fn, name] : fns) {
    SCOPED_TRACE(name);
    Tensor a = big.t, b = big.t;
    a.shape[0] = b.shape[0] = E;
    expect_error([&] { fn(a, a, nullptr); }, Status::InvalidArgument, name,
                 {"argument 'dst'", "expected memory that does not overlap src",
                  "got an overlapping range"});
    b.data = static_cast<char*>(big.t.data) + E * R * d * 2 - 16;
    expect_error([&] { fn(a, b, nullptr); }, Status::InvalidArgument, name,
                 {"argument 'dst'", "expected memory that does not overlap src",
                  "got an overlapping range"});
    expect_error([&] { fn(b, a, nullptr); }, Status::InvalidArgument, name,
                 {"argument 'dst'", "got an overlapping range"});
    // Adjacent views do not overlap.
    b.data = static_cast<char*>(big.t.data) + E * R * d * 2;
    EXPECT_NO_THROW(fn(a, b, nullptr));
  }
}

// ------------------------------------------------------- regressions ---
// Each of these failed before the fix that came with it.

// Negative dimensions passed validation where a size was read from a
// tensor and not range-checked (check_scores and permute_gate_up in
// src/api/api.cpp): [-1, 4, -8] has 32 "elements".
TEST_F(ValidationGateUp, NegativeDimsAreRejected) {
  const Tensor s = Tensor::contiguous(src.t.data, DType::BF16, {-1, R, -d});
  const Tensor t = Tensor::contiguous(dst.t.data, DType::BF16, {-1, R, -d});
  expect_fail(s, t, {"argument 'src'", "-1"});
}

}  // namespace
}  // namespace sonicmoe
