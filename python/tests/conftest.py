"""Shared helpers of the sonicmoe Python tests.

The library backend runs on CPU tensors too (libsonicmoe's CPU reference
backend), so everything but the CUDA-graph and GPU-kernel tests runs on a
machine without a GPU. Set SONICMOE_REQUIRE_LIBRARY=1 (python/ci.sh does) to
make a missing libsonicmoe.so an error instead of a skip, and
SONICMOE_TEST_INSTALLED=1 to test the installed package instead of python/.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

# The checkout's package (python/) unless SONICMOE_TEST_INSTALLED=1 asks for
# the installed one (e.g. after `pip install --no-build-isolation .`).
if os.environ.get("SONICMOE_TEST_INSTALLED", "") in ("", "0"):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sonicmoe  # noqa: E402,F401

from sonicmoe import _lib  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
HAS_LIB = _lib.available()
REQUIRE_LIB = os.environ.get("SONICMOE_REQUIRE_LIBRARY", "") not in ("", "0")

if REQUIRE_LIB and not HAS_LIB:
    _lib.lib()  # raises LibraryNotFoundError with the paths it tried

needs_lib = pytest.mark.skipif(not HAS_LIB, reason="libsonicmoe.so not found (set "
                               "SONICMOE_LIBRARY or build it: see docs/PYTHON.md)")
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (PyTorch sees none)")

DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])


def pytest_report_header(config):
    lib = _lib.library_path() if HAS_LIB else "not found"
    gpu = torch.cuda.get_device_name() if HAS_CUDA else "none"
    return [f"torch {torch.__version__}; libsonicmoe: {lib}; GPU: {gpu}"]


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max |got - ref| / max |ref| (absolute error where ref is all zeros)."""
    got, ref = got.detach().float().cpu(), ref.detach().float().cpu()
    assert got.shape == ref.shape, (got.shape, ref.shape)
    if got.numel() == 0:
        return 0.0
    scale = ref.abs().max().item()
    diff = (got - ref).abs().max().item()
    return diff / scale if scale > 0 else diff


# Tolerance of the library (bf16 tensors, fp32 math) against the fp32 torch
# reference on the same bf16 inputs. The library rounds to bf16 (8-bit
# mantissa, relative step 2^-8 = 3.9e-3) the output, every gradient, the kept
# pre-activation H (which backward re-reads) and the temporaries A' and dH
# that feed the weight-gradient products; a few such roundings stacked, over
# sums whose terms partly cancel, give errors up to a few 1e-3 of the largest
# reference entry. 2e-2 leaves head-room for that without hiding a real bug
# (a wrong index or a missing term gives errors of order 1).
TOL = 2e-2


def make_layer(T, H, I, E, *, gated=True, bias=False, device="cpu", seed=0):
    """bf16 layer inputs with O(1) activations: x ~ N(0,1), weights scaled by
    1/sqrt(fan_in), biases N(0, 0.1); router fp32 (see test_equivalence.py)."""
    g = torch.Generator().manual_seed(seed)
    R = 2 * I if gated else I

    def rnd(*shape, std=1.0):
        return (torch.randn(*shape, generator=g) * std).to(torch.bfloat16).to(device)

    p = {
        "x": rnd(T, H),
        "router_w": (torch.randn(E, H, generator=g) / H**0.5).to(device),
        "w1": rnd(E, R, H, std=H**-0.5),
        "b1": rnd(E, R, std=0.1) if bias else None,
        "w2": rnd(E, H, I, std=I**-0.5),
        "b2": rnd(E, H, std=0.1) if bias else None,
    }
    return p


def module_step(m, fn, x0):
    """One training step of module m through fn(x) -> (out, aux) on a fresh
    copy of x0: returns [out, aux, x.grad, *parameter grads]."""
    m.zero_grad(set_to_none=True)
    x = x0.clone().requires_grad_()
    out, aux = fn(x)
    (out.float().square().sum() + aux).backward()
    return [out, aux, x.grad] + [q.grad for q in m.parameters()]


def leaves(p: dict, dtype=None) -> dict:
    """Fresh leaf tensors requiring grad (optionally cast, e.g. to fp32)."""
    out = {}
    for k, v in p.items():
        if v is None:
            out[k] = None
            continue
        t = v.detach().clone()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        out[k] = t.requires_grad_(t.is_floating_point())
    return out


def general_routing(T, E, *, device="cpu", seed=0, max_per_token=None, empty_tokens=True):
    """A variable number of distinct experts per token (0..max_per_token),
    pairs sorted by token; scores positive, fp32."""
    g = torch.Generator().manual_seed(seed + 1000)
    max_per_token = E if max_per_token is None else max_per_token
    tok, exp = [], []
    for t in range(T):
        n = int(torch.randint(0 if empty_tokens else 1, max_per_token + 1, (1,), generator=g))
        ids = torch.randperm(E, generator=g)[:n]
        tok += [t] * n
        exp += ids.tolist()
    tok = torch.tensor(tok, dtype=torch.int32)
    exp = torch.tensor(exp, dtype=torch.int32)
    scores = torch.rand(len(tok), generator=g) + 0.05
    return scores.to(device), tok.to(device), exp.to(device)
