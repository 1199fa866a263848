// The plain C ABI (sonicmoe.h): bitwise agreement with the C++ API on a full
// CPU round trip, status codes and messages, NULL struct pointers, the
// thread-local last error, versions, and the struct layout FFI layers rely on.
#include <sonicmoe/sonicmoe.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <sonicmoe/sonicmoe.hpp>

#include "device_buffer.hpp"
#include "harness.hpp"

namespace sonicmoe {
namespace {

using testing::Buffer;
using testing::DevTensor;
using testing::from_doubles;
using testing::from_ints;
using testing::make;

const Device kCpu{};

// ------------------------------------------------------------ the ABI -----

// The layout is the ABI: ctypes/Rust/Julia mirror these structs by hand.
static_assert(sizeof(smoe_tensor_t) == 88);
static_assert(offsetof(smoe_tensor_t, data) == 0);
static_assert(offsetof(smoe_tensor_t, dtype) == 8);
static_assert(offsetof(smoe_tensor_t, device_type) == 12);
static_assert(offsetof(smoe_tensor_t, device_index) == 16);
static_assert(offsetof(smoe_tensor_t, ndim) == 20);
static_assert(offsetof(smoe_tensor_t, shape) == 24);
static_assert(offsetof(smoe_tensor_t, strides) == 56);
static_assert(sizeof(smoe_workspace_t) == 16);
static_assert(sizeof(smoe_routing_t) == 6 * sizeof(smoe_tensor_t));
static_assert(sizeof(smoe_problem_t) == 48);
static_assert(offsetof(smoe_problem_t, activation) == 40);
static_assert(sizeof(smoe_forward_args_t) == 14 * 88 + 8 + 16);
static_assert(offsetof(smoe_forward_args_t, activation) == 12 * 88);
static_assert(offsetof(smoe_forward_args_t, workspace) == 14 * 88 + 8);
static_assert(sizeof(smoe_backward_args_t) == 20 * 88 + 8 + 16);
static_assert(offsetof(smoe_backward_args_t, h) == 12 * 88 + 8);
static_assert(offsetof(smoe_backward_args_t, workspace) == 20 * 88 + 8);

// C constants and C++ enums are the same numbers.
static_assert(SMOE_STATUS_OK == static_cast<int>(Status::Ok));
static_assert(SMOE_STATUS_INVALID_ARGUMENT == static_cast<int>(Status::InvalidArgument));
static_assert(SMOE_STATUS_UNSUPPORTED == static_cast<int>(Status::Unsupported));
static_assert(SMOE_STATUS_CUDA_ERROR == static_cast<int>(Status::CudaError));
static_assert(SMOE_STATUS_INTERNAL == static_cast<int>(Status::Internal));
static_assert(SMOE_DTYPE_BF16 == static_cast<int>(DType::BF16));
static_assert(SMOE_DTYPE_F32 == static_cast<int>(DType::F32));
static_assert(SMOE_DTYPE_I32 == static_cast<int>(DType::I32));
static_assert(SMOE_DEVICE_CPU == static_cast<int>(DeviceType::CPU));
static_assert(SMOE_DEVICE_CUDA == static_cast<int>(DeviceType::CUDA));
static_assert(SMOE_ROUTER_TOPK_THEN_SOFTMAX == static_cast<int>(RouterOrder::TopKThenSoftmax));
static_assert(SMOE_ROUTER_SOFTMAX_THEN_TOPK == static_cast<int>(RouterOrder::SoftmaxThenTopK));
static_assert(SMOE_ACT_SWIGLU == static_cast<int>(Activation::SwiGLU));
static_assert(SMOE_ACT_GEGLU == static_cast<int>(Activation::GeGLU));
static_assert(SMOE_ACT_REGLU == static_cast<int>(Activation::ReGLU));
static_assert(SMOE_ACT_GELU == static_cast<int>(Activation::GeLU));
static_assert(SMOE_ACT_RELU == static_cast<int>(Activation::ReLU));
static_assert(SMOE_ACT_RELU2 == static_cast<int>(Activation::ReLU2));
static_assert(SMOE_ACT_SILU == static_cast<int>(Activation::SiLU));
static_assert(SMOE_MODE_TRAINING == static_cast<int>(ForwardMode::Training));
static_assert(SMOE_MODE_INFERENCE == static_cast<int>(ForwardMode::Inference));

smoe_tensor_t to_c(const Tensor& t) {
  smoe_tensor_t r{};
  r.data = t.data;
  r.dtype = static_cast<int32_t>(t.dtype);
  r.device_type = static_cast<int32_t>(t.device.type);
  r.device_index = t.device.index;
  r.ndim = t.ndim;
  for (int i = 0; i < 4; ++i) {
    r.shape[i] = t.shape[i];
    r.strides[i] = t.strides[i];
  }
  return r;
}

smoe_routing_t to_c(const Routing& r) {
  return smoe_routing_t{to_c(r.expert_counts), to_c(r.expert_offsets), to_c(r.token_offsets),
                        to_c(r.sorted_token),  to_c(r.sorted_pair),    to_c(r.pair_position)};
}

smoe_workspace_t to_c(Workspace w) { return smoe_workspace_t{w.data, w.bytes}; }

smoe_problem_t to_c(const MoeProblem& p) {
  smoe_problem_t r{};
  r.num_tokens = p.num_tokens;
  r.hidden = p.hidden;
  r.intermediate = p.intermediate;
  r.num_experts = p.num_experts;
  r.num_pairs = p.num_pairs;
  r.activation = static_cast<int32_t>(p.activation);
  return r;
}

std::vector<unsigned char> bytes_of(const DevTensor& d) {
  std::vector<unsigned char> b(d.buf ? d.buf->bytes() : 0);
  if (d.buf) d.buf->download(b.data());
  return b;
}

bool has(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

#define EXPECT_OK(expr) EXPECT_EQ((expr), SMOE_STATUS_OK) << smoe_last_error()
#define ASSERT_OK(expr) ASSERT_EQ((expr), SMOE_STATUS_OK) << smoe_last_error()

// ------------------------------------------------------ the round trip -----

// Every output of router -> routing -> forward -> backward -> router
// backward, and of the utilities, as raw bytes.
struct Outputs {
  std::vector<std::vector<unsigned char>> tensors;
  std::vector<size_t> workspace_sizes;
};

Outputs run_pipeline(const testing::Case& c, bool via_c) {
  const testing::NaiveLayer& L = c.layer;
  const int64_t T = L.T, d = L.d, n = L.n, E = L.E, R = L.R(), K = c.spec.K, N = T * K;
  const auto order = static_cast<int32_t>(c.spec.order);
  Outputs o;
  auto keep = [&](const DevTensor& t) { o.tensors.push_back(bytes_of(t)); };

  // Router.
  DevTensor logits = from_doubles(kCpu, DType::F32, c.logits, {T, E});
  DevTensor scores = make(kCpu, DType::F32, {T, K}), ids = make(kCpu, DType::I32, {T, K});
  if (via_c) {
    const smoe_tensor_t cl = to_c(logits.t), cs = to_c(scores.t), ci = to_c(ids.t);
    EXPECT_OK(smoe_router_forward(&cl, K, order, c.spec.renormalize, &cs, &ci, nullptr));
  } else {
    router_forward(RouterArgs{logits.t, K, c.spec.order, c.spec.renormalize, scores.t, ids.t});
  }
  keep(scores);
  keep(ids);

  // Routing metadata, from top-K and from pairs.
  DevTensor cnt = make(kCpu, DType::I32, {E}), off = make(kCpu, DType::I32, {E + 1}),
            tok = make(kCpu, DType::I32, {T + 1}), st = make(kCpu, DType::I32, {N}),
            sp = make(kCpu, DType::I32, {N}), pp = make(kCpu, DType::I32, {N});
  const Routing routing{cnt.t, off.t, tok.t, st.t, sp.t, pp.t};
  size_t rbytes = 0;
  if (via_c) EXPECT_OK(smoe_routing_workspace_size(SMOE_DEVICE_CPU, 0, T, E, N, &rbytes));
  else rbytes = routing_workspace_size(kCpu, T, E, N);
  o.workspace_sizes.push_back(rbytes);
  Buffer rws(kCpu, rbytes);
  if (via_c) {
    const smoe_tensor_t ci = to_c(ids.t);
    const smoe_routing_t cr = to_c(routing);
    EXPECT_OK(smoe_routing_from_topk(&ci, E, &cr, to_c(rws.workspace()), nullptr));
  } else {
    routing_from_topk(ids.t, E, routing, rws.workspace());
  }
  for (const DevTensor* t : {&cnt, &off, &tok, &st, &sp, &pp}) keep(*t);

  {
    // General routing with a token that has no pair.
    DevTensor ptok = from_ints(kCpu, {0, 0, 2, 2, 2, 3});
    DevTensor pexp = from_ints(kCpu, {1, 0, 4, 1, 3, 5});
    DevTensor a = make(kCpu, DType::I32, {E}), b = make(kCpu, DType::I32, {E + 1}),
              tt = make(kCpu, DType::I32, {5}), s1 = make(kCpu, DType::I32, {6}),
              s2 = make(kCpu, DType::I32, {6}), s3 = make(kCpu, DType::I32, {6});
    const Routing pr{a.t, b.t, tt.t, s1.t, s2.t, s3.t};
    Buffer pws(kCpu, routing_workspace_size(kCpu, 4, E, 6));
    if (via_c) {
      const smoe_tensor_t ct = to_c(ptok.t), ce = to_c(pexp.t);
      const smoe_routing_t cr = to_c(pr);
      EXPECT_OK(smoe_routing_from_pairs(&ct, &ce, 4, E, &cr, to_c(pws.workspace()), nullptr));
    } else {
      routing_from_pairs(ptok.t, pexp.t, 4, E, pr, pws.workspace());
    }
    for (const DevTensor* t : {&a, &b, &tt, &s1, &s2, &s3}) keep(*t);
  }

  // Forward.
  DevTensor x = from_doubles(kCpu, DType::BF16, L.x, {T, d});
  DevTensor w1 = from_doubles(kCpu, DType::BF16, L.w1, {E, R, d});
  DevTensor b1 = from_doubles(kCpu, DType::BF16, L.b1, {E, R});
  DevTensor w2 = from_doubles(kCpu, DType::BF16, L.w2, {E, d, n});
  DevTensor b2 = from_doubles(kCpu, DType::BF16, L.b2, {E, d});
  DevTensor out = make(kCpu, DType::BF16, {T, d}), h = make(kCpu, DType::BF16, {N, R});
  const MoeProblem problem{T, d, n, E, N, L.act};
  size_t fbytes = 0, ibytes = 0, bbytes = 0;
  if (via_c) {
    const smoe_problem_t cp = to_c(problem);
    EXPECT_OK(
        smoe_moe_forward_workspace_size(SMOE_DEVICE_CPU, 0, &cp, SMOE_MODE_TRAINING, &fbytes));
    EXPECT_OK(
        smoe_moe_forward_workspace_size(SMOE_DEVICE_CPU, 0, &cp, SMOE_MODE_INFERENCE, &ibytes));
    EXPECT_OK(smoe_moe_backward_workspace_size(SMOE_DEVICE_CPU, 0, &cp, &bbytes));
  } else {
    fbytes = moe_forward_workspace_size(kCpu, problem, ForwardMode::Training);
    ibytes = moe_forward_workspace_size(kCpu, problem, ForwardMode::Inference);
    bbytes = moe_backward_workspace_size(kCpu, problem);
  }
  o.workspace_sizes.insert(o.workspace_sizes.end(), {fbytes, ibytes, bbytes});
  Buffer fws(kCpu, fbytes);
  MoeForwardArgs fa;
  fa.x = x.t;
  fa.w1 = w1.t;
  fa.b1 = b1.t;
  fa.w2 = w2.t;
  fa.b2 = b2.t;
  fa.scores = scores.t;
  fa.routing = routing;
  fa.activation = L.act;
  fa.mode = ForwardMode::Training;
  fa.out = out.t;
  fa.h = h.t;
  fa.workspace = fws.workspace();
  if (via_c) {
    smoe_forward_args_t ca{};
    ca.x = to_c(fa.x);
    ca.w1 = to_c(fa.w1);
    ca.b1 = to_c(fa.b1);
    ca.w2 = to_c(fa.w2);
    ca.b2 = to_c(fa.b2);
    ca.scores = to_c(fa.scores);
    ca.routing = to_c(fa.routing);
    ca.activation = static_cast<int32_t>(fa.activation);
    ca.mode = SMOE_MODE_TRAINING;
    ca.out = to_c(fa.out);
    ca.h = to_c(fa.h);
    ca.workspace = to_c(fa.workspace);
    EXPECT_OK(smoe_moe_forward(&ca, nullptr));
  } else {
    moe_forward(fa);
  }
  keep(out);
  keep(h);

  // Inference mode: no h.
  DevTensor out_inf = make(kCpu, DType::BF16, {T, d});
  Buffer iws(kCpu, ibytes);
  if (via_c) {
    smoe_forward_args_t ca{};
    ca.x = to_c(fa.x);
    ca.w1 = to_c(fa.w1);
    ca.b1 = to_c(fa.b1);
    ca.w2 = to_c(fa.w2);
    ca.b2 = to_c(fa.b2);
    ca.scores = to_c(fa.scores);
    ca.routing = to_c(fa.routing);
    ca.activation = static_cast<int32_t>(fa.activation);
    ca.mode = SMOE_MODE_INFERENCE;
    ca.out = to_c(out_inf.t);  // ca.h stays all zeros: absent
    ca.workspace = to_c(iws.workspace());
    EXPECT_OK(smoe_moe_forward(&ca, nullptr));
  } else {
    MoeForwardArgs ia = fa;
    ia.mode = ForwardMode::Inference;
    ia.h = Tensor{};
    ia.out = out_inf.t;
    ia.workspace = iws.workspace();
    moe_forward(ia);
  }
  keep(out_inf);

  // Backward.
  DevTensor dout = from_doubles(kCpu, DType::BF16, c.dout, {T, d});
  DevTensor dx = make(kCpu, DType::BF16, {T, d}), dw1 = make(kCpu, DType::BF16, {E, R, d}),
            db1 = make(kCpu, DType::BF16, {E, R}), dw2 = make(kCpu, DType::BF16, {E, d, n}),
            db2 = make(kCpu, DType::BF16, {E, d}), dscores = make(kCpu, DType::F32, {T, K});
  Buffer bws(kCpu, bbytes);
  if (via_c) {
    smoe_backward_args_t cb{};
    cb.x = to_c(x.t);
    cb.w1 = to_c(w1.t);
    cb.b1 = to_c(b1.t);
    cb.w2 = to_c(w2.t);
    cb.b2 = to_c(b2.t);
    cb.scores = to_c(scores.t);
    cb.routing = to_c(routing);
    cb.activation = static_cast<int32_t>(L.act);
    cb.h = to_c(h.t);
    cb.dout = to_c(dout.t);
    cb.dx = to_c(dx.t);
    cb.dw1 = to_c(dw1.t);
    cb.db1 = to_c(db1.t);
    cb.dw2 = to_c(dw2.t);
    cb.db2 = to_c(db2.t);
    cb.dscores = to_c(dscores.t);
    cb.workspace = to_c(bws.workspace());
    EXPECT_OK(smoe_moe_backward(&cb, nullptr));
  } else {
    MoeBackwardArgs ba;
    ba.x = x.t;
    ba.w1 = w1.t;
    ba.b1 = b1.t;
    ba.w2 = w2.t;
    ba.b2 = b2.t;
    ba.scores = scores.t;
    ba.routing = routing;
    ba.activation = L.act;
    ba.h = h.t;
    ba.dout = dout.t;
    ba.dx = dx.t;
    ba.dw1 = dw1.t;
    ba.db1 = db1.t;
    ba.dw2 = dw2.t;
    ba.db2 = db2.t;
    ba.dscores = dscores.t;
    ba.workspace = bws.workspace();
    moe_backward(ba);
  }
  for (const DevTensor* t : {&dx, &dw1, &db1, &dw2, &db2, &dscores}) keep(*t);

  // Router backward from the layer's dscores.
  DevTensor dlogits = make(kCpu, DType::F32, {T, E});
  if (via_c) {
    const smoe_tensor_t cl = to_c(logits.t), ci = to_c(ids.t), cd = to_c(dscores.t),
                        cz = to_c(dlogits.t);
    EXPECT_OK(smoe_router_backward(&cl, &ci, &cd, order, c.spec.renormalize, &cz, nullptr));
  } else {
    router_backward(
        RouterBackwardArgs{logits.t, ids.t, dscores.t, c.spec.order, c.spec.renormalize,
                           dlogits.t});
  }
  keep(dlogits);

  // Gate/up permutations of W1.
  DevTensor inter = make(kCpu, DType::BF16, {E, R, d}), back = make(kCpu, DType::BF16, {E, R, d});
  if (via_c) {
    const smoe_tensor_t cs = to_c(w1.t), ci = to_c(inter.t), cb = to_c(back.t);
    EXPECT_OK(smoe_interleave_gate_up(&cs, &ci, nullptr));
    EXPECT_OK(smoe_deinterleave_gate_up(&cs, &cb, nullptr));
  } else {
    interleave_gate_up(w1.t, inter.t);
    deinterleave_gate_up(w1.t, back.t);
  }
  keep(inter);
  keep(back);
  return o;
}

TEST(CApiRoundTrip, SameBitsAsTheCppApi) {
  for (RouterOrder order : {RouterOrder::TopKThenSoftmax, RouterOrder::SoftmaxThenTopK}) {
    testing::CaseSpec spec;
    spec.T = 24;
    spec.d = 16;
    spec.n = 8;
    spec.E = 6;
    spec.K = 2;
    spec.bias = true;
    spec.order = order;
    spec.renormalize = true;
    spec.seed = 3;
    const testing::Case c = testing::make_case(spec);
    const Outputs cpp = run_pipeline(c, false);
    const Outputs cabi = run_pipeline(c, true);
    EXPECT_EQ(cpp.workspace_sizes, cabi.workspace_sizes);
    ASSERT_EQ(cpp.tensors.size(), cabi.tensors.size());
    for (size_t i = 0; i < cpp.tensors.size(); ++i) {
      EXPECT_EQ(cpp.tensors[i], cabi.tensors[i]) << "output #" << i << " differs";
      // Every output was written (the poison of make() is 0xff everywhere).
      bool all_ff = !cpp.tensors[i].empty();
      for (unsigned char b : cpp.tensors[i]) all_ff = all_ff && b == 0xff;
      EXPECT_FALSE(all_ff) << "output #" << i << " was never written";
    }
  }
}

// ------------------------------------------------ errors and messages -----

class CApiErrors : public ::testing::Test {
 protected:
  static constexpr int64_t T = 3, E = 4, K = 2;
  DevTensor logits = from_doubles(kCpu, DType::F32, {1, 2, 3, 4, 4, 3, 2, 1, 0, 0, 1, 0}, {T, E});
  DevTensor scores = make(kCpu, DType::F32, {T, K});
  DevTensor ids = make(kCpu, DType::I32, {T, K});
  smoe_tensor_t cl = to_c(logits.t), cs = to_c(scores.t), ci = to_c(ids.t);
};

TEST_F(CApiErrors, InvalidArgumentWithMessage) {
  EXPECT_EQ(smoe_router_forward(&cl, 0, 0, 0, &cs, &ci, nullptr), SMOE_STATUS_INVALID_ARGUMENT);
  const std::string msg = smoe_last_error();
  EXPECT_TRUE(has(msg, "sonicmoe::router_forward: argument 'k': expected a value in [1, 4], got 0"))
      << msg;
  EXPECT_TRUE(testing::to_doubles(scores)[0] != testing::to_doubles(scores)[0])
      << "scores written by a failed call (poison is NaN)";
}

TEST_F(CApiErrors, InvalidEnumValues) {
  EXPECT_EQ(smoe_router_forward(&cl, K, 2, 0, &cs, &ci, nullptr), SMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(has(smoe_last_error(), "argument 'order'")) << smoe_last_error();
  EXPECT_TRUE(has(smoe_last_error(), "got 2")) << smoe_last_error();

  smoe_problem_t p{4, 16, 8, 3, 8, 7, 0};
  size_t bytes = 12345;
  EXPECT_EQ(smoe_moe_forward_workspace_size(SMOE_DEVICE_CPU, 0, &p, SMOE_MODE_TRAINING, &bytes),
            SMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(has(smoe_last_error(),
                  "sonicmoe::moe_forward_workspace_size: argument 'activation': expected a value "
                  "in [0, 6], got 7"))
      << smoe_last_error();
  EXPECT_EQ(bytes, 12345u) << "bytes written by a failed call";
  p.activation = SMOE_ACT_SWIGLU;
  EXPECT_EQ(smoe_moe_forward_workspace_size(SMOE_DEVICE_CPU, 0, &p, 5, &bytes),
            SMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(has(smoe_last_error(), "argument 'mode'")) << smoe_last_error();
  EXPECT_TRUE(has(smoe_last_error(), "got 5")) << smoe_last_error();
  p.hidden = 12;
  EXPECT_EQ(smoe_moe_backward_workspace_size(SMOE_DEVICE_CPU, 0, &p, &bytes),
            SMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(has(smoe_last_error(),
                  "sonicmoe::moe_backward_workspace_size: argument 'problem.hidden': expected a "
                  "positive multiple of 8, got 12"))
      << smoe_last_error();
  EXPECT_EQ(bytes, 12345u);

  smoe_forward_args_t fa{};
  fa.activation = 7;
  EXPECT_EQ(smoe_moe_forward(&fa, nullptr), SMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(has(smoe_last_error(), "sonicmoe::moe_forward: argument 'activation'"))
      << smoe_last_error();
}

TEST_F(CApiErrors, AbsentTensorsInStructs) {
  // A zero-filled args struct: every tensor absent.
  smoe_forward_args_t fa{};
  EXPECT_EQ(smoe_moe_forward(&fa, nullptr), SMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(has(smoe_last_error(), "sonicmoe::moe_forward: argument 'x' is required"))
      << smoe_last_error();
  smoe_backward_args_t ba{};
  EXPECT_EQ(smoe_moe_backward(&ba, nullptr), SMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(has(smoe_last_error(), "sonicmoe::moe_backward: argument 'x' is required"))
      << smoe_last_error();
  const smoe_tensor_t none{};
  EXPECT_EQ(smoe_router_forward(&none, K, 0, 0, &cs, &ci, nullptr), SMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(has(smoe_last_error(), "argument 'logits' is required")) << smoe_last_error();
}

TEST_F(CApiErrors, ContentErrors) {
  DevTensor bad = from_ints(kCpu, {0, 1, 2, 9, 1, 0});
  Tensor bad2 = Tensor::contiguous(bad.t.data, DType::I32, {T, K});
  DevTensor cnt = make(kCpu, DType::I32, {E}), off = make(kCpu, DType::I32, {E + 1}),
            tok = make(kCpu, DType::I32, {T + 1}), st = make(kCpu, DType::I32, {T * K}),
            sp = make(kCpu, DType::I32, {T * K}), pp = make(kCpu, DType::I32, {T * K});
  const smoe_routing_t cr = to_c(Routing{cnt.t, off.t, tok.t, st.t, sp.t, pp.t});
  Buffer ws(kCpu, routing_workspace_size(kCpu, T, E, T * K));
  const smoe_tensor_t cb = to_c(bad2);
  EXPECT_EQ(smoe_routing_from_topk(&cb, E, &cr, to_c(ws.workspace()), nullptr),
            SMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(has(smoe_last_error(),
                  "sonicmoe::routing_from_topk: argument 'expert_ids': expected values in [0, 4), "
                  "got 9 at flat index 3"))
      << smoe_last_error();
  // Workspace too small.
  const smoe_tensor_t good = to_c(Tensor::contiguous(ids.t.data, DType::I32, {T, K}));
  std::vector<int32_t> fine = {0, 1, 2, 3, 1, 0};
  ids.buf->upload(fine.data());
  EXPECT_EQ(smoe_routing_from_topk(&good, E, &cr, smoe_workspace_t{ws.get(), 1}, nullptr),
            SMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(has(smoe_last_error(), "argument 'workspace': expected at least"))
      << smoe_last_error();
  EXPECT_OK(smoe_routing_from_topk(&good, E, &cr, to_c(ws.workspace()), nullptr));
}

TEST_F(CApiErrors, MixedDevicesAreInvalid) {
  smoe_tensor_t gs = cs;
  gs.device_type = SMOE_DEVICE_CUDA;
  EXPECT_EQ(smoe_router_forward(&cl, K, 0, 0, &gs, &ci, nullptr), SMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(has(smoe_last_error(), "argument 'scores': expected a tensor on cpu:0 like the others, "
                                     "got one on cuda:0"))
      << smoe_last_error();
}

TEST_F(CApiErrors, UnsupportedForCudaTensors) {
  // Host memory labelled CUDA must not reach a real GPU.
  if (smoe_cuda_device_count() > 0) GTEST_SKIP() << "a CUDA device is present";
  smoe_tensor_t gl = cl, gs = cs, gi = ci;
  gl.device_type = gs.device_type = gi.device_type = SMOE_DEVICE_CUDA;
  EXPECT_EQ(smoe_router_forward(&gl, K, 0, 0, &gs, &gi, nullptr), SMOE_STATUS_UNSUPPORTED);
  EXPECT_TRUE(has(smoe_last_error(), "CUDA tensors cannot run")) << smoe_last_error();
  size_t bytes = 777;
  EXPECT_EQ(smoe_routing_workspace_size(SMOE_DEVICE_CUDA, 0, T, E, T * K, &bytes),
            SMOE_STATUS_UNSUPPORTED);
  EXPECT_EQ(bytes, 777u);
  smoe_problem_t p{4, 16, 8, 3, 8, SMOE_ACT_SWIGLU, 0};
  EXPECT_EQ(smoe_moe_forward_workspace_size(SMOE_DEVICE_CUDA, 0, &p, SMOE_MODE_TRAINING, &bytes),
            SMOE_STATUS_UNSUPPORTED);
  EXPECT_EQ(smoe_moe_backward_workspace_size(SMOE_DEVICE_CUDA, 0, &p, &bytes),
            SMOE_STATUS_UNSUPPORTED);
  EXPECT_EQ(bytes, 777u);
}

TEST_F(CApiErrors, SuccessKeepsTheLastFailure) {
  EXPECT_EQ(smoe_router_forward(&cl, 9, 0, 0, &cs, &ci, nullptr), SMOE_STATUS_INVALID_ARGUMENT);
  const std::string before = smoe_last_error();
  ASSERT_TRUE(has(before, "got 9"));
  EXPECT_OK(smoe_router_forward(&cl, K, 0, 0, &cs, &ci, nullptr));
  EXPECT_EQ(std::string(smoe_last_error()), before);
}

// --------------------------------------------------------- NULL pointers --

// Each call with one NULL struct pointer: INVALID_ARGUMENT naming it.
TEST_F(CApiErrors, NullStructPointers) {
  DevTensor dz = make(kCpu, DType::F32, {T, E}), ds = make(kCpu, DType::F32, {T, K});
  const smoe_tensor_t cz = to_c(dz.t), cd = to_c(ds.t);
  const smoe_routing_t cr{};
  const smoe_problem_t cp{4, 16, 8, 3, 8, SMOE_ACT_SWIGLU, 0};
  const smoe_workspace_t ws{};
  size_t bytes = 0;
  struct Case {
    const char* what;
    const char* arg;
    std::function<smoe_status_t()> call;
  };
  const std::vector<Case> cases = {
      {"router_forward logits", "logits",
       [&] { return smoe_router_forward(nullptr, K, 0, 0, &cs, &ci, nullptr); }},
      {"router_forward scores", "scores",
       [&] { return smoe_router_forward(&cl, K, 0, 0, nullptr, &ci, nullptr); }},
      {"router_forward expert_ids", "expert_ids",
       [&] { return smoe_router_forward(&cl, K, 0, 0, &cs, nullptr, nullptr); }},
      {"router_backward logits", "logits",
       [&] { return smoe_router_backward(nullptr, &ci, &cd, 0, 0, &cz, nullptr); }},
      {"router_backward expert_ids", "expert_ids",
       [&] { return smoe_router_backward(&cl, nullptr, &cd, 0, 0, &cz, nullptr); }},
      {"router_backward dscores", "dscores",
       [&] { return smoe_router_backward(&cl, &ci, nullptr, 0, 0, &cz, nullptr); }},
      {"router_backward dlogits", "dlogits",
       [&] { return smoe_router_backward(&cl, &ci, &cd, 0, 0, nullptr, nullptr); }},
      {"routing_workspace_size bytes", "bytes",
       [&] { return smoe_routing_workspace_size(SMOE_DEVICE_CPU, 0, T, E, T * K, nullptr); }},
      {"routing_from_topk expert_ids", "expert_ids",
       [&] { return smoe_routing_from_topk(nullptr, E, &cr, ws, nullptr); }},
      {"routing_from_topk out", "out",
       [&] { return smoe_routing_from_topk(&ci, E, nullptr, ws, nullptr); }},
      {"routing_from_pairs token_ids", "token_ids",
       [&] { return smoe_routing_from_pairs(nullptr, &ci, T, E, &cr, ws, nullptr); }},
      {"routing_from_pairs expert_ids", "expert_ids",
       [&] { return smoe_routing_from_pairs(&ci, nullptr, T, E, &cr, ws, nullptr); }},
      {"routing_from_pairs out", "out",
       [&] { return smoe_routing_from_pairs(&ci, &ci, T, E, nullptr, ws, nullptr); }},
      {"moe_forward_workspace_size problem", "problem",
       [&] { return smoe_moe_forward_workspace_size(SMOE_DEVICE_CPU, 0, nullptr, 0, &bytes); }},
      {"moe_forward_workspace_size bytes", "bytes",
       [&] { return smoe_moe_forward_workspace_size(SMOE_DEVICE_CPU, 0, &cp, 0, nullptr); }},
      {"moe_backward_workspace_size problem", "problem",
       [&] { return smoe_moe_backward_workspace_size(SMOE_DEVICE_CPU, 0, nullptr, &bytes); }},
      {"moe_backward_workspace_size bytes", "bytes",
       [&] { return smoe_moe_backward_workspace_size(SMOE_DEVICE_CPU, 0, &cp, nullptr); }},
      {"moe_forward args", "args",
       [&] { return smoe_moe_forward(nullptr, nullptr); }},
      {"moe_backward args", "args",
       [&] { return smoe_moe_backward(nullptr, nullptr); }},
      {"interleave src", "src",
       [&] { return smoe_interleave_gate_up(nullptr, &cs, nullptr); }},
      {"interleave dst", "dst",
       [&] { return smoe_interleave_gate_up(&cs, nullptr, nullptr); }},
      {"deinterleave src", "src",
       [&] { return smoe_deinterleave_gate_up(nullptr, &cs, nullptr); }},
      {"deinterleave dst", "dst",
       [&] { return smoe_deinterleave_gate_up(&cs, nullptr, nullptr); }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    EXPECT_EQ(c.call(), SMOE_STATUS_INVALID_ARGUMENT);
    const std::string msg = smoe_last_error();
    EXPECT_TRUE(has(msg, std::string("argument '") + c.arg + "': expected a pointer, got NULL"))
        << msg;
  }
}

// ------------------------------------------------------- thread-local -----

TEST_F(CApiErrors, LastErrorIsThreadLocal) {
  ASSERT_EQ(smoe_router_forward(&cl, 0, 0, 0, &cs, &ci, nullptr), SMOE_STATUS_INVALID_ARGUMENT);
  const std::string mine = smoe_last_error();
  ASSERT_TRUE(has(mine, "argument 'k'")) << mine;

  std::string fresh_thread, other;
  std::thread th([&] {
    fresh_thread = smoe_last_error();
    smoe_router_forward(&cl, K, 2, 0, &cs, &ci, nullptr);
    other = smoe_last_error();
  });
  th.join();
  EXPECT_EQ(fresh_thread, "") << "a new thread must start with no message";
  EXPECT_TRUE(has(other, "argument 'order'")) << other;
  EXPECT_EQ(std::string(smoe_last_error()), mine) << "another thread's failure leaked here";
}

TEST_F(CApiErrors, ConcurrentFailuresKeepTheirOwnMessages) {
  std::atomic<int> mismatches{0};
  auto worker = [&](int64_t k, const std::string& expect) {
    // Each thread has its own output buffers: failing calls write nothing,
    // but keep threads independent anyway.
    DevTensor s = make(kCpu, DType::F32, {T, K}), i = make(kCpu, DType::I32, {T, K});
    const smoe_tensor_t ts = to_c(s.t), tid = to_c(i.t);
    for (int it = 0; it < 300; ++it) {
      if (smoe_router_forward(&cl, k, 0, 0, &ts, &tid, nullptr) != SMOE_STATUS_INVALID_ARGUMENT ||
          !has(smoe_last_error(), expect))
        ++mismatches;
      std::this_thread::yield();
    }
  };
  std::thread a(worker, 0, "got 0"), b(worker, 5, "got 5"), c(worker, -3, "got -3");
  a.join();
  b.join();
  c.join();
  EXPECT_EQ(mismatches.load(), 0);
}

// ------------------------------------------------------------ versions -----

TEST(CApiVersion, AbiAndLibraryVersion) {
  EXPECT_EQ(smoe_abi_version(), SMOE_ABI_VERSION);
  EXPECT_EQ(SMOE_ABI_VERSION, 1);
  ASSERT_NE(smoe_version(), nullptr);
  const std::string v = smoe_version();
  EXPECT_EQ(v, std::string(version()));
  // MAJOR.MINOR.PATCH
  int dots = 0;
  bool digits = !v.empty();
  for (char ch : v) {
    if (ch == '.') ++dots;
    else digits = digits && ch >= '0' && ch <= '9';
  }
  EXPECT_EQ(dots, 2) << v;
  EXPECT_TRUE(digits) << v;
}

TEST(CApiVersion, CudaDeviceCountAgreesAndNeverFails) {
  const int32_t n = smoe_cuda_device_count();
  EXPECT_GE(n, 0);
  EXPECT_EQ(n, cuda_device_count());
}

}  // namespace
}  // namespace sonicmoe

namespace sonicmoe {
namespace {

// The NULL-pointer message of the C ABI (SMOE_REQUIRE_PTR in
// src/api/c_api.cpp) names the function as well as the argument (it once
// named the argument alone).
TEST_F(CApiErrors, NullPointerMessageNamesTheFunction) {
  EXPECT_EQ(smoe_router_backward(nullptr, &ci, &cs, 0, 0, &cl, nullptr),
            SMOE_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(has(smoe_last_error(), "router_backward")) << smoe_last_error();
}

}  // namespace
}  // namespace sonicmoe
