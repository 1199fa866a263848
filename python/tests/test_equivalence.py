"""The library backend (bf16 tensors, fp32 math) against the pure-torch
backend run in fp32 on the same (bf16-representable) values: the output and
every gradient, over shapes x activations x bias x routing.

The router weights stay fp32 on both sides, so the logits, and hence the
top-K choice, are bitwise the same: the comparison then measures the layer,
not a near-tie that bf16 logits would break differently.
"""

from __future__ import annotations

import pytest
import torch

from conftest import (DEVICES, TOL, general_routing, leaves, make_layer, needs_lib, rel_err)
from sonicmoe import (ActivationType, KernelBackendMoE, RouterOrder, is_glu,
                      moe_general_routing_inputs, moe_TC_softmax_topk_layer)

ACTS = [ActivationType.SWIGLU, ActivationType.GEGLU, ActivationType.REGLU, ActivationType.GELU,
        ActivationType.RELU, ActivationType.RELU_SQ, ActivationType.SILU]
# (T, H, I, E, K): a small square case, shapes off the 16/64 tiles, K = E.
SHAPES = [(32, 64, 32, 8, 2), (37, 72, 40, 5, 3), (9, 16, 8, 4, 4)]
ROUTERS = [("topk_then_softmax", False), ("softmax_then_topk", False),
           ("softmax_then_topk", True)]
NAMES = ["x", "router_w", "w1", "b1", "w2", "b2"]


def _run_topk(p, K, act, order, renorm, backend, dout):
    out, logits, freq = moe_TC_softmax_topk_layer(
        p["x"], p["router_w"], p["w1"], p["b1"], p["w2"], p["b2"], K, act,
        router_order=order, renormalize=renorm, kernel_backend_moe=backend)
    (out.float() * dout).sum().backward()
    return out, logits, freq


def _compare(lib_p, ref_p, names, out, ref_out, label):
    errs = {"out": rel_err(out, ref_out)}
    for n in names:
        if ref_p.get(n) is None:
            continue
        assert lib_p[n].grad is not None, f"{label}: no gradient for {n}"
        errs["d" + n] = rel_err(lib_p[n].grad, ref_p[n].grad)
    bad = {k: v for k, v in errs.items() if not v <= TOL}
    assert not bad, f"{label}: relative-to-max errors above {TOL}: {bad} (all: {errs})"


@needs_lib
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("router", ROUTERS, ids=lambda r: f"{r[0]}{'-renorm' if r[1] else ''}")
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("act", ACTS, ids=lambda a: a.value)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}-H{}-I{}-E{}-K{}".format(*s))
def test_topk_layer_matches_fp32_reference(shape, act, bias, router, device):
    T, H, I, E, K = shape
    order, renorm = router
    p = make_layer(T, H, I, E, gated=is_glu(act), bias=bias, device=device, seed=hash(shape) % 97)
    dout = torch.randn(T, H, generator=torch.Generator().manual_seed(7)).to(device)
    lib_p = leaves(p)
    ref_p = leaves(p, torch.float32)
    out, logits, freq = _run_topk(lib_p, K, act, order, renorm, KernelBackendMoE.sonicmoe, dout)
    ref_out, ref_logits, ref_freq = _run_topk(ref_p, K, act, order, renorm,
                                              KernelBackendMoE.torch, dout)
    assert out.dtype == torch.bfloat16 and out.shape == (T, H)
    assert torch.equal(logits, ref_logits)
    assert torch.equal(freq.cpu(), ref_freq.cpu()), "expert frequencies differ"
    _compare(lib_p, ref_p, NAMES, out, ref_out, f"{shape} {act.value} bias={bias} {router}")


@needs_lib
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("act", ACTS, ids=lambda a: a.value)
@pytest.mark.parametrize("shape", [(24, 64, 32, 6), (13, 40, 24, 9)],
                         ids=lambda s: "T{}-H{}-I{}-E{}".format(*s))
def test_general_routing_matches_fp32_reference(shape, act, bias, device):
    T, H, I, E = shape
    p = make_layer(T, H, I, E, gated=is_glu(act), bias=bias, device=device, seed=3)
    del p["router_w"]
    scores, tok, exp = general_routing(T, E, device=device, seed=T)
    assert (tok.bincount(minlength=T) == 0).any(), "want a token with no expert"
    p["router_scores"] = scores
    dout = torch.randn(T, H, generator=torch.Generator().manual_seed(5)).to(device)
    res = {}
    for backend, dtype in ((KernelBackendMoE.sonicmoe, None),
                           (KernelBackendMoE.torch, torch.float32)):
        q = leaves(p, dtype)
        out, freq = moe_general_routing_inputs(
            q["x"], q["router_scores"], tok, exp, q["w1"], q["b1"], q["w2"], q["b2"], E, act,
            kernel_backend_moe=backend)
        (out.float() * dout).sum().backward()
        res[backend] = (q, out, freq)
    (lq, lo, lf), (rq, ro, rf) = res[KernelBackendMoE.sonicmoe], res[KernelBackendMoE.torch]
    assert torch.equal(lf.cpu(), rf.cpu())
    _compare(lq, rq, ["x", "router_scores", "w1", "b1", "w2", "b2"], lo, ro,
             f"general {shape} {act.value} bias={bias}")


@needs_lib
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["one_expert_takes_all", "unused_experts", "no_pairs", "T1"])
def test_general_routing_edges(case, device):
    T, H, I, E = (1, 32, 16, 4) if case == "T1" else (16, 32, 16, 6)
    p = make_layer(T, H, I, E, device=device, seed=11)
    if case == "one_expert_takes_all":
        tok = torch.arange(T, dtype=torch.int32)
        exp = torch.full((T,), 2, dtype=torch.int32)
    elif case == "unused_experts":
        tok = torch.arange(T, dtype=torch.int32).repeat_interleave(2)
        exp = torch.tensor([0, 5] * T, dtype=torch.int32)
    elif case == "no_pairs":
        tok = torch.zeros(0, dtype=torch.int32)
        exp = torch.zeros(0, dtype=torch.int32)
    else:
        tok = torch.zeros(E, dtype=torch.int32)
        exp = torch.arange(E, dtype=torch.int32)
    p["router_scores"] = torch.rand(tok.numel()) + 0.1
    tok, exp = tok.to(device), exp.to(device)
    p = {k: (v.to(device) if v is not None else None) for k, v in p.items()}
    outs = []
    for backend, dtype in ((KernelBackendMoE.sonicmoe, None),
                           (KernelBackendMoE.torch, torch.float32)):
        q = leaves(p, dtype)
        out, freq = moe_general_routing_inputs(q["x"], q["router_scores"], tok, exp, q["w1"],
                                               None, q["w2"], None, E, "swiglu",
                                               kernel_backend_moe=backend)
        if out.requires_grad:
            out.float().square().sum().backward()
        else:  # the reference's output of no pairs is a constant
            for v in q.values():
                if v is not None:
                    v.grad = torch.zeros_like(v)
        outs.append((q, out, freq))
    (lq, lo, lf), (rq, ro, rf) = outs
    assert torch.equal(lf.cpu(), rf.cpu())
    _compare(lq, rq, ["x", "router_scores", "w1", "w2"], lo, ro, case)
    used = torch.zeros(E, dtype=torch.bool)
    used[exp.long().cpu()] = True
    # Experts with no pairs get exactly zero weight gradients.
    assert torch.count_nonzero(lq["w1"].grad.cpu()[~used]) == 0
    assert torch.count_nonzero(lq["w2"].grad.cpu()[~used]) == 0
    if case == "no_pairs":
        assert torch.count_nonzero(lo) == 0


@needs_lib
@pytest.mark.parametrize("device", DEVICES)
def test_bitwise_deterministic(device):
    p = make_layer(40, 64, 32, 8, bias=True, device=device, seed=2)
    results = []
    for _ in range(2):
        q = leaves(p)
        out, _, _ = moe_TC_softmax_topk_layer(q["x"], q["router_w"], q["w1"], q["b1"], q["w2"],
                                              q["b2"], 3, "swiglu")
        out.float().square().sum().backward()
        results.append([out] + [q[n].grad for n in NAMES])
    for a, b in zip(*results):
        assert torch.equal(a, b)


@needs_lib
@pytest.mark.parametrize("device", DEVICES)
def test_router_ties_go_to_lower_expert(device):
    from sonicmoe import softmax_topk_router

    logits = torch.tensor([[1.0, 3.0, 3.0, 0.5, 3.0], [2.0, 2.0, 2.0, 2.0, 2.0]], device=device)
    for backend in ("sonicmoe", "torch"):
        s, ids = softmax_topk_router(logits, 2, kernel_backend_moe=backend)
        assert ids.tolist() == [[1, 2], [0, 1]], backend
        assert torch.allclose(s.cpu(), torch.full((2, 2), 0.5))


@needs_lib
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("order,renorm", [(RouterOrder.TOPK_THEN_SOFTMAX, False),
                                          (RouterOrder.SOFTMAX_THEN_TOPK, False),
                                          (RouterOrder.SOFTMAX_THEN_TOPK, True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_router_matches_reference(order, renorm, dtype, device):
    from sonicmoe import softmax_topk_router

    g = torch.Generator().manual_seed(4)
    logits = torch.randn(50, 12, generator=g).to(dtype).to(device)
    ds = torch.randn(50, 3, generator=g).to(device)
    res = []
    for backend in ("sonicmoe", "torch"):
        z = logits.detach().clone().requires_grad_()
        s, ids = softmax_topk_router(z, 3, order, renorm, kernel_backend_moe=backend)
        (s * ds).sum().backward()
        res.append((s, ids, z.grad))
    (s, ids, dz), (rs, rids, rdz) = res
    assert torch.equal(ids.cpu(), rids.cpu())
    assert s.dtype == torch.float32 and ids.dtype == torch.int32
    assert rel_err(s, rs) < 1e-5
    # dlogits are stored in the logits' dtype.
    assert rel_err(dz, rdz) < (1e-5 if dtype == torch.float32 else 1e-2)
