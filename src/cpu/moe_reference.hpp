// The CPU reference of the MoE layer: the oracle of every GPU test.
//
// It follows ../shared/SONICMOE.md step by step, on the same metadata the
// GPU uses, and is templated on the storage type T of the "bf16" tensors and
// the accumulation type Acc: the backend runs <bf16, float> (fp32 math on
// bf16 tensors); the gradient tests run <double, double> so that finite
// differences can check this very code. Temporaries (A, Y, dH, A', dX~) are
// kept in Acc: the reference rounds only where the API's outputs are bf16.
//
// Parallel loops partition outputs, never reductions, so results do not
// depend on the thread count.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include <sonicmoe/bfloat16.hpp>

#include "common/activation.hpp"
#include "cpu/parallel.hpp"

namespace sonicmoe::cpu {

template <class T, class Acc>
struct LayerView {
  int64_t T_ = 0, d = 0, n = 0, E = 0, N = 0;
  Activation act = Activation::SwiGLU;
  const T* x = nullptr;   // [T, d]
  const T* w1 = nullptr;  // [E, R, d]
  const T* b1 = nullptr;  // [E, R] or null
  const T* w2 = nullptr;  // [E, d, n]
  const T* b2 = nullptr;  // [E, d] or null
  const Acc* scores = nullptr;  // [N], pair order
  const int32_t* expert_offsets = nullptr;  // [E+1]
  const int32_t* token_offsets = nullptr;   // [T+1]
  const int32_t* sorted_token = nullptr;    // [N]
  const int32_t* sorted_pair = nullptr;     // [N]
  const int32_t* pair_position = nullptr;   // [N]

  int64_t R() const { return is_gated(act) ? 2 * n : n; }
  // Positions [used(), N) belong to no expert: padding pairs that routing
  // dropped (pair_position -1). Nothing is computed for them.
  int64_t used() const { return expert_offsets[E]; }
  int64_t expert_of(int64_t p) const {
    return std::upper_bound(expert_offsets, expert_offsets + E + 1, static_cast<int32_t>(p)) -
           expert_offsets - 1;
  }
};

template <class Acc, class T>
inline Acc ld(T v) {
  return static_cast<Acc>(to_float(v));
}
template <class T, class Acc>
inline T st(Acc v) {
  if constexpr (std::is_same_v<T, bf16>) return bf16(static_cast<float>(v));
  else return static_cast<T>(v);
}

template <class Acc, class T>
inline Acc dot(const T* a, const T* b, int64_t len) {
  Acc s = 0;
  for (int64_t k = 0; k < len; ++k) s += ld<Acc>(a[k]) * ld<Acc>(b[k]);
  return s;
}

// Scratch: a [N, n], y [N, d]. h [N, R] may be null (inference); it is
// stored in the library's layout (h_stored_column, types.hpp), as every
// backend stores it.
template <Activation A, class T, class Acc>
void moe_forward(const LayerView<T, Acc>& L, T* out, T* h, Acc* a, Acc* y) {
  const int64_t d = L.d, n = L.n, R = L.R();
  // Up-projection with the gather and the activation.
  parallel_for(L.used(), R * d, [&](int64_t p) {
    const int64_t e = L.expert_of(p);
    const T* xr = L.x + int64_t{L.sorted_token[p]} * d;
    const T* w = L.w1 + e * R * d;
    auto pre = [&](int64_t j) {
      Acc v = dot<Acc>(xr, w + j * d, d) + (L.b1 ? ld<Acc>(L.b1[e * R + j]) : Acc(0));
      if (h) h[p * R + h_stored_column(j, R, A)] = st<T>(v);
      return v;
    };
    for (int64_t j = 0; j < n; ++j) {
      if constexpr (is_gated(A)) {
        const Acc g = pre(2 * j), u = pre(2 * j + 1);
        a[p * n + j] = act::gated<A>(g, u);
      } else {
        a[p * n + j] = act::inner<A>(pre(j));
      }
    }
  });
  // Down-projection.
  parallel_for(L.used(), d * n, [&](int64_t p) {
    const int64_t e = L.expert_of(p);
    const T* w = L.w2 + e * d * n;
    for (int64_t c = 0; c < d; ++c) {
      Acc s = L.b2 ? ld<Acc>(L.b2[e * d + c]) : Acc(0);
      for (int64_t j = 0; j < n; ++j) s += a[p * n + j] * ld<Acc>(w[c * n + j]);
      y[p * d + c] = s;
    }
  });
  // Score-weighted aggregation per token, in pair order.
  parallel_for(L.T_, d * 4, [&](int64_t t) {
    for (int64_t c = 0; c < d; ++c) {
      Acc s = 0;
      for (int64_t i = L.token_offsets[t]; i < L.token_offsets[t + 1]; ++i)
        if (L.pair_position[i] >= 0) s += L.scores[i] * y[int64_t{L.pair_position[i]} * d + c];
      out[t * d + c] = st<T>(s);
    }
  });
}

// Scratch: dh [N, R], ap [N, n] (A' = s * A), dxt [N, d]. A null output
// (dx, dw1, db1, dw2, db2, dscores) is not computed; the others do not change.
template <Activation A, class T, class Acc>
void moe_backward(const LayerView<T, Acc>& L, const T* h, const T* dout, T* dx, T* dw1, T* db1,
                  T* dw2, T* db2, Acc* dscores, Acc* dh, Acc* ap, Acc* dxt) {
  const int64_t d = L.d, n = L.n, R = L.R(), E = L.E;
  if (!dx && !dw1 && !db1 && !dw2 && !db2 && !dscores) return;
  // dH kernel: dA' = dO[t] W2_e; dS = <dA', A> (+ <dO[t], b2_e>); dH = act'(H) (s dA').
  if (dscores)
    for (int64_t i = 0; i < L.N; ++i)
      if (L.pair_position[i] < 0) dscores[i] = 0;
  parallel_for(L.used(), 2 * d * n, [&](int64_t p) {
    const int64_t e = L.expert_of(p), t = L.sorted_token[p], i = L.sorted_pair[p];
    const Acc s = L.scores[i];
    const T* go = dout + t * d;
    const T* w = L.w2 + e * d * n;
    Acc* dap = ap + p * n;  // holds dA' until overwritten by A' below
    std::fill(dap, dap + n, Acc(0));
    for (int64_t c = 0; c < d; ++c) {
      const Acc g = ld<Acc>(go[c]);
      for (int64_t j = 0; j < n; ++j) dap[j] += g * ld<Acc>(w[c * n + j]);
    }
    Acc ds = L.b2 ? dot<Acc>(go, L.b2 + e * d, d) : Acc(0);
    const T* hr = h + p * R;
    Acc* dhr = dh + p * R;
    for (int64_t j = 0; j < n; ++j) {
      const Acc da = s * dap[j];
      Acc aj;
      if constexpr (is_gated(A)) {
        // A pair stays adjacent in h's layout.
        const int64_t c = h_stored_column(2 * j, R, A);
        const Acc g = ld<Acc>(hr[c]), u = ld<Acc>(hr[c + 1]);
        aj = act::gated<A>(g, u);
        act::gated_grad<A>(g, u, da, dhr[2 * j], dhr[2 * j + 1]);
      } else {
        const Acc v = ld<Acc>(hr[j]);
        aj = act::inner<A>(v);
        dhr[j] = da * act::inner_grad<A>(v);
      }
      ds += dap[j] * aj;
      dap[j] = s * aj;
    }
    if (dscores) dscores[i] = ds;
  });

  // dW2_e[c, :] = sum_p dO[t_p, c] A'[p, :]; db2_e[c] = sum_p s_p dO[t_p, c].
  constexpr int64_t kB = 64;  // column block kept in registers/stack
  if (dw2 || db2) parallel_for(E * d, 2 * n * 16, [&](int64_t ec) {
    const int64_t e = ec / d, c = ec % d;
    const int64_t p0 = L.expert_offsets[e], p1 = L.expert_offsets[e + 1];
    for (int64_t j0 = 0; dw2 && j0 < n; j0 += kB) {
      const int64_t jb = std::min(kB, n - j0);
      Acc acc[kB] = {};
      for (int64_t p = p0; p < p1; ++p) {
        const Acc g = ld<Acc>(dout[int64_t{L.sorted_token[p]} * d + c]);
        for (int64_t jj = 0; jj < jb; ++jj) acc[jj] += g * ap[p * n + j0 + jj];
      }
      for (int64_t jj = 0; jj < jb; ++jj) dw2[(e * d + c) * n + j0 + jj] = st<T>(acc[jj]);
    }
    if (db2) {
      Acc s = 0;
      for (int64_t p = p0; p < p1; ++p)
        s += L.scores[L.sorted_pair[p]] * ld<Acc>(dout[int64_t{L.sorted_token[p]} * d + c]);
      db2[e * d + c] = st<T>(s);
    }
  });

  // dX~[p] = dH[p] W1_e.
  if (dx) parallel_for(L.used(), R * d, [&](int64_t p) {
    const int64_t e = L.expert_of(p);
    const T* w = L.w1 + e * R * d;
    Acc* row = dxt + p * d;
    std::fill(row, row + d, Acc(0));
    for (int64_t j = 0; j < R; ++j) {
      const Acc g = dh[p * R + j];
      for (int64_t k = 0; k < d; ++k) row[k] += g * ld<Acc>(w[j * d + k]);
    }
  });

  // dW1_e[j, :] = sum_p dH[p, j] X[t_p, :]; db1_e[j] = sum_p dH[p, j].
  if (dw1 || db1) parallel_for(E * R, 2 * d * 16, [&](int64_t ej) {
    const int64_t e = ej / R, j = ej % R;
    const int64_t p0 = L.expert_offsets[e], p1 = L.expert_offsets[e + 1];
    for (int64_t k0 = 0; dw1 && k0 < d; k0 += kB) {
      const int64_t kb = std::min(kB, d - k0);
      Acc acc[kB] = {};
      for (int64_t p = p0; p < p1; ++p) {
        const Acc g = dh[p * R + j];
        const T* xr = L.x + int64_t{L.sorted_token[p]} * d + k0;
        for (int64_t kk = 0; kk < kb; ++kk) acc[kk] += g * ld<Acc>(xr[kk]);
      }
      for (int64_t kk = 0; kk < kb; ++kk) dw1[(e * R + j) * d + k0 + kk] = st<T>(acc[kk]);
    }
    if (db1) {
      Acc s = 0;
      for (int64_t p = p0; p < p1; ++p) s += dh[p * R + j];
      db1[e * R + j] = st<T>(s);
    }
  });

  // dX[t] = sum over the token's pairs of dX~.
  if (dx) parallel_for(L.T_, d * 4, [&](int64_t t) {
    for (int64_t k = 0; k < d; ++k) {
      Acc s = 0;
      for (int64_t i = L.token_offsets[t]; i < L.token_offsets[t + 1]; ++i)
        if (L.pair_position[i] >= 0) s += dxt[int64_t{L.pair_position[i]} * d + k];
      dx[t * d + k] = st<T>(s);
    }
  });
}

}  // namespace sonicmoe::cpu
