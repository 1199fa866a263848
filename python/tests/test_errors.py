"""Bad inputs raise ValueError / TypeError naming the argument, before the
library is called; library failures raise SonicMoEError carrying
smoe_last_error(); nothing crashes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import general_routing, leaves, make_layer, needs_lib
import sonicmoe
from sonicmoe import (MoE, SonicMoEError, moe_general_routing_inputs, moe_TC_softmax_topk_layer,
                      ops)

T, H, I, E, K = 16, 32, 16, 4, 2


def _layer(**over):
    p = make_layer(T, H, I, E, bias=True, seed=9)
    p.update(over)
    return p


def _topk(p, k=K, act="swiglu", **kw):
    return moe_TC_softmax_topk_layer(p["x"], p["router_w"], p["w1"], p["b1"], p["w2"], p["b2"],
                                     k, act, **kw)


def _misaligned(t: torch.Tensor) -> torch.Tensor:
    """Same values, contiguous, data pointer 2 bytes off a 16-byte boundary."""
    buf = torch.empty(t.numel() + 8, dtype=t.dtype)
    v = buf[1:1 + t.numel()].view(t.shape)
    v.copy_(t)
    assert v.is_contiguous() and v.data_ptr() % 16
    return v


# (description, overrides, exception, text that must appear in the message)
TOPK_CASES = [
    ("x fp32 on library backend", lambda p: {"x": p["x"].float()}, TypeError, "'x'"),
    ("x 3-D", lambda p: {"x": p["x"].view(2, 8, H)}, ValueError, "'x'"),
    ("x non-contiguous", lambda p: {"x": p["x"].t().contiguous().t()}, ValueError, "'x'"),
    ("x misaligned", lambda p: {"x": _misaligned(p["x"])}, ValueError, "'x'"),
    ("w1 wrong rows", lambda p: {"w1": p["w1"][:, :I]}, ValueError, "'w1'"),
    ("w1 fp16", lambda p: {"w1": p["w1"].half()}, TypeError, "'w1'"),
    ("w1 non-contiguous", lambda p: {"w1": p["w1"].transpose(1, 2).contiguous().transpose(1, 2)},
     ValueError, "'w1'"),
    ("w2 wrong hidden", lambda p: {"w2": p["w2"][:, :8].contiguous()}, ValueError, "'w2'"),
    ("w2 not a tensor", lambda p: {"w2": [1, 2]}, TypeError, "'w2'"),
    ("b1 wrong shape", lambda p: {"b1": p["b1"][:, :3].contiguous()}, ValueError, "'b1'"),
    ("b2 wrong dtype", lambda p: {"b2": p["b2"].float()}, TypeError, "'b2'"),
    ("b2 on meta device", lambda p: {"b2": p["b2"].to("meta")}, ValueError, "'b2'"),
    ("router_w wrong experts", lambda p: {"router_w": p["router_w"][:3]}, ValueError,
     "'router_w'"),
    ("router_w int", lambda p: {"router_w": p["router_w"].int()}, TypeError, "'router_w'"),
]


@needs_lib
@pytest.mark.parametrize("desc,over,exc,text", TOPK_CASES, ids=[c[0] for c in TOPK_CASES])
def test_topk_bad_inputs(desc, over, exc, text):
    p = _layer()
    p.update(over(p))
    with pytest.raises(exc) as ei:
        _topk(p)
    assert text in str(ei.value), str(ei.value)


@needs_lib
@pytest.mark.parametrize("k", [0, E + 1, 2.0, True])
def test_bad_k(k):
    with pytest.raises((ValueError, TypeError), match="'K'"):
        _topk(_layer(), k=k)


@needs_lib
def test_bad_activation_and_backend():
    with pytest.raises(ValueError, match="activation_type"):
        _topk(_layer(), act="tanh")
    with pytest.raises(TypeError, match="activation_type"):
        _topk(_layer(), act=3.5)
    with pytest.raises(ValueError, match="kernel_backend_moe"):
        _topk(_layer(), kernel_backend_moe="cutlass")
    with pytest.raises(ValueError, match="router_order"):
        _topk(_layer(), router_order="random")
    # A non-gated activation needs w1 with I rows, not 2I.
    with pytest.raises(ValueError, match="'w1'"):
        _topk(_layer(), act="relu")


@needs_lib
def test_hidden_not_multiple_of_8():
    p = make_layer(T, 20, I, E, seed=1)
    with pytest.raises(ValueError, match="multiple of 8"):
        _topk(p)
    # The torch backend has no such limit.
    out, _, _ = _topk({k: (v.float() if v is not None else None) for k, v in p.items()},
                      kernel_backend_moe="torch")
    assert out.shape == (T, 20)


@needs_lib
def test_intermediate_above_2_20():
    # Offsets inside a tile are 32-bit in the library's kernels: I <= 2^20.
    # Zero weights: only the shapes matter, and refusing comes before any work.
    big = (1 << 20) + 8
    p = {"x": torch.zeros(4, 8, dtype=torch.bfloat16),
         "router_w": torch.zeros(2, 8),
         "w1": torch.zeros(2, 2 * big, 8, dtype=torch.bfloat16), "b1": None,
         "w2": torch.zeros(2, 8, big, dtype=torch.bfloat16), "b2": None}
    with pytest.raises(ValueError,
                       match=r"intermediate size I.*at most 1048576 \(2\^20\).*1048584"):
        _topk(p, k=1)


def _general(p, scores, tok, exp, e=E):
    return moe_general_routing_inputs(p["x"], scores, tok, exp, p["w1"], p["b1"], p["w2"],
                                      p["b2"], e, "swiglu")


@needs_lib
def test_general_routing_bad_indices_cpu():
    p = _layer()
    scores, tok, exp = general_routing(T, E, seed=2, empty_tokens=False)
    bad = exp.clone()
    bad[3] = E
    with pytest.raises(ValueError, match="'expert_indices'.*got 4 at flat index 3"):
        _general(p, scores, tok, bad)
    bad = exp.clone()
    bad[0] = -2  # -1 is a padding pair (round_routing's tail), dropped, not an error
    with pytest.raises(ValueError, match="'expert_indices'"):
        _general(p, scores, tok, bad)
    bad = tok.clone()
    bad[-1] = T
    with pytest.raises(ValueError, match="'token_indices'"):
        _general(p, scores, bad, exp)
    with pytest.raises(ValueError, match="'token_indices'.*non-decreasing"):
        _general(p, scores, tok.flip(0).contiguous(), exp)
    with pytest.raises(TypeError, match="'token_indices'"):
        _general(p, scores, tok.float(), exp)
    with pytest.raises(ValueError, match="'expert_indices'"):
        _general(p, scores, tok, exp[:-1])
    with pytest.raises(ValueError, match="'router_scores'"):
        _general(p, scores[None], tok, exp)
    with pytest.raises(TypeError, match="'router_scores'"):
        _general(p, scores.int(), tok, exp)
    with pytest.raises(ValueError, match="'w2'.*experts"):
        _general(p, scores, tok, exp, e=E + 1)
    with pytest.raises(TypeError, match="'E'"):
        _general(p, scores, tok, exp, e=float(E))
    # int64 indices are accepted (converted to the library's int32).
    out, freq = _general(p, scores, tok.long(), exp.long())
    assert freq.sum().item() == tok.numel()


@needs_lib
def test_library_errors_carry_last_error():
    """A call the Python checks cannot see through (hand-made metadata passed
    to the raw op) fails in the library: the exception carries its message."""
    p = make_layer(T, H, I, E, seed=4)
    ids = torch.zeros(T, K, dtype=torch.int32)
    routing = list(ops.routing_from_topk(ids, E))
    routing[4] = torch.full_like(routing[4], 10**6)  # sorted_pair out of range
    scores = torch.full((T, K), 0.5)
    with pytest.raises(SonicMoEError) as ei:
        ops.moe_forward(p["x"], p["w1"], None, p["w2"], None, scores, *routing, 0, True)
    e = ei.value
    assert e.status == 1 and isinstance(e, ValueError)
    assert "moe_forward" in e.message and "routing.sorted_pair" in e.message
    assert e.message in str(e)
    # Out-of-range ids straight into the routing op: the library's own check.
    with pytest.raises(SonicMoEError, match="expert_ids"):
        ops.routing_from_topk(torch.full((T, K), E, dtype=torch.int32), E)
    # Wrong scores shape straight into the op.
    with pytest.raises(SonicMoEError, match="scores"):
        ops.moe_forward(p["x"], p["w1"], None, p["w2"], None, scores[:, :1].contiguous(),
                        *ops.routing_from_topk(ids, E), 0, True)


@needs_lib
def test_inference_mode_keeps_nothing_and_refuses_backward():
    q = leaves(_layer())
    out, _, _ = _topk(q, is_inference_mode_enabled=True)
    with pytest.raises(RuntimeError, match="inference mode"):
        out.float().sum().backward()
    m = MoE(E, K, H, I, "swiglu", False, 0.02).bfloat16().eval()
    out, aux = m(torch.randn(3, H).bfloat16())
    assert aux is not None and out.shape == (3, H)
    out, aux = m(torch.randn(3, H).bfloat16(), is_inference_mode=True)
    assert aux is None


def test_module_constructor_checks():
    with pytest.raises(ValueError, match="num_experts_per_tok"):
        MoE(4, 5, 32, 16, "swiglu", False, 0.02)
    with pytest.raises(ValueError, match="activation_function"):
        MoE(4, 2, 32, 16, "swish", False, 0.02)


def test_missing_library_is_reported(tmp_path):
    """A bad SONICMOE_LIBRARY: importing still works (torch backend), the
    first library call raises LibraryNotFoundError naming the path."""
    code = (
        "import torch, sonicmoe\n"
        "x = torch.randn(4, 8)\n"
        "w1 = torch.randn(2, 16, 8); w2 = torch.randn(2, 8, 8); r = torch.randn(2, 8)\n"
        "o, _, _ = sonicmoe.moe_TC_softmax_topk_layer(x, r, w1, None, w2, None, 1, 'swiglu',"
        " kernel_backend_moe='torch')\n"
        "try:\n"
        "    sonicmoe.moe_TC_softmax_topk_layer(x.bfloat16(), r, w1.bfloat16(), None,"
        " w2.bfloat16(), None, 1, 'swiglu')\n"
        "except sonicmoe.LibraryNotFoundError as e:\n"
        "    print('OK', e)\n")
    env = dict(os.environ, SONICMOE_LIBRARY=str(tmp_path / "nope.so"),
               PYTHONPATH=str(Path(sonicmoe.__file__).resolve().parents[1]))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout and "nope.so" in r.stdout


@needs_lib
def test_no_grad_forward_keeps_no_h(monkeypatch):
    """Under torch.no_grad() (or with nothing requiring grad) the library runs
    in inference mode: H is not written, and the output is the same."""
    from sonicmoe import _lib

    modes = []
    real = _lib.moe_forward

    def spy(*a):
        modes.append(a[8])  # `training`
        return real(*a)

    monkeypatch.setattr(_lib, "moe_forward", spy)
    p = _layer()
    with torch.no_grad():
        a, _, _ = _topk(p)
    b, _, _ = _topk(p)  # plain tensors: nothing requires grad
    q = leaves(p)
    c, _, _ = _topk(q)
    assert modes == [False, False, True]
    assert torch.equal(a, b) and torch.equal(a, c)
