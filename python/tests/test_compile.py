"""torch.compile(fullgraph=True) traces the layer through the custom ops and
gives the eager results.

With the aot_eager backend the compiled graph runs the very same kernels, so
forward and backward must match eager bit for bit. Inductor also compiles the
PyTorch parts around the library (the router's linear layer, the aux loss,
the sum of the two contributions to dx) with its own fused kernels, which
round differently from eager: there the library's output must still be
bitwise equal (the logits come from the same matmul) and the gradients equal
to within one bf16 rounding step of the largest entry.
"""

from __future__ import annotations

import pytest
import torch

from conftest import (DEVICES, general_routing, leaves, make_layer, module_step, needs_lib,
                      rel_err)
from sonicmoe import MoE, moe_general_routing_inputs, moe_TC_softmax_topk_layer


def _reset():
    torch._dynamo.reset()


def _topk_step(order, renorm, act, K):
    def step(x, router_w, w1, b1, w2, b2, dout):
        out, logits, freq = moe_TC_softmax_topk_layer(
            x, router_w, w1, b1, w2, b2, K, act, router_order=order, renormalize=renorm)
        return out, logits, freq

    return step


def _grads(p, names):
    return [p[n].grad for n in names if p.get(n) is not None]


def _run(step, p, dout, names):
    out, *rest = step(*[p[n] for n in names], dout)
    (out.float() * dout).sum().backward()
    return [out, *rest], _grads(p, names)


NAMES = ["x", "router_w", "w1", "b1", "w2", "b2"]


@needs_lib
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("order,renorm,act,bias", [
    ("topk_then_softmax", False, "swiglu", False),
    ("softmax_then_topk", True, "geglu", True),
    ("softmax_then_topk", False, "relu_sq", True),
])
def test_compiled_topk_layer_equals_eager_aot(order, renorm, act, bias, device):
    _reset()
    gated = act in ("swiglu", "geglu", "reglu")
    p = make_layer(48, 64, 32, 8, gated=gated, bias=bias, device=device, seed=21)
    dout = torch.randn(48, 64, device=device)
    step = _topk_step(order, renorm, act, 2)
    eager_out, eager_g = _run(step, leaves(p), dout, NAMES)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    comp_out, comp_g = _run(compiled, leaves(p), dout, NAMES)
    for a, b in zip(eager_out + eager_g, comp_out + comp_g):
        assert torch.equal(a, b)


@needs_lib
@pytest.mark.parametrize("device", DEVICES)
def test_compiled_general_routing_equals_eager_aot(device):
    _reset()
    T, H, I, E = 20, 32, 16, 5
    p = make_layer(T, H, I, E, bias=True, device=device, seed=8)
    del p["router_w"]
    scores, tok, exp = general_routing(T, E, device=device, seed=3)
    p["router_scores"] = scores
    names = ["x", "router_scores", "w1", "b1", "w2", "b2"]
    dout = torch.randn(T, H, device=device)

    def step(x, s, w1, b1, w2, b2, dout):
        return moe_general_routing_inputs(x, s, tok, exp, w1, b1, w2, b2, E, "swiglu")

    eager_out, eager_g = _run(step, leaves(p), dout, names)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    comp_out, comp_g = _run(compiled, leaves(p), dout, names)
    for a, b in zip(eager_out + eager_g, comp_out + comp_g):
        assert torch.equal(a, b)


@needs_lib
@pytest.mark.parametrize("device", DEVICES)
def test_compiled_module_inductor(device):
    """The default backend (Inductor) on the nn.Module, aux loss included."""
    _reset()
    torch.manual_seed(0)
    m = MoE(8, 2, 64, 32, "swiglu", add_bias=True, std=0.05).to(device=device,
                                                                 dtype=torch.bfloat16)
    x0 = torch.randn(2, 24, 64, device=device).bfloat16()

    def step(x):
        out, aux = m(x)
        return out, aux

    e_out, e_aux, *e_g = module_step(m, step, x0)
    c_out, c_aux, *c_g = module_step(m, torch.compile(step, fullgraph=True), x0)
    assert torch.equal(e_out, c_out)
    assert torch.allclose(e_aux, c_aux, rtol=1e-5, atol=1e-6)
    for a, b in zip(e_g, c_g):
        assert rel_err(b, a) <= 1e-2


@needs_lib
def test_compiled_dynamic_shapes():
    """One compiled graph serves several token counts (no data-dependent
    shapes inside the ops: N = T*K comes from the shapes)."""
    _reset()
    p = make_layer(64, 32, 16, 4, device="cpu", seed=1)
    names = ["x", "router_w", "w1", "w2"]

    def step(x, router_w, w1, w2):
        return moe_TC_softmax_topk_layer(x, router_w, w1, None, w2, None, 2, "swiglu")[0]

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager", dynamic=True)
    for T in (64, 40, 17):
        q = leaves({k: (v[:T] if k == "x" else v) for k, v in p.items() if k in names})
        e = step(*[q[n] for n in names])
        c = compiled(*[q[n] for n in names])
        assert torch.equal(e, c)


@needs_lib
def test_compiled_concatenated_gate_up():
    """HF-style [gate; up] weights are interleaved inside the traced graph."""
    _reset()
    from sonicmoe import deinterleave_gate_up

    p = make_layer(24, 32, 16, 4, bias=True, seed=12)
    p["w1"] = deinterleave_gate_up(p["w1"])
    p["b1"] = deinterleave_gate_up(p["b1"])
    dout = torch.randn(24, 32)

    def step(x, router_w, w1, b1, w2, b2, dout):
        return moe_TC_softmax_topk_layer(x, router_w, w1, b1, w2, b2, 2, "swiglu",
                                         is_concatenated_gate_up=True)

    eager_out, eager_g = _run(step, leaves(p), dout, NAMES)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    comp_out, comp_g = _run(compiled, leaves(p), dout, NAMES)
    for a, b in zip(eager_out + eager_g, comp_out + comp_g):
        assert torch.equal(a, b)
