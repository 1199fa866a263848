"""Mixed precision: fp32 parameters under torch.autocast(dtype=bfloat16).

The standard PyTorch recipe keeps fp32 master weights and runs matmuls in
bf16 under autocast. The layer then casts x and the expert weights to bf16
itself (differentiably), so it must give exactly what the same layer with
bf16 parameters gives, output and every gradient, the gradients arriving in
fp32 on the fp32 parameters.
"""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import DEVICES, general_routing, module_step, needs_lib
from sonicmoe import KernelBackendMoE, MoE, moe_general_routing_inputs


def _step(m, x, backend=KernelBackendMoE.sonicmoe):
    out, aux = m(x, kernel_backend_moe=backend)
    (out.float().square().mean() + 0.01 * aux).backward()
    return out, aux


@needs_lib
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("act,bias", [("swiglu", False), ("gelu", True)])
def test_fp32_module_under_autocast_equals_bf16_module(device, act, bias):
    torch.manual_seed(0)
    m32 = MoE(8, 2, 64, 32, act, bias, 0.05).to(device)
    m16 = copy.deepcopy(m32).bfloat16()
    x0 = torch.randn(3, 16, 64, device=device)
    x32 = x0.clone().requires_grad_()
    x16 = x0.bfloat16().requires_grad_()

    with torch.autocast(device, dtype=torch.bfloat16):
        out32, aux32 = _step(m32, x32)
    out16, aux16 = _step(m16, x16)

    assert out32.dtype == torch.bfloat16 and out32.shape == x0.shape
    assert torch.equal(out32, out16)
    assert torch.allclose(aux32.float(), aux16.float(), rtol=0, atol=1e-6)
    assert x32.grad.dtype == torch.float32
    assert torch.equal(x32.grad, x16.grad.float())
    for (name, p32), p16 in zip(m32.named_parameters(), m16.parameters()):
        assert p32.grad.dtype == torch.float32, name
        assert torch.equal(p32.grad, p16.grad.float()), name


@needs_lib
@pytest.mark.parametrize("device", DEVICES)
def test_general_routing_under_autocast(device):
    torch.manual_seed(1)
    T, H, I, E = 20, 32, 16, 5
    x = torch.randn(T, H, device=device)
    w1 = (0.05 * torch.randn(E, 2 * I, H, device=device)).requires_grad_()
    w2 = (0.05 * torch.randn(E, H, I, device=device)).requires_grad_()
    scores, tok, exp = general_routing(T, E, device=device, seed=4)

    with torch.autocast(device, dtype=torch.bfloat16):
        out, freq = moe_general_routing_inputs(x, scores, tok, exp, w1, None, w2, None, E)
    out.float().sum().backward()
    ref, ref_freq = moe_general_routing_inputs(x.bfloat16(), scores, tok, exp,
                                               w1.detach().bfloat16(), None,
                                               w2.detach().bfloat16(), None, E)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, ref) and torch.equal(freq, ref_freq)
    assert w1.grad.dtype == torch.float32 and w2.grad.dtype == torch.float32


@needs_lib
@pytest.mark.parametrize("device", DEVICES)
def test_inference_under_autocast(device):
    torch.manual_seed(2)
    m32 = MoE(4, 2, 32, 16, "swiglu").to(device).eval()
    m16 = copy.deepcopy(m32).bfloat16()
    x = torch.randn(10, 32, device=device)
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
        out, aux = m32(x)
    assert aux is None or aux.dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(out, m16(x.bfloat16())[0])


@needs_lib
def test_float16_autocast_is_refused_with_the_fix():
    m = MoE(4, 2, 32, 16, "swiglu")
    x = torch.randn(10, 32)
    with torch.autocast("cpu", dtype=torch.float16):
        with pytest.raises(TypeError, match=r"moe_TC_softmax_topk_layer: torch.autocast asks "
                                            r"for float16.*dtype=torch.bfloat16"):
            m(x)
        # The pure-PyTorch reference runs in any dtype: it follows autocast.
        out, _ = m(x, kernel_backend_moe=KernelBackendMoE.torch)
        assert out.dtype == torch.float16


@needs_lib
def test_autocast_off_or_other_device_changes_nothing():
    """fp32 parameters without autocast still get the dtype error; autocast
    on another device type does not cast these tensors."""
    m = MoE(4, 2, 32, 16, "swiglu")
    x = torch.randn(10, 32)
    with pytest.raises(TypeError, match="argument 'x': expected dtype bfloat16, got float32"):
        m(x)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=torch.cuda.is_available()):
        with pytest.raises(TypeError, match="expected dtype bfloat16, got float32"):
            m(x)


@needs_lib
def test_compiled_under_autocast_equals_eager():
    torch._dynamo.reset()
    torch.manual_seed(3)
    m = MoE(8, 2, 64, 32, "swiglu")
    x0 = torch.randn(24, 64)

    def step(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, aux = m(x)
        return out, aux

    eager = module_step(m, step, x0)
    compiled = module_step(m, torch.compile(step, fullgraph=True, backend="aot_eager"), x0)
    for a, b in zip(eager, compiled):
        assert a.dtype == b.dtype and torch.equal(a, b)
