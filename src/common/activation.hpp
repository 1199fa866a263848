// Activations and their derivatives, one definition for every backend.
//
// Gated activations take the pair (g, u) from interleaved columns (2j, 2j+1)
// and produce one value; the others map each column alone. Compiled as host
// code for the CPU reference (in float or double) and as device code for the
// GPU epilogues, so that both compute the same function (sigmoid: see there).
#pragma once

#include <cmath>
#include <type_traits>

#include <sonicmoe/types.hpp>

#if defined(__CUDACC__)
#define SMOE_HD __host__ __device__ __forceinline__
#else
#define SMOE_HD inline
#endif

namespace sonicmoe::act {

// On the GPU, float sigmoid uses the fast exponential and division (a few
// ulps of fp32, far below the bf16 rounding of every result): the IEEE
// division brings a slow-path call into the epilogues, with its branches and
// the registers of a call.
#if defined(__CUDA_ARCH__)
// 2^x flushing denormal results to zero. __expf's ex2.approx.f32 keeps them,
// at three more instructions per call (a range test and two scalings); in
// sigmoid a denormal exp(-x) is lost in 1 + exp(-x) anyway, so the result is
// bitwise the same.
__device__ __forceinline__ float ex2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
#endif

template <class F>
SMOE_HD F sigmoid(F x) {
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<F, float>)
    return __fdividef(1.0f, 1.0f + ex2_ftz(x * -1.4426950408889634f));
#endif
  return F(1) / (F(1) + std::exp(-x));
}

// GeLU, erf form (PyTorch's default nn.GELU()).
template <class F>
SMOE_HD F gelu(F x) {
  return F(0.5) * x * (F(1) + std::erf(x * F(0.70710678118654752440)));
}
template <class F>
SMOE_HD F gelu_grad(F x) {
  const F cdf = F(0.5) * (F(1) + std::erf(x * F(0.70710678118654752440)));
  const F pdf = F(0.39894228040143267794) * std::exp(F(-0.5) * x * x);
  return cdf + x * pdf;
}

template <class F>
SMOE_HD F silu(F x) {
  return x * sigmoid(x);
}
template <class F>
SMOE_HD F silu_grad(F x) {
  // s (1 + x (1 - s)) = s + y (1 - s), y = x s = silu(x): the epilogues
  // that need the gradient compute silu(x) too, so this form costs a
  // subtraction and a fused multiply-add where the first took a product more.
  const F s = sigmoid(x), y = x * s;
  return s + y * (F(1) - s);
}

template <class F>
SMOE_HD F relu(F x) {
  return x > F(0) ? x : F(0);
}
template <class F>
SMOE_HD F relu_grad(F x) {
  return x > F(0) ? F(1) : F(0);
}

// The gate nonlinearity of a gated activation, or the activation itself.
template <Activation A, class F>
SMOE_HD F inner(F x) {
  if constexpr (A == Activation::SwiGLU || A == Activation::SiLU) return silu(x);
  if constexpr (A == Activation::GeGLU || A == Activation::GeLU) return gelu(x);
  if constexpr (A == Activation::ReGLU || A == Activation::ReLU) return relu(x);
  if constexpr (A == Activation::ReLU2) return relu(x) * relu(x);
}
template <Activation A, class F>
SMOE_HD F inner_grad(F x) {
  if constexpr (A == Activation::SwiGLU || A == Activation::SiLU) return silu_grad(x);
  if constexpr (A == Activation::GeGLU || A == Activation::GeLU) return gelu_grad(x);
  if constexpr (A == Activation::ReGLU || A == Activation::ReLU) return relu_grad(x);
  if constexpr (A == Activation::ReLU2) return F(2) * relu(x);
}

// Gated: a = inner(g) * u.  Backward from da: dg = da * u * inner'(g),
// du = da * inner(g).
template <Activation A, class F>
SMOE_HD F gated(F g, F u) {
  return inner<A>(g) * u;
}
template <Activation A, class F>
SMOE_HD void gated_grad(F g, F u, F da, F& dg, F& du) {
  dg = da * u * inner_grad<A>(g);
  du = da * inner<A>(g);
}

// Calls f.template operator()<A>() with A the run-time activation as a
// compile-time constant: the one place where the enum becomes a template
// parameter.
template <class Fn>
decltype(auto) dispatch(Activation a, Fn&& f) {
  switch (a) {
    case Activation::SwiGLU: return f.template operator()<Activation::SwiGLU>();
    case Activation::GeGLU: return f.template operator()<Activation::GeGLU>();
    case Activation::ReGLU: return f.template operator()<Activation::ReGLU>();
    case Activation::GeLU: return f.template operator()<Activation::GeLU>();
    case Activation::ReLU: return f.template operator()<Activation::ReLU>();
    case Activation::ReLU2: return f.template operator()<Activation::ReLU2>();
    case Activation::SiLU: return f.template operator()<Activation::SiLU>();
  }
  return f.template operator()<Activation::SwiGLU>();
}

}  // namespace sonicmoe::act
