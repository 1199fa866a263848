// Pieces the two check files (check.cpp: top-K, check_rounded.cpp: token
// rounding) share: error statistics and id validation.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "check.hpp"
#include "naive.hpp"
#include "sampled.hpp"

namespace sonicmoe::bench {

// Tokens of the sampled check.
inline constexpr int kSampleTokens = 16;

// max |lib - ref| and max |ref|, accumulated over several pieces of a tensor.
struct Stats {
  double max_abs = 0, ref_max = 0;
  template <class L, class R>
  void add(const L& lib, const R& ref) {
    if (lib.size() != ref.size())
      throw std::runtime_error("check: sizes differ: " + std::to_string(lib.size()) + " vs " +
                               std::to_string(ref.size()));
    for (size_t i = 0; i < lib.size(); ++i) {
      const double diff = std::abs(double(lib[i]) - double(ref[i]));
      // NaN (a poisoned element the library never wrote) never passes.
      max_abs = std::max(max_abs, std::isnan(diff) ? INFINITY : diff);
      ref_max = std::max(ref_max, std::abs(double(ref[i])));
    }
  }
  TensorError error(std::string name, std::string note) const {
    return TensorError{std::move(name), max_abs, ref_max, ref_max > 0 ? max_abs / ref_max : max_abs,
                       std::move(note)};
  }
};

inline std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

template <class V>
inline void append(V& dst, const V& src) {
  dst.insert(dst.end(), src.begin(), src.end());
}

// Ids outside [0, E) (poison, a bug) would make the oracles index out of
// bounds: report them and stop the check there.
inline bool ids_in_range(const std::vector<int32_t>& ids, int64_t E, std::vector<TensorError>& errors) {
  const auto bad = std::count_if(ids.begin(), ids.end(), [&](int32_t e) { return e < 0 || e >= E; });
  if (bad == 0) return true;
  errors.push_back(TensorError{"expert_ids", INFINITY, double(E - 1), INFINITY,
                               std::to_string(bad) + " ids outside [0, E): rest of check skipped"});
  return false;
}

// dW1 and dW2 (and db1, db2 with biases) of every expert against the full
// oracle's gradients.
inline void check_all_expert_grads(LayerAccess& access, int64_t num_experts,
                                   const testing::NaiveGrads& g, bool bias, const std::string& note,
                                   std::vector<TensorError>& errors) {
  testing::ExpertTensors lib;
  for (int32_t e = 0; e < num_experts; ++e) {
    const testing::ExpertTensors w = access.expert_grads(e);
    append(lib.w1, w.w1);
    append(lib.b1, w.b1);
    append(lib.w2, w.w2);
    append(lib.b2, w.b2);
  }
  auto whole = [&](const char* name, const std::vector<float>& l, const std::vector<double>& r) {
    Stats st;
    st.add(l, r);
    errors.push_back(st.error(name, note));
  };
  whole("dw1", lib.w1, g.dw1);
  whole("dw2", lib.w2, g.dw2);
  if (bias) {
    whole("db1", lib.b1, g.db1);
    whole("db2", lib.b2, g.db2);
  }
}

// dW1 and dW2 (and db1, db2 with biases) of the sampled experts against the
// sampled oracle, each accumulated over the experts into one error.
inline void check_expert_grads(LayerAccess& access, const std::vector<int32_t>& experts,
                               const testing::SampledReference& ref, bool bias,
                               const std::string& note, std::vector<TensorError>& errors) {
  Stats dw1, db1, dw2, db2;
  for (size_t x = 0; x < experts.size(); ++x) {
    const testing::ExpertTensors lib = access.expert_grads(experts[x]);
    dw1.add(lib.w1, ref.dw1[x]);
    dw2.add(lib.w2, ref.dw2[x]);
    if (bias) {
      db1.add(lib.b1, ref.db1[x]);
      db2.add(lib.b2, ref.db2[x]);
    }
  }
  errors.push_back(dw1.error("dw1", note));
  errors.push_back(dw2.error("dw2", note));
  if (bias) {
    errors.push_back(db1.error("db1", note));
    errors.push_back(db2.error("db2", note));
  }
}

}  // namespace sonicmoe::bench
