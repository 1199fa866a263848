#include "layer.hpp"

namespace sonicmoe::bench {

namespace {

MoeProblem moe_problem(const Problem& p) {
  return MoeProblem{p.T, p.H, p.I, p.E, p.capacity(), p.act};
}

}  // namespace

WorkspaceSizes query_workspaces(const Problem& p, Device dev) {
  WorkspaceSizes ws;
  ws.routing = routing_workspace_size(dev, p.T, p.E, p.capacity());
  if (p.rounded()) ws.rounding = round_routing_workspace_size(dev, p.T, p.E);
  ws.forward = moe_forward_workspace_size(dev, moe_problem(p), ForwardMode::Training);
  ws.backward = moe_backward_workspace_size(dev, moe_problem(p));
  return ws;
}

int64_t layer_bytes(const Problem& p, const WorkspaceSizes& ws) {
  const int64_t T = p.T, d = p.H, n = p.I, E = p.E, R = p.R(), N = p.capacity();
  const int64_t bf16_elems = 2 * (T * d)            // x, dout
                             + 2 * (E * R * d)      // w1, dw1
                             + 2 * (E * d * n)      // w2, dw2
                             + (p.bias ? 2 * (E * R + E * d) : 0)  // b1, b2, db1, db2
                             + 2 * (T * d)          // out, dx
                             + N * R;               // h
  const int64_t four_byte_elems = 2 * (T * p.E)     // logits, dlogits
                                  + 2 * p.pairs()   // top-K scores, expert ids
                                  + N               // dscores
                                  + (p.rounded() ? 3 * N + 1 : 0)  // rounded pairs
                                  + E + (E + 1) + (T + 1) + 3 * N;  // routing
  return bf16_elems * 2 + four_byte_elems * 4 +
         static_cast<int64_t>(ws.routing + ws.forward + ws.backward + ws.rounding);
}

BenchLayer::BenchLayer(const Problem& p, Device dev, const WorkspaceSizes& ws) : p_(p) {
  using testing::make;
  const int64_t T = p.T, d = p.H, n = p.I, E = p.E, K = p.K, R = p.R(), N = p.capacity();
  logits = make(dev, DType::F32, {T, E});
  x = make(dev, DType::BF16, {T, d});
  w1 = make(dev, DType::BF16, {E, R, d});
  w2 = make(dev, DType::BF16, {E, d, n});
  if (p.bias) {
    b1 = make(dev, DType::BF16, {E, R});
    b2 = make(dev, DType::BF16, {E, d});
  }
  dout = make(dev, DType::BF16, {T, d});

  scores = make(dev, DType::F32, {T, K});
  expert_ids = make(dev, DType::I32, {T, K});
  if (p.rounded()) {
    round_token = make(dev, DType::I32, {N});
    round_expert = make(dev, DType::I32, {N});
    round_score = make(dev, DType::F32, {N});
    num_pairs = make(dev, DType::I32, {1});
  }
  counts = make(dev, DType::I32, {E});
  expert_offsets = make(dev, DType::I32, {E + 1});
  token_offsets = make(dev, DType::I32, {T + 1});
  sorted_token = make(dev, DType::I32, {N});
  sorted_pair = make(dev, DType::I32, {N});
  pair_position = make(dev, DType::I32, {N});

  out = make(dev, DType::BF16, {T, d});
  h = make(dev, DType::BF16, {N, R});
  dx = make(dev, DType::BF16, {T, d});
  dw1 = make(dev, DType::BF16, {E, R, d});
  dw2 = make(dev, DType::BF16, {E, d, n});
  if (p.bias) {
    db1 = make(dev, DType::BF16, {E, R});
    db2 = make(dev, DType::BF16, {E, d});
  }
  // Per pair: [T, K] for top-K, [C] for the rounded routing.
  dscores = p.rounded() ? make(dev, DType::F32, {N}) : make(dev, DType::F32, {T, K});
  dlogits = make(dev, DType::F32, {T, E});

  routing_ws_ = std::make_unique<Buffer>(dev, ws.routing);
  forward_ws_ = std::make_unique<Buffer>(dev, ws.forward);
  backward_ws_ = std::make_unique<Buffer>(dev, ws.backward);
  if (p.rounded()) {
    rounding_ws_ = std::make_unique<Buffer>(dev, ws.rounding);
    round_ = RoundRoutingArgs{logits.t,      expert_ids.t,   scores.t,      p.routing.tile,
                              *p.routing.rounding, round_token.t, round_expert.t, round_score.t,
                              num_pairs.t,   rounding_ws_->workspace()};
  }
  // The layer's per-pair scores: the router's, or the rounded pairs'.
  const Tensor& pair_scores = p.rounded() ? round_score.t : scores.t;

  // The argument structs are built once: the timed loops then measure the
  // library calls and nothing of ours.
  router_ = RouterArgs{logits.t, K, p.order, false, scores.t, expert_ids.t};
  routing_ = Routing{counts.t,       expert_offsets.t, token_offsets.t,
                     sorted_token.t, sorted_pair.t,    pair_position.t};

  forward_.x = x.t;
  forward_.w1 = w1.t;
  forward_.b1 = b1.t;
  forward_.w2 = w2.t;
  forward_.b2 = b2.t;
  forward_.scores = pair_scores;
  forward_.routing = routing_;
  forward_.activation = p.act;
  forward_.mode = ForwardMode::Training;
  forward_.out = out.t;
  forward_.h = h.t;
  forward_.workspace = forward_ws_->workspace();

  backward_.x = x.t;
  backward_.w1 = w1.t;
  backward_.b1 = b1.t;
  backward_.w2 = w2.t;
  backward_.b2 = b2.t;
  backward_.scores = pair_scores;
  backward_.routing = routing_;
  backward_.activation = p.act;
  backward_.h = h.t;
  backward_.dout = dout.t;
  backward_.dx = dx.t;
  backward_.dw1 = dw1.t;
  backward_.db1 = db1.t;
  backward_.dw2 = dw2.t;
  backward_.db2 = db2.t;
  backward_.dscores = dscores.t;
  backward_.workspace = backward_ws_->workspace();

  router_backward_ = RouterBackwardArgs{logits.t, expert_ids.t, dscores.t, p.order, false,
                                        dlogits.t};
}

void BenchLayer::forward(Stream s) const {
  router_forward(router_, s);
  if (p_.rounded()) {
    round_routing(round_, s);
    routing_from_pairs(round_token.t, round_expert.t, p_.T, p_.E, routing_,
                       routing_ws_->workspace(), s);
  } else {
    routing_from_topk(expert_ids.t, p_.E, routing_, routing_ws_->workspace(), s);
  }
  moe_forward(forward_, s);
}

void BenchLayer::backward(Stream s) const {
  moe_backward(backward_, s);
  if (!p_.rounded()) router_backward(router_backward_, s);
}

void BenchLayer::round(Stream s) const {
  if (p_.rounded()) round_routing(round_, s);
}

int64_t BenchLayer::computed_pairs() const {
  if (!p_.rounded()) return p_.pairs();
  int32_t n = 0;
  num_pairs.buf->download(&n);
  return n;
}

void BenchLayer::poison_outputs() const {
  for (const DevTensor* t : {&scores, &expert_ids, &counts, &expert_offsets, &token_offsets,
                             &sorted_token, &sorted_pair, &pair_position, &round_token,
                             &round_expert, &round_score, &num_pairs, &out, &h, &dx, &dw1,
                             &db1, &dw2, &db2, &dscores, &dlogits})
    if (t->buf) t->buf->poison();
}

}  // namespace sonicmoe::bench
