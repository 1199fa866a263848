// The CPU reference of the token-choice router and its backward, templated
// on the logits' storage type L and the math type Acc (float for the API,
// double for the finite-difference tests).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include <sonicmoe/bfloat16.hpp>

namespace sonicmoe::cpu {

// The order that picks the top K: larger value first, then lower index. NaN
// ranks below every number so that the order stays total.
template <class Acc>
inline bool ranks_before(Acc va, int64_t ia, Acc vb, int64_t ib) {
  if (std::isnan(va)) va = -std::numeric_limits<Acc>::infinity();
  if (std::isnan(vb)) vb = -std::numeric_limits<Acc>::infinity();
  return va > vb || (va == vb && ia < ib);
}

// Top-K of one row by K passes, each taking the best element that ranks
// after the previous pick: O(K E), no scratch.
template <class L, class Acc>
void topk_row(const L* z, int64_t E, int64_t K, int32_t* ids) {
  for (int64_t k = 0; k < K; ++k) {
    int64_t best = -1;
    for (int64_t e = 0; e < E; ++e) {
      const Acc v = static_cast<Acc>(to_float(z[e]));
      if (k > 0 && !ranks_before(static_cast<Acc>(to_float(z[ids[k - 1]])), ids[k - 1], v, e))
        continue;
      if (best < 0 || ranks_before(v, e, static_cast<Acc>(to_float(z[best])), best)) best = e;
    }
    ids[k] = static_cast<int32_t>(best);
  }
}

// Probabilities of the chosen slots given the ids. p_all (size E) receives
// the softmax over all E for SoftmaxThenTopK and is untouched otherwise.
template <class L, class Acc>
void scores_row(const L* z, int64_t E, int64_t K, const int32_t* ids, bool softmax_first,
                bool renormalize, Acc* s, Acc* p_all) {
  auto zf = [&](int64_t e) { return static_cast<Acc>(to_float(z[e])); };
  if (!softmax_first) {
    Acc m = zf(ids[0]);
    for (int64_t k = 1; k < K; ++k) m = std::max(m, zf(ids[k]));
    Acc sum = 0;
    for (int64_t k = 0; k < K; ++k) sum += (s[k] = std::exp(zf(ids[k]) - m));
    for (int64_t k = 0; k < K; ++k) s[k] /= sum;
    return;
  }
  Acc m = zf(0);
  for (int64_t e = 1; e < E; ++e) m = std::max(m, zf(e));
  Acc sum = 0;
  for (int64_t e = 0; e < E; ++e) sum += (p_all[e] = std::exp(zf(e) - m));
  for (int64_t e = 0; e < E; ++e) p_all[e] /= sum;
  Acc picked = 0;
  for (int64_t k = 0; k < K; ++k) picked += (s[k] = p_all[ids[k]]);
  if (renormalize)
    for (int64_t k = 0; k < K; ++k) s[k] /= picked;
}

// dlogits of one row. Scratch: s of size K, p_all of size E.
template <class L, class Acc>
void router_backward_row(const L* z, int64_t E, int64_t K, const int32_t* ids, const Acc* ds,
                         bool softmax_first, bool renormalize, Acc* s, Acc* p_all, L* dz) {
  scores_row<L, Acc>(z, E, K, ids, softmax_first, renormalize, s, p_all);
  Acc g = 0;  // sum_j s_j ds_j
  for (int64_t k = 0; k < K; ++k) g += s[k] * ds[k];
  Acc picked = 0;
  if (softmax_first)
    for (int64_t k = 0; k < K; ++k) picked += p_all[ids[k]];
  // Gradient w.r.t. the chosen value of slot k: for TopKThenSoftmax the
  // logit itself (s = softmax(z[ids]): s_k (ds_k - g)); for SoftmaxThenTopK
  // the probability p_{id_k} (ds_k, or (ds_k - g) / S when renormalised).
  auto slot_grad = [&](int64_t k) {
    if (!softmax_first) return s[k] * (ds[k] - g);
    return renormalize ? (ds[k] - g) / picked : ds[k];
  };
  Acc inner = 0;  // <p, dp> for the softmax over all E
  if (softmax_first)
    for (int64_t k = 0; k < K; ++k) inner += p_all[ids[k]] * slot_grad(k);
  for (int64_t e = 0; e < E; ++e) {
    Acc v = 0;  // summed over slots so that repeated ids add up
    for (int64_t k = 0; k < K; ++k)
      if (ids[k] == e) v += slot_grad(k);
    if (softmax_first) v = p_all[e] * (v - inner);
    if constexpr (std::is_same_v<L, bf16>) dz[e] = bf16(static_cast<float>(v));
    else dz[e] = static_cast<L>(v);
  }
}

}  // namespace sonicmoe::cpu
