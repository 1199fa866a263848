// The README's example: one MoE layer forward and backward on CPU tensors.
// Built and run by CTest so that the README cannot drift from the API.
#include <sonicmoe/sonicmoe.hpp>

#include <cstdio>
#include <vector>

using namespace sonicmoe;

int main() {
  const int64_t T = 16, d = 64, n = 32, E = 4, K = 2, R = 2 * n, N = T * K;  // SwiGLU
  std::vector<bf16> x(T * d, bf16(0.5f)), w1(E * R * d, bf16(0.01f)), w2(E * d * n, bf16(0.02f));
  std::vector<float> logits(T * E), scores(N);
  for (int64_t i = 0; i < T * E; ++i) logits[i] = static_cast<float>((i * 7919) % 13) * 0.1f;
  std::vector<int32_t> ids(N), counts(E), eoff(E + 1), toff(T + 1), stok(N), spair(N), ppos(N);
  auto t = [](auto& v, DType dt, std::initializer_list<int64_t> shape) {
    return Tensor::contiguous(v.data(), dt, shape);
  };

  // 1. Router: top-K over the logits, softmax over the K.
  router_forward({t(logits, DType::F32, {T, E}), K, RouterOrder::TopKThenSoftmax, false,
                  t(scores, DType::F32, {T, K}), t(ids, DType::I32, {T, K})});

  // 2. Routing metadata (expert-sorted order, offsets, inverse positions).
  const Routing routing{t(counts, DType::I32, {E}), t(eoff, DType::I32, {E + 1}),
                        t(toff, DType::I32, {T + 1}), t(stok, DType::I32, {N}),
                        t(spair, DType::I32, {N}), t(ppos, DType::I32, {N})};
  std::vector<char> ws(routing_workspace_size({}, T, E, N) + 256);
  auto aligned = [](std::vector<char>& v) {
    return Workspace{reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(v.data()) + 255) & ~uintptr_t{255}),
                     v.size() - 256};
  };
  routing_from_topk(t(ids, DType::I32, {T, K}), E, routing, aligned(ws));

  // 3. Forward (training: keeps H) and backward.
  std::vector<bf16> out(T * d), h(N * R), dout(T * d, bf16(1.0f));
  const MoeProblem problem{T, d, n, E, N, Activation::SwiGLU};
  MoeForwardArgs f;
  f.x = t(x, DType::BF16, {T, d});
  f.w1 = t(w1, DType::BF16, {E, R, d});
  f.w2 = t(w2, DType::BF16, {E, d, n});
  f.scores = t(scores, DType::F32, {T, K});
  f.routing = routing;
  f.out = t(out, DType::BF16, {T, d});
  f.h = t(h, DType::BF16, {N, R});
  ws.resize(moe_forward_workspace_size({}, problem, ForwardMode::Training) + 256);
  f.workspace = aligned(ws);
  moe_forward(f);

  std::vector<bf16> dx(T * d), dw1(E * R * d), dw2(E * d * n);
  std::vector<float> dscores(N);
  MoeBackwardArgs b;
  b.x = f.x;
  b.w1 = f.w1;
  b.w2 = f.w2;
  b.scores = f.scores;
  b.routing = routing;
  b.h = f.h;
  b.dout = t(dout, DType::BF16, {T, d});
  b.dx = t(dx, DType::BF16, {T, d});
  b.dw1 = t(dw1, DType::BF16, {E, R, d});
  b.dw2 = t(dw2, DType::BF16, {E, d, n});
  b.dscores = t(dscores, DType::F32, {T, K});
  ws.resize(moe_backward_workspace_size({}, problem) + 256);
  b.workspace = aligned(ws);
  moe_backward(b);

  std::printf("out[0] = %g, dx[0] = %g, dscores[0] = %g\n", static_cast<float>(out[0]),
              static_cast<float>(dx[0]), dscores[0]);
  return 0;
}
