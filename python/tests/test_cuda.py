"""GPU-only behaviour: CUDA-graph capture of forward + backward, the current
stream, the GPU's handling of out-of-range pairs. (The GPU kernels' accuracy
is covered by test_equivalence.py, which runs on cuda too when present.)"""

from __future__ import annotations

import pytest
import torch

from conftest import TOL, leaves, make_layer, needs_cuda, needs_lib, rel_err
from sonicmoe import MoE, moe_general_routing_inputs, moe_TC_softmax_topk_layer
from sonicmoe import reference
from sonicmoe.enums import ActivationType

pytestmark = [needs_cuda, needs_lib]


def _train_step(m, x, dout):
    out, aux = m(x)
    ((out.float() * dout).sum() + aux).backward()
    return out, aux


@pytest.mark.parametrize("act,bias,order", [("swiglu", False, "topk_then_softmax"),
                                            ("gelu", True, "softmax_then_topk")])
def test_cuda_graph_forward_backward_bitwise(act, bias, order):
    torch.manual_seed(0)
    T, H, I, E, K = 256, 128, 64, 8, 2
    m = MoE(E, K, H, I, act, bias, 0.05, router_order=order,
            renormalize=order == "softmax_then_topk").cuda().bfloat16()
    dout = torch.randn(T, H, device="cuda")
    static_x = torch.randn(T, H, device="cuda").bfloat16().requires_grad_()

    # Warm up on a side stream (lazy initialisation happens outside capture).
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            m.zero_grad(set_to_none=True)
            static_x.grad = None
            _train_step(m, static_x, dout)
    torch.cuda.current_stream().wait_stream(s)

    m.zero_grad(set_to_none=True)
    static_x.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out, static_aux = _train_step(m, static_x, dout)

    for seed in (1, 2):
        new_x = torch.randn(T, H, device="cuda", generator=torch.Generator("cuda")
                            .manual_seed(seed)).bfloat16()
        with torch.no_grad():
            static_x.copy_(new_x)
        graph.replay()
        torch.cuda.synchronize()
        replay = [static_out.clone(), static_aux.clone(), static_x.grad.clone()] + \
                 [p.grad.clone() for p in m.parameters()]

        # Eager on the same input, into fresh gradients.
        saved = [p.grad for p in m.parameters()]
        for p in m.parameters():
            p.grad = None
        x = new_x.clone().requires_grad_()
        out, aux = _train_step(m, x, dout)
        eager = [out, aux, x.grad] + [p.grad for p in m.parameters()]
        for p, g in zip(m.parameters(), saved):
            p.grad = g  # the graph's static gradient buffers
        for a, b in zip(replay, eager):
            assert torch.equal(a, b)


def test_runs_on_current_stream():
    p = make_layer(64, 64, 32, 8, device="cuda", seed=1)
    base, _, _ = moe_TC_softmax_topk_layer(p["x"], p["router_w"], p["w1"], None, p["w2"], None,
                                           2, "swiglu")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        # Delay the stream so that a kernel on another stream would race.
        torch.cuda._sleep(50_000_000)
        out, _, _ = moe_TC_softmax_topk_layer(p["x"], p["router_w"], p["w1"], None, p["w2"],
                                              None, 2, "swiglu")
        res = out.clone()
    torch.cuda.current_stream().wait_stream(s)
    assert torch.equal(res, base)


def test_gpu_drops_out_of_range_pairs():
    """No range check on CUDA (it would sync): the library drops bad pairs."""
    T, H, I, E = 32, 64, 32, 4
    p = make_layer(T, H, I, E, device="cuda", seed=2)
    tok = torch.arange(T, device="cuda").repeat_interleave(2).int()
    exp = torch.randint(0, E, (2 * T,), device="cuda").int()
    exp[5] = E + 3
    exp[9] = -1
    scores = torch.rand(2 * T, device="cuda")
    out, freq = moe_general_routing_inputs(p["x"], scores, tok, exp, p["w1"], None, p["w2"],
                                           None, E, "swiglu")
    torch.cuda.synchronize()
    keep = (exp >= 0) & (exp < E)
    want = reference.moe_reference(p["x"].float(), scores[keep], tok[keep], exp[keep],
                                   p["w1"].float(), None, p["w2"].float(), None,
                                   ActivationType.SWIGLU)
    assert rel_err(out, want) <= TOL
    assert int(freq.sum()) == int(keep.sum())


def test_no_host_sync_in_forward_backward():
    """The library path issues no synchronising call (it would raise here)."""
    p = make_layer(128, 64, 32, 8, bias=True, device="cuda", seed=3)
    q = leaves(p)
    moe_TC_softmax_topk_layer(q["x"], q["router_w"], q["w1"], q["b1"], q["w2"], q["b2"], 2,
                              "swiglu")  # warm-up (lazy init may sync)
    q = leaves(p)
    torch.cuda.set_sync_debug_mode("error")
    try:
        out, logits, freq = moe_TC_softmax_topk_layer(q["x"], q["router_w"], q["w1"], q["b1"],
                                                      q["w2"], q["b2"], 2, "swiglu")
        out.float().sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
