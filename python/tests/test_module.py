"""The nn.Module, its aux loss, HF weight loading, the gate/up interleave and
the upstream-compatible call forms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import DEVICES, TOL, leaves, make_layer, needs_lib, rel_err
from sonicmoe import (ActivationType, KernelBackendMoE, MoE, deinterleave_gate_up,
                      interleave_gate_up, moe_TC_softmax_topk_layer, switch_aux_loss)
from sonicmoe import reference

E, K, H, I = 6, 2, 32, 16


@needs_lib
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("act", ["swiglu", "relu"])
def test_module_library_vs_torch_backend(act, device):
    torch.manual_seed(0)
    m = MoE(E, K, H, I, act, add_bias=True, std=0.1).to(device=device, dtype=torch.bfloat16)
    x = torch.randn(3, 10, H, device=device).bfloat16()
    res = {}
    for backend in (KernelBackendMoE.sonicmoe, KernelBackendMoE.torch):
        m.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        out, aux = m(xi, kernel_backend_moe=backend)
        assert out.shape == x.shape and out.dtype == torch.bfloat16
        (out.float().square().sum() + aux).backward()
        res[backend] = (out, aux, [xi.grad] + [p.grad for p in m.parameters()])
    (o1, a1, g1), (o2, a2, g2) = res[KernelBackendMoE.sonicmoe], res[KernelBackendMoE.torch]
    # Same bf16 logits on both sides, so the same experts; the torch backend
    # computes the experts in bf16 PyTorch ops, hence the bf16 tolerance.
    assert rel_err(o1, o2) <= TOL
    assert torch.allclose(a1, a2)
    for a, b in zip(g1, g2):
        assert rel_err(a, b) <= TOL


@needs_lib
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_gives_the_same_gradients(device, reentrant):
    """torch.utils.checkpoint runs the first forward without grad (the
    library's inference mode: nothing kept) and reruns it in backward, which
    keeps H; the forward is deterministic, so the gradients equal a plain
    step's bit for bit."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(5)
    m = MoE(E, K, H, I, "swiglu", add_bias=True, std=0.1).to(device=device,
                                                             dtype=torch.bfloat16)
    x0 = torch.randn(2, 12, H, device=device).bfloat16()

    def run(ckpt):
        m.zero_grad(set_to_none=True)
        x = x0.clone().requires_grad_()
        f = lambda t: m(t)[0]  # noqa: E731
        out = checkpoint(f, x, use_reentrant=reentrant) if ckpt else f(x)
        out.float().square().sum().backward()
        return [out, x.grad] + [p.grad for p in m.parameters()]

    for a, b in zip(run(False), run(True)):
        assert torch.equal(a, b)


@needs_lib
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("frozen", ["experts", "x", "biases", "all_but_router"])
def test_frozen_inputs_get_no_gradient_and_the_rest_is_unchanged(device, frozen):
    """Only the gradients autograd asks for are computed (the library skips
    the rest: frozen experts skip the weight-gradient products); those it
    computes equal a full backward's bit for bit."""
    torch.manual_seed(6)
    m = MoE(E, K, H, I, "swiglu", add_bias=True, std=0.1).to(device=device,
                                                             dtype=torch.bfloat16)
    x0 = torch.randn(20, H, device=device).bfloat16()

    def run(freeze):
        for p in m.parameters():
            p.requires_grad_(True)
        for p in freeze:
            p.requires_grad_(False)
        m.zero_grad(set_to_none=True)
        x = x0.clone().requires_grad_(frozen != "x")
        out, aux = m(x)
        (out.float().square().sum() + aux).backward()
        return out, x.grad, {n: p.grad for n, p in m.named_parameters()}

    e = [m.c_fc.weight, m.c_proj.weight]
    b = [m.c_fc.bias, m.c_proj.bias]
    freeze = {"experts": e, "x": [], "biases": b, "all_but_router": e + b}[frozen]
    out_f, dx_f, g_f = run([])
    # Which outputs the library is given (None: absent, not computed).
    from sonicmoe import _lib
    given = []
    real = _lib.moe_backward

    def spy(*args):
        given.append([t is not None for t in args[-6:]])
        return real(*args)

    _lib.moe_backward = spy
    try:
        out, dx, g = run(freeze)
    finally:
        _lib.moe_backward = real
    # dx, dw1, db1, dw2, db2, dscores
    want = {"experts": [True, False, True, False, True, True],
            "x": [False, True, True, True, True, True],
            "biases": [True, True, False, True, False, True],
            "all_but_router": [True, False, False, False, False, True]}[frozen]
    assert given == [want]
    assert torch.equal(out, out_f)
    if frozen == "x":
        assert dx is None
    else:
        assert torch.equal(dx, dx_f)
    frozen_ids = {id(p) for p in freeze}
    for n, p in m.named_parameters():
        if id(p) in frozen_ids:
            assert g[n] is None, n
        else:
            assert torch.equal(g[n], g_f[n]), n


def test_switch_aux_loss_value():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    freq = torch.tensor([2, 1, 1], dtype=torch.int32)
    p = torch.softmax(logits, -1).mean(0)
    want = 3 * (p * torch.tensor([0.5, 0.25, 0.25])).sum()
    assert torch.allclose(switch_aux_loss(logits, freq), want)
    # Perfect balance gives 1 whatever K.
    assert torch.allclose(switch_aux_loss(torch.zeros(8, 4), torch.full((4,), 6)),
                          torch.tensor(1.0))


def test_module_aux_loss_and_torch_backend_fp32():
    torch.manual_seed(1)
    m = MoE(E, K, H, I, ActivationType.SWIGLU, add_bias=False, std=0.1)
    x = torch.randn(20, H)
    out, aux = m(x, kernel_backend_moe="torch")
    logits = m.router(x)
    freq = torch.bincount(logits.topk(K, dim=-1).indices.flatten(), minlength=E)
    assert torch.allclose(aux, switch_aux_loss(logits, freq))
    assert out.dtype == torch.float32


def _hf_moe(x, router_w, gate, up, down, k, act):
    """Hugging Face style: per-expert MLPs down(act(gate x) * up x)."""
    logits = x @ router_w.t()
    scores, ids = reference.router(logits, k)
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(k):
            e = int(ids[t, j])
            h = act(F.linear(x[t], gate[e])) * F.linear(x[t], up[e])
            out[t] += scores[t, j] * F.linear(h, down[e])
    return out


@pytest.mark.parametrize("backend", ["torch", "sonicmoe"])
@pytest.mark.parametrize("as_list", [False, True])
def test_load_hf_experts(backend, as_list):
    if backend == "sonicmoe":
        from conftest import HAS_LIB
        if not HAS_LIB:
            pytest.skip("libsonicmoe.so not found")
    g = torch.Generator().manual_seed(3)
    gate = torch.randn(E, I, H, generator=g) / H**0.5
    up = torch.randn(E, I, H, generator=g) / H**0.5
    down = torch.randn(E, H, I, generator=g) / I**0.5
    router_w = torch.randn(E, H, generator=g) / H**0.5
    x = torch.randn(12, H, generator=g)
    if backend == "sonicmoe":  # bf16-representable values, fp32 router
        gate, up, down, x = (t.bfloat16().float() for t in (gate, up, down, x))
    want = _hf_moe(x, router_w, gate, up, down, K, F.silu)
    m = MoE(E, K, H, I, "swiglu", False, 0.02)
    if backend == "sonicmoe":
        m.c_fc.to(torch.bfloat16)
        m.c_proj.to(torch.bfloat16)
    args = (list(gate), list(up), list(down)) if as_list else (gate, up, down)
    m.load_hf_experts(*args, router_weight=router_w)
    assert torch.equal(m.c_fc.weight[:, 0::2].float(), gate.to(m.c_fc.weight.dtype).float())
    assert torch.equal(m.c_fc.weight[:, 1::2].float(), up.to(m.c_fc.weight.dtype).float())
    xin = x.bfloat16() if backend == "sonicmoe" else x
    out, _ = m(xin, kernel_backend_moe=backend)
    assert rel_err(out, want) <= (TOL if backend == "sonicmoe" else 1e-5)


def test_load_hf_experts_checks():
    m = MoE(E, K, H, I, "swiglu", False, 0.02)
    with pytest.raises(ValueError, match="gate_proj"):
        m.load_hf_experts(None, torch.zeros(E, I, H), torch.zeros(E, H, I))
    with pytest.raises(ValueError, match="up_proj"):
        m.load_hf_experts(torch.zeros(E, I, H), torch.zeros(E, I + 1, H), torch.zeros(E, H, I))
    with pytest.raises(ValueError, match="add_bias=False"):
        m.load_hf_experts(torch.zeros(E, I, H), torch.zeros(E, I, H), torch.zeros(E, H, I),
                          down_bias=torch.zeros(E, H))
    m2 = MoE(E, K, H, I, "gelu", True, 0.02)
    with pytest.raises(ValueError, match="gate_proj"):
        m2.load_hf_experts(torch.zeros(E, I, H), torch.zeros(E, I, H), torch.zeros(E, H, I))
    m2.load_hf_experts(None, torch.ones(E, I, H), torch.ones(E, H, I),
                       up_bias=torch.ones(E, I), down_bias=torch.ones(E, H))
    assert torch.equal(m2.c_fc.bias, torch.ones(E, I))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("ndim", [2, 3])
def test_interleave_gate_up(dtype, ndim):
    shape = (3, 2 * 5, 7) if ndim == 3 else (3, 2 * 5)
    w = torch.randn(shape).to(dtype)
    il = interleave_gate_up(w)
    assert torch.equal(il[:, 0::2], w[:, :5]) and torch.equal(il[:, 1::2], w[:, 5:])
    assert torch.equal(deinterleave_gate_up(il), w)
    # Differentiable: the gradient is the inverse permutation.
    wg = w.float().requires_grad_()
    g = torch.randn(shape)
    (interleave_gate_up(wg) * g).sum().backward()
    assert torch.equal(wg.grad, deinterleave_gate_up(g))
    with pytest.raises(ValueError, match="'w'"):
        interleave_gate_up(torch.zeros(3, 5, 7))


@needs_lib
def test_upstream_call_forms():
    """Upstream passes a stream id before the activation and its weights as
    permute(1, 2, 0) views; both give the canonical call's results."""
    p = make_layer(16, H, I, E, bias=True, seed=5)
    base, _, _ = moe_TC_softmax_topk_layer(p["x"], p["router_w"], p["w1"], p["b1"], p["w2"],
                                           p["b2"], K, "swiglu")
    up, _, _ = moe_TC_softmax_topk_layer(p["x"], p["router_w"], p["w1"].permute(1, 2, 0),
                                         p["b1"], p["w2"].permute(1, 2, 0), p["b2"], K, 0,
                                         ActivationType.SWIGLU, False)
    assert torch.equal(base, up)
    # HF-style concatenated [gate; up] rows.
    w1c = deinterleave_gate_up(p["w1"])
    b1c = deinterleave_gate_up(p["b1"])
    cat, _, _ = moe_TC_softmax_topk_layer(p["x"], p["router_w"], w1c, b1c, p["w2"], p["b2"], K,
                                          "swiglu", is_concatenated_gate_up=True)
    assert torch.equal(base, cat)


@pytest.mark.parametrize("act", ["swiglu", "gelu"])
def test_grouped_mm_backend_matches_reference(act):
    """The bench's grouped_mm baseline (its per-expert fallback on CPU)."""
    gated = act == "swiglu"
    p = make_layer(30, H, I, E, gated=gated, bias=True, seed=6)
    res = []
    for backend in ("torch", "grouped_mm"):
        q = leaves(p, torch.float32)
        out, _, _ = moe_TC_softmax_topk_layer(q["x"], q["router_w"], q["w1"], q["b1"], q["w2"],
                                              q["b2"], K, act, kernel_backend_moe=backend)
        out.square().sum().backward()
        res.append([out] + [q[n].grad for n in ("x", "router_w", "w1", "b1", "w2", "b2")])
    for a, b in zip(*res):
        assert rel_err(a, b) <= 1e-5


def test_grouped_mm_padded_path_on_cpu_if_available():
    """The padded torch._grouped_mm path, where this PyTorch runs it on CPU."""
    if not hasattr(torch, "_grouped_mm"):
        pytest.skip("torch._grouped_mm not in this PyTorch")
    p = make_layer(30, H, I, E, bias=True, seed=7)
    scores = torch.rand(60)
    tok = torch.arange(30).repeat_interleave(2)
    exp = torch.randint(0, E, (60,))
    exp[3], exp[7] = E + 3, -2  # dropped, as the library's GPU routing drops them
    try:
        got = reference.moe_grouped_mm(p["x"], scores, tok, exp, p["w1"], p["b1"], p["w2"],
                                       p["b2"], ActivationType.SWIGLU, use_grouped_mm=True)
    except (RuntimeError, NotImplementedError) as e:
        pytest.skip(f"torch._grouped_mm does not run on CPU here: {str(e)[:80]}")
    want = reference.moe_reference(*(t.float() if t.is_floating_point() else t for t in (
        p["x"], scores, tok, exp, p["w1"], p["b1"], p["w2"], p["b2"])), ActivationType.SWIGLU)
    assert rel_err(got, want) <= TOL
