"""FSDP2 (fully_shard) with bf16 mixed precision, on one CPU process (gloo).

FSDP2 gathers the fp32 parameters as bf16 before the forward and reduces
the gradients in fp32: the layer must give exactly the gradients of a bf16
copy, and return an output FSDP2 can hook (not a view).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from conftest import needs_lib
from sonicmoe import MoE

dist = pytest.importorskip("torch.distributed")
try:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
except ImportError:  # pragma: no cover - torch < 2.6
    fully_shard = None


@pytest.fixture
def gloo_group(tmp_path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0,
                            world_size=1)
    yield
    dist.destroy_process_group()


@needs_lib
@pytest.mark.skipif(fully_shard is None, reason="torch.distributed.fsdp.fully_shard needs torch "
                                                ">= 2.6")
def test_fully_shard_bf16_mixed_precision_equals_bf16_module(gloo_group):
    torch.manual_seed(0)
    m = MoE(8, 2, 32, 16, "swiglu", add_bias=True, std=0.05)
    ref = MoE(8, 2, 32, 16, "swiglu", add_bias=True, std=0.05)
    ref.load_state_dict(m.state_dict())
    ref = ref.bfloat16()
    # A CPU mesh: on a machine with a GPU, FSDP2's default mesh would move
    # the parameters there.
    from torch.distributed.device_mesh import init_device_mesh
    fully_shard(m, mesh=init_device_mesh("cpu", (1,)),
                mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16,
                                               reduce_dtype=torch.float32))
    x = torch.randn(2, 12, 32).bfloat16()

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. FSDP2's "returned a view tensor"
        out, aux = m(x)
    (out.float().square().mean() + 0.01 * aux).backward()
    out_r, aux_r = ref(x)
    (out_r.float().square().mean() + 0.01 * aux_r).backward()

    assert torch.equal(out, out_r)
    for (name, p), p_r in zip(m.named_parameters(), ref.parameters()):
        g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
        assert g.dtype == torch.float32, name
        assert torch.equal(g, p_r.grad.float()), name
