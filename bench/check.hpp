// Accuracy check of one run against the fp64 oracles of testing/: the whole
// layer through naive.hpp (`full`), or a sample through sampled.hpp.
//
// The check reads inputs and the library's results through LayerAccess, so
// the same code serves host buffers (CPU backend) and GPU buffers, from which
// only what the check needs is copied back.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "layer.hpp"
#include "problem.hpp"
#include "sampled.hpp"

namespace sonicmoe::bench {

struct TensorError {
  std::string name;
  double max_abs = 0;  // max |lib - ref| (infinite when the library wrote NaN)
  double ref_max = 0;  // max |ref|
  double rel = 0;      // max_abs / ref_max (max_abs when ref is all zero)
  std::string note;    // what was compared
};

// The rounded routing read back (token rounding only): the pairs before the
// padding tail, with their index in [0, capacity).
struct RoundedPairs {
  std::vector<int32_t> token, expert, index;
  std::vector<double> score;
};
// The pairs of [0, count) whose expert is not kNoExpert.
RoundedPairs collect_pairs(const std::vector<int32_t>& token, const std::vector<int32_t>& expert,
                           const std::vector<float>& score, int64_t count);

// Inputs (x, dout, w1, b1, w2, b2 from SampledInputs) and the router's and
// layer's results, as float (bf16 and f32 values are exact in float).
class LayerAccess : public testing::SampledInputs {
 public:
  virtual std::vector<float> logits_rows(const std::vector<int32_t>& tokens) = 0;   // [S, E]
  virtual std::vector<int32_t> expert_ids() = 0;                                     // [T*K]
  virtual std::vector<float> scores() = 0;                                           // [T*K]
  virtual std::vector<float> out_rows(const std::vector<int32_t>& tokens) = 0;       // [S, d]
  virtual std::vector<float> dx_rows(const std::vector<int32_t>& tokens) = 0;        // [S, d]
  // [S, K] for top-K; for a rounded routing `tokens` are pair indices.
  virtual std::vector<float> dscores_rows(const std::vector<int32_t>& tokens) = 0;   // [S, K]
  virtual std::vector<float> dlogits_rows(const std::vector<int32_t>& tokens) = 0;   // [S, E]
  // The library's dw1 / db1 / dw2 / db2 slices of one expert.
  virtual testing::ExpertTensors expert_grads(int32_t expert) = 0;
  virtual RoundedPairs rounded_pairs() = 0;
};

// Reads a BenchLayer whose tensors are in host memory (the CPU backend's).
class HostLayerAccess final : public LayerAccess {
 public:
  explicit HostLayerAccess(const BenchLayer& layer) : L_(layer) {}
  std::vector<float> x_rows(const std::vector<int32_t>& tokens) override;
  std::vector<float> dout_rows(const std::vector<int32_t>& tokens) override;
  testing::ExpertTensors expert_params(int32_t expert) override;
  std::vector<float> logits_rows(const std::vector<int32_t>& tokens) override;
  std::vector<int32_t> expert_ids() override;
  std::vector<float> scores() override;
  std::vector<float> out_rows(const std::vector<int32_t>& tokens) override;
  std::vector<float> dx_rows(const std::vector<int32_t>& tokens) override;
  std::vector<float> dscores_rows(const std::vector<int32_t>& tokens) override;
  std::vector<float> dlogits_rows(const std::vector<int32_t>& tokens) override;
  testing::ExpertTensors expert_grads(int32_t expert) override;
  RoundedPairs rounded_pairs() override;

 private:
  const BenchLayer& L_;
};

// Rows of a row-major host tensor of bf16 or f32, as float.
std::vector<float> host_rows(const DevTensor& t, const std::vector<int32_t>& rows);

// Every tensor against naive_forward / naive_backward / naive_router.
std::vector<TensorError> check_full(const Problem& p, LayerAccess& access);
// 16 tokens' rows and 2 experts' gradient slices against sampled.hpp, the
// router on those tokens against naive_router.
std::vector<TensorError> check_sampled(const Problem& p, LayerAccess& access);

// The router on `tokens` against naive_router: ids exactly, scores to the
// tolerance. Appends "expert_ids" and "scores".
void check_router(const Problem& p, const std::vector<int32_t>& tokens,
                  const std::vector<float>& logits, const std::vector<int32_t>& ids,
                  const std::vector<float>& scores, const std::string& note,
                  std::vector<TensorError>& errors);
// Token rounding (check_rounded.cpp): the router as above, then the layer's
// out, dx, dscores (padding pairs must be 0), dw1, dw2 (db1, db2) against
// the oracles run on the rounded pairs the library produced; no dlogits.
std::vector<TensorError> check_rounded(const Problem& p, LayerAccess& access);

// The check p.check asks for (full or sampled) on results already computed,
// with a line on the expert loads and one per tensor on stderr.
std::vector<TensorError> run_check(const Problem& p, LayerAccess& access, double tol,
                                   const std::string& tag);

}  // namespace sonicmoe::bench
