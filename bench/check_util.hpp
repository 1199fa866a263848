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

}  // namespace sonicmoe::bench
