// The CPU backend: the reference implementation of every call, multi-threaded
// fp32 math. Tensor-sized temporaries come from the caller's workspace; the
// router keeps O(E) host scratch per thread.
#include <string>
#include <vector>

#include "backend/backend.hpp"
#include "common/workspace.hpp"
#include "cpu/moe_reference.hpp"
#include "cpu/parallel.hpp"
#include "cpu/router_reference.hpp"
#include "cpu/token_rounding.hpp"

namespace sonicmoe::cpu {
namespace {

using detail::WorkspaceCarver;

template <class P>
P* ptr(const Tensor& t) {
  return static_cast<P*>(t.data);
}

[[noreturn]] void bad_value(const char* call, const char* name, int64_t index, int64_t value,
                            const std::string& expected) {
  throw Error(Status::InvalidArgument, std::string("sonicmoe::") + call + ": argument '" + name +
                                           "': expected " + expected + ", got " +
                                           std::to_string(value) + " at flat index " +
                                           std::to_string(index));
}

void check_range(const char* call, const char* name, const int32_t* v, int64_t n, int64_t lo,
                 int64_t hi) {
  for (int64_t i = 0; i < n; ++i)
    if (v[i] < lo || v[i] >= hi)
      bad_value(call, name, i, v[i],
                "values in [" + std::to_string(lo) + ", " + std::to_string(hi) + ")");
}

// Expert ids of general routing: [0, E), or kNoExpert for a padding pair.
void check_pair_experts(const char* call, const int32_t* v, int64_t n, int64_t E) {
  for (int64_t i = 0; i < n; ++i)
    if ((v[i] < 0 || v[i] >= E) && v[i] != kNoExpert)
      bad_value(call, "expert_ids", i, v[i],
                "values in [0, " + std::to_string(E) + ") or " + std::to_string(kNoExpert) +
                    " (a padding pair)");
}

// Offsets must start at 0, end at `total` (at most `total` with
// `end_at_most`) and never decrease: then every range they delimit lies
// inside [0, total).
void check_offsets(const char* call, const char* name, const int32_t* off, int64_t n,
                   int64_t total, bool end_at_most = false) {
  if (off[0] != 0) bad_value(call, name, 0, off[0], "0");
  for (int64_t i = 1; i <= n; ++i)
    if (off[i] < off[i - 1] || off[i] > total)
      bad_value(call, name, i, off[i],
                "non-decreasing values in [" + std::to_string(off[i - 1]) + ", " +
                    std::to_string(total) + "]");
  if (!end_at_most && off[n] != total) bad_value(call, name, n, off[n], std::to_string(total));
}

// The kernels index through the metadata; check what keeps them in bounds.
// A pair with pair_position -1 is dropped (a padding pair of token
// rounding): it has no position, and positions [expert_offsets[E], N) belong
// to no expert.
void check_routing(const char* call, const Routing& r, int64_t T, int64_t E, int64_t N) {
  const auto* expert_offsets = ptr<const int32_t>(r.expert_offsets);
  const auto* pair_position = ptr<const int32_t>(r.pair_position);
  check_offsets(call, "routing.expert_offsets", expert_offsets, E, N, true);
  check_offsets(call, "routing.token_offsets", ptr<int32_t>(r.token_offsets), T, N);
  check_range(call, "routing.pair_position", pair_position, N, -1, N);
  int64_t dropped = 0;
  for (int64_t i = 0; i < N; ++i) dropped += pair_position[i] < 0;
  if (expert_offsets[E] != N - dropped)
    bad_value(call, "routing.expert_offsets", E, expert_offsets[E],
              std::to_string(N - dropped) + " (" + std::to_string(N) + " pairs, " +
                  std::to_string(dropped) + " dropped with pair_position -1)");
  const int64_t used = N - dropped;
  check_range(call, "routing.sorted_token", ptr<int32_t>(r.sorted_token), used, 0, T);
  check_range(call, "routing.sorted_pair", ptr<int32_t>(r.sorted_pair), used, 0, N);
  // Each pair is written by the one position that owns it: without this, a
  // non-permutation would let two threads write the same dscores entry. With
  // the count above, the used positions then name exactly the kept pairs.
  const auto* sorted_pair = ptr<const int32_t>(r.sorted_pair);
  for (int64_t p = 0; p < used; ++p)
    if (pair_position[sorted_pair[p]] != p)
      bad_value(call, "routing.pair_position", sorted_pair[p], pair_position[sorted_pair[p]],
                "the inverse of routing.sorted_pair (" + std::to_string(p) + ")");
}

// Counting sort of pairs by expert, stable in pair order. token_offsets must
// already be filled; `cursor` is E ints of workspace.
void build_routing(const int32_t* pair_expert, int64_t N, int64_t E, const Routing& r,
                   int32_t* cursor) {
  auto* counts = ptr<int32_t>(r.expert_counts);
  auto* offsets = ptr<int32_t>(r.expert_offsets);
  auto* sorted_token = ptr<int32_t>(r.sorted_token);
  auto* sorted_pair = ptr<int32_t>(r.sorted_pair);
  auto* pair_position = ptr<int32_t>(r.pair_position);
  const auto* token_offsets = ptr<const int32_t>(r.token_offsets);
  std::fill(counts, counts + E, 0);
  for (int64_t i = 0; i < N; ++i)
    if (pair_expert[i] != kNoExpert) ++counts[pair_expert[i]];
  offsets[0] = 0;
  for (int64_t e = 0; e < E; ++e) offsets[e + 1] = offsets[e] + counts[e];
  std::copy(offsets, offsets + E, cursor);
  int64_t t = 0;
  for (int64_t i = 0; i < N; ++i) {
    while (token_offsets[t + 1] <= i) ++t;
    if (pair_expert[i] == kNoExpert) {  // a padding pair: no position
      pair_position[i] = -1;
      continue;
    }
    const int32_t p = cursor[pair_expert[i]]++;
    sorted_token[p] = static_cast<int32_t>(t);
    sorted_pair[p] = static_cast<int32_t>(i);
    pair_position[i] = p;
  }
  // Unused positions hold 0, as on the GPU, so that they are valid indices.
  std::fill(sorted_token + offsets[E], sorted_token + N, 0);
  std::fill(sorted_pair + offsets[E], sorted_pair + N, 0);
}

template <class T, class Acc>
LayerView<T, Acc> view_of(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& w2,
                          const Tensor& b2, const Tensor& scores, const Routing& r,
                          const MoeProblem& p) {
  LayerView<T, Acc> L;
  L.T_ = p.num_tokens;
  L.d = p.hidden;
  L.n = p.intermediate;
  L.E = p.num_experts;
  L.N = p.num_pairs;
  L.act = p.activation;
  L.x = ptr<const T>(x);
  L.w1 = ptr<const T>(w1);
  L.b1 = b1.present() ? ptr<const T>(b1) : nullptr;
  L.w2 = ptr<const T>(w2);
  L.b2 = b2.present() ? ptr<const T>(b2) : nullptr;
  L.scores = ptr<const Acc>(scores);
  L.expert_offsets = ptr<const int32_t>(r.expert_offsets);
  L.token_offsets = ptr<const int32_t>(r.token_offsets);
  L.sorted_token = ptr<const int32_t>(r.sorted_token);
  L.sorted_pair = ptr<const int32_t>(r.sorted_pair);
  L.pair_position = ptr<const int32_t>(r.pair_position);
  return L;
}

struct ForwardScratch {
  float* a;
  float* y;
};
ForwardScratch carve_forward(WorkspaceCarver& w, const MoeProblem& p) {
  ForwardScratch s;
  s.a = w.take<float>(p.num_pairs * p.intermediate);
  s.y = w.take<float>(p.num_pairs * p.hidden);
  return s;
}

struct BackwardScratch {
  float* dh;
  float* ap;
  float* dxt;
};
BackwardScratch carve_backward(WorkspaceCarver& w, const MoeProblem& p) {
  const int64_t R = is_gated(p.activation) ? 2 * p.intermediate : p.intermediate;
  BackwardScratch s;
  s.dh = w.take<float>(p.num_pairs * R);
  s.ap = w.take<float>(p.num_pairs * p.intermediate);
  s.dxt = w.take<float>(p.num_pairs * p.hidden);
  return s;
}

template <class L>
void router_forward_typed(const RouterArgs& a) {
  const int64_t T = a.logits.shape[0], E = a.logits.shape[1], K = a.k;
  const bool softmax_first = a.order == RouterOrder::SoftmaxThenTopK;
  parallel_for(T, E * K, [&](int64_t t) {
    thread_local std::vector<float> p_all;
    p_all.resize(E);
    const L* z = ptr<const L>(a.logits) + t * E;
    int32_t* ids = ptr<int32_t>(a.expert_ids) + t * K;
    topk_row<L, float>(z, E, K, ids);
    scores_row<L, float>(z, E, K, ids, softmax_first, a.renormalize,
                         ptr<float>(a.scores) + t * K, p_all.data());
  });
}

template <class L>
void router_backward_typed(const RouterBackwardArgs& a) {
  const int64_t T = a.logits.shape[0], E = a.logits.shape[1], K = a.expert_ids.shape[1];
  const bool softmax_first = a.order == RouterOrder::SoftmaxThenTopK;
  parallel_for(T, E * K, [&](int64_t t) {
    thread_local std::vector<float> p_all, s;
    p_all.resize(E);
    s.resize(K);
    router_backward_row<L, float>(ptr<const L>(a.logits) + t * E, E, K,
                                  ptr<const int32_t>(a.expert_ids) + t * K,
                                  ptr<const float>(a.dscores) + t * K, softmax_first,
                                  a.renormalize, s.data(), p_all.data(), ptr<L>(a.dlogits) + t * E);
  });
}

template <class E>
void permute_rows(const Tensor& src, const Tensor& dst, int direction) {
  const int64_t experts = src.shape[0], rows = src.shape[1], n = rows / 2;
  const int64_t cols = src.ndim == 3 ? src.shape[2] : 1;
  const E* s = ptr<const E>(src);
  E* d = ptr<E>(dst);
  parallel_for(experts * rows, cols, [&](int64_t er) {
    const int64_t e = er / rows, r = er % rows;
    // Concatenated row r (gate j = r or up j = r - n) <-> interleaved row 2j (+1).
    const int64_t inter = r < n ? 2 * r : 2 * (r - n) + 1;
    const int64_t from = direction > 0 ? r : inter, to = direction > 0 ? inter : r;
    std::copy(s + (e * rows + from) * cols, s + (e * rows + from + 1) * cols,
              d + (e * rows + to) * cols);
  });
}

class CpuBackend final : public detail::Backend {
 public:
  const char* name() const override { return "cpu"; }

  void router_forward(const RouterArgs& a, Stream) override {
    if (a.logits.dtype == DType::BF16) router_forward_typed<bf16>(a);
    else router_forward_typed<float>(a);
  }

  void router_backward(const RouterBackwardArgs& a, Stream) override {
    check_range("router_backward", "expert_ids", ptr<const int32_t>(a.expert_ids),
                a.expert_ids.numel(), 0, a.logits.shape[1]);
    if (a.logits.dtype == DType::BF16) router_backward_typed<bf16>(a);
    else router_backward_typed<float>(a);
  }

  size_t routing_workspace_size(int64_t, int64_t num_experts, int64_t) override {
    WorkspaceCarver w;
    w.take<int32_t>(num_experts);
    return w.bytes();
  }

  void routing_from_topk(const Tensor& ids, int64_t E, const Routing& r, Workspace ws,
                         Stream) override {
    const int64_t T = ids.shape[0], K = ids.shape[1];
    const auto* e = ptr<const int32_t>(ids);
    check_range("routing_from_topk", "expert_ids", e, T * K, 0, E);
    auto* tok = ptr<int32_t>(r.token_offsets);
    for (int64_t t = 0; t <= T; ++t) tok[t] = static_cast<int32_t>(t * K);
    WorkspaceCarver w(ws.data);
    build_routing(e, T * K, E, r, w.take<int32_t>(E));
  }

  void routing_from_pairs(const Tensor& token_ids, const Tensor& expert_ids, int64_t T, int64_t E,
                          const Routing& r, Workspace ws, Stream) override {
    const int64_t N = token_ids.shape[0];
    const auto* tid = ptr<const int32_t>(token_ids);
    const auto* eid = ptr<const int32_t>(expert_ids);
    check_range("routing_from_pairs", "token_ids", tid, N, 0, T);
    check_pair_experts("routing_from_pairs", eid, N, E);
    for (int64_t i = 1; i < N; ++i)
      if (tid[i] < tid[i - 1])
        bad_value("routing_from_pairs", "token_ids", i, tid[i],
                  "non-decreasing token ids (pairs sorted by token), at least " +
                      std::to_string(tid[i - 1]));
    auto* tok = ptr<int32_t>(r.token_offsets);
    std::fill(tok, tok + T + 1, 0);
    for (int64_t i = 0; i < N; ++i) ++tok[tid[i] + 1];
    for (int64_t t = 0; t < T; ++t) tok[t + 1] += tok[t];
    WorkspaceCarver w(ws.data);
    build_routing(eid, N, E, r, w.take<int32_t>(E));
  }

  size_t round_routing_workspace_size(int64_t, int64_t) override { return 0; }

  void round_routing(const RoundRoutingArgs& a, Stream) override {
    check_range("round_routing", "topk_ids", ptr<const int32_t>(a.topk_ids), a.topk_ids.numel(),
                0, a.logits.shape[1]);
    cpu::round_routing(a);
  }

  size_t forward_workspace_size(const MoeProblem& p, ForwardMode) override {
    WorkspaceCarver w;
    carve_forward(w, p);
    return w.bytes();
  }

  void moe_forward(const MoeForwardArgs& a, const MoeProblem& p, Stream) override {
    check_routing("moe_forward", a.routing, p.num_tokens, p.num_experts, p.num_pairs);
    const auto L = view_of<bf16, float>(a.x, a.w1, a.b1, a.w2, a.b2, a.scores, a.routing, p);
    WorkspaceCarver w(a.workspace.data);
    const ForwardScratch s = carve_forward(w, p);
    bf16* h = a.mode == ForwardMode::Training ? ptr<bf16>(a.h) : nullptr;
    act::dispatch(p.activation, [&]<Activation A>() {
      cpu::moe_forward<A>(L, ptr<bf16>(a.out), h, s.a, s.y);
    });
  }

  size_t backward_workspace_size(const MoeProblem& p) override {
    WorkspaceCarver w;
    carve_backward(w, p);
    return w.bytes();
  }

  void moe_backward(const MoeBackwardArgs& a, const MoeProblem& p, Stream) override {
    check_routing("moe_backward", a.routing, p.num_tokens, p.num_experts, p.num_pairs);
    const auto L = view_of<bf16, float>(a.x, a.w1, a.b1, a.w2, a.b2, a.scores, a.routing, p);
    WorkspaceCarver w(a.workspace.data);
    const BackwardScratch s = carve_backward(w, p);
    auto opt = [](const Tensor& t) { return t.present() ? ptr<bf16>(t) : nullptr; };
    float* dscores = a.dscores.present() ? ptr<float>(a.dscores) : nullptr;
    act::dispatch(p.activation, [&]<Activation A>() {
      cpu::moe_backward<A>(L, ptr<const bf16>(a.h), ptr<const bf16>(a.dout), opt(a.dx),
                           opt(a.dw1), opt(a.db1), opt(a.dw2), opt(a.db2), dscores, s.dh, s.ap,
                           s.dxt);
    });
  }

  void permute_gate_up(const Tensor& src, const Tensor& dst, int direction, Stream) override {
    if (src.dtype == DType::BF16) permute_rows<bf16>(src, dst, direction);
    else permute_rows<float>(src, dst, direction);
  }
};

}  // namespace
}  // namespace sonicmoe::cpu

namespace sonicmoe::detail {

Backend& cpu_backend() {
  static cpu::CpuBackend backend;
  return backend;
}

}  // namespace sonicmoe::detail
