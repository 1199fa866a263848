"""Pure-PyTorch implementations of the layer: the reference (backend
``KernelBackendMoE.torch``) and the grouped-GEMM baseline
(``KernelBackendMoE.grouped_mm``).

The reference is written for clarity, not speed: one gather, a loop over
the experts, one index_add, in whatever floating dtype it is given (fp32
for the tests' oracle). It reads data-dependent sizes on the host, so it
is neither torch.compile-able with fullgraph=True nor CUDA-graph
capturable; the library backend is both.

Pairs: a general routing is N (token, expert, score) triples sorted by
token; top-K routing is the special case token = i // K, expert =
expert_ids.flatten()[i], score = scores.flatten()[i].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .enums import ActivationType, RouterOrder, is_glu


# ------------------------------------------------------------- activations --


def activation_fn(activation: ActivationType):
    """act(H) for H of shape [..., R]; gated ones read interleaved columns."""
    a = activation

    def gated(inner):
        return lambda h: inner(h[..., 0::2]) * h[..., 1::2]

    return {
        ActivationType.SWIGLU: gated(F.silu),
        ActivationType.GEGLU: gated(F.gelu),
        ActivationType.REGLU: gated(F.relu),
        ActivationType.GELU: F.gelu,
        ActivationType.RELU: F.relu,
        ActivationType.RELU_SQ: lambda h: F.relu(h).square(),
        ActivationType.SILU: F.silu,
    }[a]


# ------------------------------------------------------------------ router --


def router(logits: torch.Tensor, k: int, order: RouterOrder = RouterOrder.TOPK_THEN_SOFTMAX,
           renormalize: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-choice router: scores [T, K] fp32 and expert ids [T, K] int32.

    Ids are the K largest logits by descending value, ties to the lower
    expert id (a stable sort), as the library picks them. Scores:
    TOPK_THEN_SOFTMAX = softmax over the K chosen logits; SOFTMAX_THEN_TOPK =
    the chosen entries of the softmax over all E, divided by their sum when
    `renormalize`."""
    z = logits.float()
    ids = torch.sort(z, dim=-1, descending=True, stable=True).indices[:, :k]
    if order == RouterOrder.TOPK_THEN_SOFTMAX:
        scores = torch.softmax(z.gather(1, ids), dim=-1)
    else:
        scores = torch.softmax(z, dim=-1).gather(1, ids)
        if renormalize:
            scores = scores / scores.sum(dim=-1, keepdim=True)
    return scores, ids.to(torch.int32)


def topk_pairs(expert_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(token_indices, expert_indices) [T*K] of a top-K routing."""
    T, K = expert_ids.shape
    tok = torch.arange(T, device=expert_ids.device).repeat_interleave(K)
    return tok, expert_ids.reshape(-1)


# ------------------------------------------------------------------- layer --


def moe_reference(x: torch.Tensor, scores: torch.Tensor, token_indices: torch.Tensor,
                  expert_indices: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None,
                  w2: torch.Tensor, b2: torch.Tensor | None,
                  activation: ActivationType) -> torch.Tensor:
    """out[t] = sum over pairs i of token t: scores[i] * expert_{e_i}(x[t]).

    expert_e(x) = act(x W1_e^T + b1_e) W2_e^T + b2_e. Pairs whose expert id
    is outside [0, E) are ignored (as the library's GPU routing drops them).
    Sub-fp32 inputs accumulate the sum over pairs in fp32."""
    T, H = x.shape
    E = w1.shape[0]
    act = activation_fn(activation)
    acc = torch.float32 if x.dtype in (torch.bfloat16, torch.float16) else x.dtype
    scores = scores.reshape(-1)
    tok = token_indices.reshape(-1).long()
    exp = expert_indices.reshape(-1).long()
    valid = ((exp >= 0) & (exp < E)).nonzero().squeeze(1)
    # Group the pairs by expert (stable), gather x once, and loop over the
    # experts on split() chunks with unbind()-ed weights: their backward
    # passes concatenate / stack the pieces, where indexing per expert would
    # materialise a full-size zero gradient for every expert.
    order = valid[torch.argsort(exp[valid], stable=True)]
    tok, exp, scores = tok[order], exp[order], scores[order]
    counts = torch.bincount(exp, minlength=E).tolist()
    w1s, w2s = w1.unbind(0), w2.unbind(0)
    b1s = b1.unbind(0) if b1 is not None else [None] * E
    b2s = b2.unbind(0) if b2 is not None else [None] * E
    ys = []
    for e, xe in enumerate(x.index_select(0, tok).split(counts)):
        if xe.shape[0] == 0:
            continue
        h = F.linear(xe, w1s[e], b1s[e])
        ys.append(F.linear(act(h), w2s[e], b2s[e]))
    out = torch.zeros(T, H, dtype=acc, device=x.device)
    if ys:
        y = torch.cat(ys)
        out = out.index_add(0, tok, y.to(acc) * scores.to(acc).unsqueeze(1))
    return out.to(x.dtype)


def expert_frequency(expert_indices: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Pairs routed to each expert, int32 [E] (out-of-range ids not counted)."""
    e = expert_indices.reshape(-1).long()
    valid = (e >= 0) & (e < num_experts)
    counts = torch.zeros(num_experts, dtype=torch.int32, device=e.device)
    return counts.index_add_(0, torch.where(valid, e, 0),
                             valid.to(torch.int32))


# ----------------------------------------------------- grouped-GEMM baseline --

_ALIGN_M = 16  # rows per group that torch._grouped_mm wants on some versions


def _grouped_mm_available(x: torch.Tensor) -> bool:
    return (hasattr(torch, "_grouped_mm") and x.is_cuda and x.dtype == torch.bfloat16)


def moe_grouped_mm(x: torch.Tensor, scores: torch.Tensor, token_indices: torch.Tensor,
                   expert_indices: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None,
                   w2: torch.Tensor, b2: torch.Tensor | None, activation: ActivationType,
                   use_grouped_mm: bool | None = None) -> torch.Tensor:
    """The same layer as a framework user would write it on grouped GEMMs.

    Sort the pairs by expert, gather X into per-expert groups padded to
    16-row multiples (no host sync: padded positions come from an on-device
    prefix sum), up-projection with torch._grouped_mm, activation,
    down-projection with torch._grouped_mm, scale by the scores and
    index_add back to the tokens. Without torch._grouped_mm (older PyTorch,
    CPU, non-bf16) this is the per-expert loop of moe_reference."""
    T, H = x.shape
    E, R, _ = w1.shape
    N = expert_indices.numel()
    act = activation_fn(activation)
    if use_grouped_mm is None:
        use_grouped_mm = _grouped_mm_available(x)
    if not use_grouped_mm:
        return moe_reference(x, scores, token_indices, expert_indices, w1, b1, w2, b2,
                             activation)
    e = expert_indices.reshape(-1).long()
    tok = token_indices.reshape(-1).long()
    s = scores.reshape(-1)
    # Pairs with an expert id outside [0, E) contribute nothing (no host sync
    # to remove them: they go to expert 0 with a zero score).
    valid = (e >= 0) & (e < E)
    e = torch.where(valid, e, 0)
    s = s * valid
    order = torch.argsort(e, stable=True)
    e_sorted, tok_sorted, s_sorted = e[order], tok[order], s[order]
    counts = torch.bincount(e_sorted, minlength=E)
    padded = (counts + _ALIGN_M - 1) // _ALIGN_M * _ALIGN_M
    pad_end = torch.cumsum(padded, 0)
    start = torch.cumsum(counts, 0) - counts
    pad_start = pad_end - padded
    rank = torch.arange(N, device=x.device) - start[e_sorted]
    dest = pad_start[e_sorted] + rank
    M = N + _ALIGN_M * E  # static upper bound of the padded row count
    xg = x.new_zeros(M, H).index_copy(0, dest, x[tok_sorted])
    offs = pad_end.to(torch.int32)
    h = torch._grouped_mm(xg, w1.transpose(1, 2), offs=offs)
    if b1 is not None:
        h = h + b1[e_sorted.new_zeros(M).index_copy(0, dest, e_sorted)]
    a = act(h)
    y = torch._grouped_mm(a, w2.transpose(1, 2), offs=offs)
    y = y[dest]
    if b2 is not None:
        y = y + b2[e_sorted]
    out = torch.zeros(T, H, dtype=torch.float32, device=x.device)
    out = out.index_add(0, tok_sorted, y.float() * s_sorted.float()[:, None])
    return out.to(x.dtype)


def moe_layer_reference(x, router_w, w1, b1, w2, b2, k, activation,
                        order=RouterOrder.TOPK_THEN_SOFTMAX, renormalize=False,
                        impl=moe_reference):
    """Top-K layer: logits = x router_w^T, router, then `impl` on the pairs.

    Returns (out, logits, expert_frequency)."""
    logits = F.linear(x, router_w) if x.dtype == router_w.dtype else \
        F.linear(x.float(), router_w.float())
    scores, ids = router(logits, k, order, renormalize)
    tok, exp = topk_pairs(ids)
    out = impl(x, scores.reshape(-1), tok, exp, w1, b1, w2, b2, activation)
    return out, logits, expert_frequency(ids, w1.shape[0])


__all__ = ["activation_fn", "router", "moe_reference", "moe_grouped_mm", "expert_frequency",
           "topk_pairs", "moe_layer_reference", "is_glu"]
