"""The layout of the saved pre-activation h (ops.h_stored_columns): the pure
torch formula against the library's smoe_h_stored_column, and a CPU forward's
h read back through it against the pre-activation computed here."""

from __future__ import annotations

import pytest
import torch

from conftest import make_layer, needs_lib
from sonicmoe import SonicMoEError, _lib, ops

GATED, PLAIN = (0, 1, 2), (3, 4, 5, 6)


@needs_lib
@pytest.mark.parametrize("activation", GATED + PLAIN)
def test_formula_matches_library(activation):
    widths = [16, 32, 48, 64, 80, 272] if activation in GATED else [8, 24, 40, 64]
    for R in widths:
        idx = ops.h_stored_columns(R, activation)
        assert idx.tolist() == [_lib.h_stored_column(j, R, activation) for j in range(R)], R
        assert sorted(idx.tolist()) == list(range(R))


def test_formula_checks_its_arguments():
    with pytest.raises(ValueError, match="'width'.*multiple of 16"):
        ops.h_stored_columns(40, 0)
    with pytest.raises(ValueError, match="'width'.*multiple of 8"):
        ops.h_stored_columns(12, 4)
    with pytest.raises(ValueError, match="'width'"):
        ops.h_stored_columns(0, 4)
    with pytest.raises(ValueError, match="'activation'"):
        ops.h_stored_columns(48, 7)
    with pytest.raises(ValueError, match="'activation'"):
        ops.h_stored_columns(48, "swiglu")


@needs_lib
def test_library_checks_the_column_and_width():
    with pytest.raises(SonicMoEError, match="'column'"):
        _lib.h_stored_column(48, 48, 0)
    with pytest.raises(SonicMoEError, match="multiple of 16"):
        _lib.h_stored_column(0, 40, 0)


@needs_lib
@pytest.mark.parametrize("I", [24, 32])  # R = 48 (a short last block), 64
def test_cpu_forward_h_reads_back_through_the_layout(I):
    T, H, E, K = 16, 32, 4, 2
    p = make_layer(T, H, I, E, seed=5)
    g = torch.Generator().manual_seed(6)
    ids = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)]).to(torch.int32)
    scores = torch.full((T, K), 0.5)
    routing = ops.routing_from_topk(ids, E)
    _, h = ops.moe_forward(p["x"], p["w1"], None, p["w2"], None, scores, *routing, 0, True)
    _, offsets, _, sorted_token, _, _ = routing
    positions = torch.arange(h.shape[0], dtype=offsets.dtype)
    expert = torch.searchsorted(offsets, positions, right=True) - 1
    pre = torch.einsum("nh,nrh->nr", p["x"][sorted_token.long()].float(),
                       p["w1"][expert.long()].float())
    natural = h.float()[:, ops.h_stored_columns(2 * I, 0)]
    tol = 2.0**-8 * pre.abs().max().item()  # bf16 rounding of h, fp32 sums
    assert (natural - pre).abs().max().item() <= tol
    # The layout is not the identity here: read naturally, h would not match.
    assert (h.float() - pre).abs().max().item() > 10 * tol
