"""Token rounding from Python: sonicmoe.round_routing (the custom op over the
library's round_routing), its gradient, the MoE / functional option, and the
fake implementation's shapes (torch.compile needs no library call for them).
Runs on CPU tensors (the library's CPU backend); CUDA too where present."""

from __future__ import annotations

import pytest
import torch

from conftest import DEVICES, TOL, leaves, make_layer, needs_lib, rel_err
import sonicmoe
from sonicmoe import MoE, moe_general_routing_inputs, moe_TC_softmax_topk_layer, ops
from sonicmoe import _lib

MODES = ["nearest", "up", "down"]
CODE = {"nearest": _lib.ROUNDING_NEAREST, "up": _lib.ROUNDING_UP, "down": _lib.ROUNDING_DOWN}


def _routed(T, E, K, device, seed=0, skew=1.0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(T, E, generator=g) + skew * torch.randn(E, generator=g)).to(device)
    scores, ids = sonicmoe.softmax_topk_router(logits, K)
    return logits, ids, scores


@needs_lib
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("T,E,K,tile", [(1, 4, 2, 128), (100, 8, 2, 16), (300, 16, 4, 32),
                                        (64, 4, 4, 7)])
def test_capacity_matches_library(T, E, K, tile, mode):
    assert ops.round_routing_capacity(T, E, K, tile, CODE[mode]) == \
        _lib.round_routing_capacity(T, E, K, tile, CODE[mode])


@needs_lib
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_round_routing_counts_and_padding(mode, device):
    T, E, K, tile = 300, 8, 2, 16
    logits, ids, scores = _routed(T, E, K, device, seed=3)
    tok, exp, sc, num = sonicmoe.round_routing(logits, ids, scores, tile, mode)
    C = ops.round_routing_capacity(T, E, K, tile, CODE[mode])
    assert tok.shape == exp.shape == sc.shape == (C,) and num.shape == (1,)
    assert tok.dtype == exp.dtype == num.dtype == torch.int32 and sc.dtype == torch.float32
    n = int(num.item())
    tok, exp, sc = tok.cpu(), exp.cpu(), sc.cpu()
    assert (exp[n:] == -1).all() and (sc[n:] == 0).all() and (tok[n:] == T - 1).all()
    assert (exp[:n] >= 0).all() and (tok[:n].diff() >= 0).all()
    counts = torch.bincount(exp[:n].long(), minlength=E)
    before = torch.bincount(ids.cpu().reshape(-1).long(), minlength=E)
    for e in range(E):
        c, b = int(counts[e]), int(before[e])
        assert c % tile == 0 or c == T, (e, c)
        if mode == "up":
            assert c >= b
        elif mode == "down":
            assert c <= b
        else:
            assert abs(c - b) <= tile // 2
    # Picks keep their top-K score; under 'up' every pick is kept.
    picks = {(t, int(e)): float(s) for t in range(T)
             for e, s in zip(ids[t].cpu(), scores[t].cpu())}
    kept = 0
    for t, e, s in zip(tok[:n].tolist(), exp[:n].tolist(), sc[:n].tolist()):
        if (t, e) in picks:
            kept += 1
            assert s == picks[(t, e)]
    if mode == "up":
        assert kept == T * K


@needs_lib
def test_round_routing_validation():
    logits, ids, scores = _routed(16, 4, 2, "cpu")
    with pytest.raises(ValueError, match="mode"):
        sonicmoe.round_routing(logits, ids, scores, 8, "sideways")
    with pytest.raises(ValueError, match="topk_ids"):
        sonicmoe.round_routing(logits, ids + 4, scores, 8, "up")
    with pytest.raises(ValueError, match="tile"):
        sonicmoe.round_routing(logits, ids, scores, 0, "up")


@needs_lib
@pytest.mark.parametrize("mode", MODES)
def test_gradient_goes_to_kept_picks_only(mode):
    T, E, K, tile = 200, 8, 2, 16
    logits, ids, scores = _routed(T, E, K, "cpu", seed=5)
    s = scores.detach().clone().requires_grad_(True)
    tok, exp, sc, num = sonicmoe.round_routing(logits, ids, s, tile, mode)
    w = torch.randn(sc.shape[0], generator=torch.Generator().manual_seed(1))
    (sc * w).sum().backward()
    want = torch.zeros(T, K)
    for i in range(int(num.item())):
        t, e = int(tok[i]), int(exp[i])
        for k in range(K):
            if int(ids[t, k]) == e:
                want[t, k] = w[i]
                break
    torch.testing.assert_close(s.grad, want, rtol=0, atol=0)


@needs_lib
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["nearest", "up"])
def test_layer_with_rounding_equals_general_routing(mode, device):
    """The option is the router, round_routing and moe_general_routing_inputs;
    the library layer matches the torch backend on the same rounded pairs."""
    T, H, I, E, K, tile = 96, 64, 32, 8, 2, 16
    p = leaves(make_layer(T, H, I, E, device=device, seed=7))
    out, logits, freq = moe_TC_softmax_topk_layer(
        p["x"], p["router_w"], p["w1"], None, p["w2"], None, K, "swiglu",
        token_rounding=mode, rounding_tile=tile)
    assert (freq.cpu() % tile == 0).all() or mode == "nearest" and (freq.cpu() <= T).all()
    dout = torch.randn(T, H, device=device)
    (out.float() * dout).sum().backward()
    assert p["router_w"].grad is not None and torch.isfinite(p["router_w"].grad).all()

    q = leaves(make_layer(T, H, I, E, device=device, seed=7), torch.float32)
    scores, ids = sonicmoe.softmax_topk_router(logits.detach(), K)
    tok, exp, sc, _ = sonicmoe.round_routing(logits.detach(), ids, scores, tile, mode)
    ref, _ = moe_general_routing_inputs(q["x"], sc, tok, exp, q["w1"], None, q["w2"], None, E,
                                        kernel_backend_moe="torch")
    assert rel_err(out, ref) < TOL
    (ref * dout).sum().backward()
    for name in ("w1", "w2"):  # p's dx also has the router's share
        assert rel_err(p[name].grad, q[name].grad) < TOL, name


@needs_lib
def test_module_option_and_repr():
    torch.manual_seed(0)
    m = MoE(8, 2, 64, 32, token_rounding="up", rounding_tile=16).to(torch.bfloat16)
    x = torch.randn(4, 24, 64, dtype=torch.bfloat16)
    out, aux = m(x)
    assert out.shape == x.shape and torch.isfinite(out.float()).all() and aux is not None
    out.float().sum().backward()
    assert m.router.weight.grad is not None
    assert "token_rounding=up, rounding_tile=16" in repr(m)
    plain = MoE(8, 2, 64, 32)
    plain.load_state_dict(m.state_dict())
    assert "token_rounding" not in repr(plain)
    with pytest.raises(ValueError, match="token_rounding"):
        MoE(8, 2, 64, 32, token_rounding="sideways")
    with pytest.raises(ValueError, match="rounding_tile"):
        MoE(8, 2, 64, 32, token_rounding="up", rounding_tile=0)


@needs_lib
def test_padding_accepted_by_general_routing_only_as_minus_one():
    p = make_layer(4, 64, 32, 4, seed=2)
    sc = torch.ones(3)
    tok = torch.tensor([0, 1, 3], dtype=torch.int32)
    out, freq = moe_general_routing_inputs(p["x"], sc, tok, torch.tensor([1, -1, 2],
                                           dtype=torch.int32), p["w1"], None, p["w2"], None, 4)
    assert freq.tolist() == [0, 1, 1, 0] and (out[1] == 0).all()
    with pytest.raises(ValueError, match="expert_indices"):
        moe_general_routing_inputs(p["x"], sc, tok, torch.tensor([1, -2, 2], dtype=torch.int32),
                                   p["w1"], None, p["w2"], None, 4)


def test_fake_impl_shapes_need_no_library():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        logits = torch.empty(1000, 64)
        ids = torch.empty(1000, 4, dtype=torch.int32)
        scores = torch.empty(1000, 4)
        tok, exp, sc, num = torch.ops.sonicmoe.round_routing(logits, ids, scores, 128, 1)
    assert tok.shape == (1000 * 4 + 64 * 127,) and num.shape == (1,)
    assert sc.dtype == torch.float32 and exp.dtype == torch.int32
