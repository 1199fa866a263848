// Device building blocks of the routing kernels (routing.cu): the total
// order the top-K uses, warp-wide selection and sums, the two ways a warp
// holds one router row, and the per-slot gradient formulas of the router's
// backward. Everything here works on one row per warp, all 32 lanes active.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace sonicmoe::cuda::kernels {

inline constexpr int kWarp = 32;
inline constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
// Round to nearest even, like bf16(float) on the host.
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// --------------------------------------------------------- the top-K order --
// cpu::ranks_before compares values with NaN taken as -inf (so -0 == +0),
// then prefers the lower index. rank_key maps a value to a uint32 with that
// value order; the index breaks ties separately, so ids match the reference
// exactly. -inf maps to 0x007fffff, so key 0 ranks below every element and
// marks "no candidate" (padding lanes, taken slots).
inline constexpr uint32_t kNoCandidate = 0;

// Bit tests rather than float compares, so that flags such as -ftz or fast
// math cannot change the order (the reference keeps denormals distinct).
__device__ __forceinline__ bool is_nan(float v) {
  return (__float_as_uint(v) & 0x7fffffffu) > 0x7f800000u;
}

__device__ __forceinline__ uint32_t rank_key(float v) {
  uint32_t u = __float_as_uint(v);
  if (is_nan(v)) u = 0xff800000u;            // NaN ranks as -inf
  if ((u & 0x7fffffffu) == 0) u = 0;         // -0 ties with +0
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Inverse of rank_key (NaN comes back as -inf, -0 as +0).
__device__ __forceinline__ float key_value(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

// A lane's best remaining element. Element e always lives in lane e % 32.
struct Candidate {
  uint32_t key;
  int32_t index;
  float value;  // the logit as stored (NaN kept), for the softmax
};

__device__ __forceinline__ uint32_t warp_max(uint32_t v) {
#if __CUDA_ARCH__ >= 800
  return __reduce_max_sync(kFullMask, v);
#else  // no redux.sync before sm_80
  for (int d = kWarp / 2; d > 0; d /= 2) v = max(v, __shfl_xor_sync(kFullMask, v, d));
  return v;
#endif
}

// The warp's best candidate, on every lane: largest key, then lowest index.
// Two 32-bit max reductions (redux.sync) instead of a 64-bit shuffle tree.
__device__ __forceinline__ Candidate warp_best(const Candidate& c) {
  const uint32_t key = warp_max(c.key);
  const uint32_t low = warp_max(c.key == key ? ~static_cast<uint32_t>(c.index) : 0u);
  const auto index = static_cast<int32_t>(~low);
  return {key, index, __shfl_sync(kFullMask, c.value, index & (kWarp - 1))};
}

// Butterfly sum: every lane ends with the same bits (each step adds the same
// two operands, in either order), and the order never changes run to run.
template <class T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int d = kWarp / 2; d > 0; d /= 2) v += __shfl_xor_sync(kFullMask, v, d);
  return v;
}

// ------------------------------------------------------------- row holders --
// Both holders give the same interface to the selection loop:
//   candidate()  this lane's best remaining element
//   remove(w)    w (the warp's pick) is taken; only its owner lane changes,
//                since every other lane's candidate still ranks after w
//   exp_sum(m)   sum over the row of exp(z - m), before any remove()
// exp_sum accumulates in double: the CPU reference sums E floats in order,
// and its rounding (up to ~E * 2^-24) dominates the difference either way;
// double keeps the GPU's own part at one final rounding.

// E <= 32 * VPT: the row's keys live in registers, slot j of lane l holding
// element 32 j + l (coalesced loads for any E, no alignment needed).
template <class L, int VPT>
class RegisterRow {
 public:
  __device__ RegisterRow(const L* z, int32_t experts, int lane) : lane_(lane), experts_(experts) {
#pragma unroll
    for (int j = 0; j < VPT; ++j) {
      const int32_t e = j * kWarp + lane;
      const float v = e < experts ? to_float(z[e]) : 0.0f;
      key_[j] = e < experts ? rank_key(v) : kNoCandidate;
      if (is_nan(v)) nan_ |= 1u << j;
    }
    best_ = scan();
  }

  __device__ Candidate candidate() const { return best_; }

  __device__ void remove(const Candidate& taken) {
    if ((taken.index & (kWarp - 1)) != lane_) return;
    const int slot = taken.index / kWarp;
#pragma unroll
    for (int j = 0; j < VPT; ++j)  // a static index keeps key_ in registers
      if (j == slot) key_[j] = kNoCandidate;
    best_ = scan();
  }

  __device__ float exp_sum(float m) const {
    double s = 0;
#pragma unroll
    for (int j = 0; j < VPT; ++j)
      if (j * kWarp + lane_ < experts_) s += expf(value(j, key_[j]) - m);
    return static_cast<float>(warp_sum(s));
  }

 private:
  __device__ float value(int slot, uint32_t key) const {
    return (nan_ >> slot) & 1u ? __int_as_float(0x7fffffff) : key_value(key);
  }

  // Slots ascend with the element index, so a strict > keeps the lower index.
  __device__ Candidate scan() const {
    uint32_t key = kNoCandidate;
    int slot = 0;
#pragma unroll
    for (int j = 0; j < VPT; ++j)
      if (key_[j] > key) {
        key = key_[j];
        slot = j;
      }
    return {key, slot * kWarp + lane_, value(slot, key)};
  }

  uint32_t key_[VPT];
  uint32_t nan_ = 0;
  int lane_;
  int32_t experts_;
  Candidate best_;
};

// Any E: the row stays in memory (L1-resident after the first pass) and the
// owner of each pick rescans its elements that rank after the pick.
template <class L>
class StreamingRow {
 public:
  __device__ StreamingRow(const L* z, int32_t experts, int lane)
      : z_(z), experts_(experts), lane_(lane) {
    best_ = scan_after(nullptr);
  }

  __device__ Candidate candidate() const { return best_; }

  __device__ void remove(const Candidate& taken) {
    if ((taken.index & (kWarp - 1)) == lane_) best_ = scan_after(&taken);
  }

  __device__ float exp_sum(float m) const {
    double s = 0;
    for (int64_t e = lane_; e < experts_; e += kWarp) s += expf(to_float(z_[e]) - m);
    return static_cast<float>(warp_sum(s));
  }

 private:
  __device__ Candidate scan_after(const Candidate* bound) const {
    Candidate best{kNoCandidate, 0, 0.0f};
    for (int64_t e = lane_; e < experts_; e += kWarp) {
      const float v = to_float(z_[e]);
      const uint32_t key = rank_key(v);
      const bool after = !bound || key < bound->key || (key == bound->key && e > bound->index);
      if (after && key > best.key) best = {key, static_cast<int32_t>(e), v};
    }
    return best;
  }

  const L* z_;
  int32_t experts_;
  int lane_;
  Candidate best_;
};

// ---------------------------------------------------------- the selection --
// K rounds of warp arg-max. Slot k's score is formed as the reference forms
// it, and `total` adds them in slot order like the reference's sum. Lane k
// keeps slot k < 32 in registers for one coalesced store at the end; later
// slots go to memory as they come and are normalised by the lane that wrote
// them (its own writes, so no fence is needed).
template <bool kSoftmaxFirst, class Row>
__device__ void select_and_score(Row& row, int32_t k, bool renormalize, float* scores,
                                 int32_t* ids, int lane) {
  float m = 0.0f, denom = 1.0f, total = 0.0f, my_score = 0.0f;
  int32_t my_id = 0;
  for (int32_t slot = 0; slot < k; ++slot) {
    const Candidate pick = warp_best(row.candidate());
    if (slot == 0) {
      m = pick.value;  // the reference's max: the top logit
      if constexpr (kSoftmaxFirst) denom = row.exp_sum(m);
    }
    float s = expf(pick.value - m);
    if constexpr (kSoftmaxFirst) s /= denom;
    total += s;
    if (slot < kWarp) {
      if (lane == slot) {
        my_score = s;
        my_id = pick.index;
      }
    } else if (lane == slot % kWarp) {
      scores[slot] = s;
      ids[slot] = pick.index;
    }
    if (slot + 1 < k) row.remove(pick);
  }
  const bool normalize = !kSoftmaxFirst || renormalize;
  if (lane < k) {
    ids[lane] = my_id;
    scores[lane] = normalize ? my_score / total : my_score;
  }
  if (normalize)
    for (int32_t slot = lane + kWarp; slot < k; slot += kWarp) scores[slot] /= total;
}

// ------------------------------------------------------ router backward math --
// One slot of a row's top-K. An id outside [0, E) is an absent slot: it
// takes no part in any sum and receives no gradient.
struct Slot {
  int32_t id;
  bool valid;
  float ds;
  float z;
};

template <class L>
struct SlotView {
  const L* z;          // [E] logits of the row
  const int32_t* ids;  // [K]
  const float* ds;     // [K]
  int32_t experts;
  int32_t k;

  __device__ Slot load(int32_t slot) const {
    Slot s;
    s.id = ids[slot];
    s.valid = 0 <= s.id && s.id < experts;
    s.ds = ds[slot];
    s.z = s.valid ? to_float(z[s.id]) : 0.0f;
    return s;
  }

  // Sum of f(slot) over the valid slots, lanes striding over the slots.
  template <class F>
  __device__ float sum(int lane, F f) const {
    float acc = 0.0f;
    for (int32_t k0 = lane; k0 < k; k0 += kWarp) {
      const Slot s = load(k0);
      if (s.valid) acc += f(s);
    }
    return warp_sum(acc);
  }
};

// The reference's formulas (cpu::router_backward_row), split into the row
// scalars (computed once) and what each slot and each element needs. Each
// divisor is inverted once per row: an IEEE division inside the slot and
// element loops costs a slow-path subroutine call whose saved registers
// ptxas reports as spills; the product differs from the quotient by at most
// one rounding, far inside the backward's tolerance.
// TopKThenSoftmax: s = softmax(z[ids]); slot gradient s_k (ds_k - g),
// g = sum_j s_j ds_j; an element's gradient is the sum of its slots'.
struct TopKThenSoftmaxGrad {
  static constexpr bool kNeedsLogit = false;
  float m, inv_sum, g;

  template <class L>
  __device__ TopKThenSoftmaxGrad(const SlotView<L>& v, int lane) {
    uint32_t key = kNoCandidate;
    for (int32_t k0 = lane; k0 < v.k; k0 += kWarp) {
      const Slot s = v.load(k0);
      if (s.valid) key = max(key, rank_key(s.z));
    }
    m = key_value(warp_max(key));
    inv_sum = 1.0f / v.sum(lane, [&](const Slot& s) { return expf(s.z - m); });
    g = v.sum(lane, [&](const Slot& s) { return score(s) * s.ds; });
  }

  __device__ float score(const Slot& s) const { return expf(s.z - m) * inv_sum; }
  __device__ float slot_grad(const Slot& s) const { return score(s) * (s.ds - g); }
  __device__ float element(float slot_grads, float) const { return slot_grads; }
};

// SoftmaxThenTopK: p = softmax over all E; s_k = p[id_k] (/ picked when
// renormalised). Slot gradient w.r.t. p[id_k]: ds_k, or (ds_k - g) / picked;
// element gradient p_e (sum of its slots' gradients - <p, dp>).
struct SoftmaxThenTopKGrad {
  static constexpr bool kNeedsLogit = true;
  float m, inv_denom, inv_picked = 1.0f, g = 0.0f, inner;
  bool renormalize;

  template <class L>
  __device__ SoftmaxThenTopKGrad(const SlotView<L>& v, bool renorm, int lane) : renormalize(renorm) {
    uint32_t key = kNoCandidate;
    for (int64_t e = lane; e < v.experts; e += kWarp) key = max(key, rank_key(to_float(v.z[e])));
    m = key_value(warp_max(key));
    double s = 0;  // same order and precision as the forward's exp_sum
    for (int64_t e = lane; e < v.experts; e += kWarp) s += expf(to_float(v.z[e]) - m);
    inv_denom = 1.0f / static_cast<float>(warp_sum(s));
    if (renormalize) {
      inv_picked = 1.0f / v.sum(lane, [&](const Slot& sl) { return prob(sl.z); });
      g = v.sum(lane, [&](const Slot& sl) { return prob(sl.z) * inv_picked * sl.ds; });
    }
    inner = v.sum(lane, [&](const Slot& sl) { return prob(sl.z) * slot_grad(sl); });
  }

  __device__ float prob(float z) const { return expf(z - m) * inv_denom; }
  __device__ float slot_grad(const Slot& s) const {
    return renormalize ? (s.ds - g) * inv_picked : s.ds;
  }
  __device__ float element(float slot_grads, float z) const {
    return prob(z) * (slot_grads - inner);
  }
};

}  // namespace sonicmoe::cuda::kernels
