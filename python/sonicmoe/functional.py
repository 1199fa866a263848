"""Functional API, after the upstream SonicMoE package's
``sonicmoe.functional``: the top-K layer with its router, and the layer on a
general routing.

Weights (the layout the library computes on):
  w1 [E, R, H]  R = 2I for gated activations, rows interleaved (row 2j the
                gate g_j, row 2j+1 the up value u_j); R = I otherwise
  b1 [E, R]     optional
  w2 [E, H, I]
  b2 [E, H]     optional
Upstream passes ``c_fc.weight.permute(1, 2, 0)`` ([R, H, E]) and
``c_proj.weight.permute(1, 2, 0)`` ([H, I, E]); such permuted views of
contiguous [E, R, H] / [E, H, I] tensors are accepted too and read without
a copy. ``is_concatenated_gate_up=True`` takes HF-style [gate; up] rows.

Backends (``kernel_backend_moe``): ``sonicmoe`` runs libsonicmoe on bf16
tensors (CPU tensors on its CPU reference backend, CUDA tensors on its GPU
kernels); ``torch`` is the pure-PyTorch reference (any floating dtype);
``grouped_mm`` is the torch._grouped_mm baseline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _validate as V
from . import ops, reference
from .enums import (ActivationType, KernelBackendMoE, RouterOrder, TokenRounding,
                    activation_code, as_activation, as_backend, as_router_order,
                    as_token_rounding, is_glu)

_BF16 = (torch.bfloat16,)
_FLOATS = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_INDEX = (torch.int32, torch.int64)
_INT32_MAX = 2**31 - 1
_NO_EXPERT = -1  # a padding pair's expert id (round_routing)


# ------------------------------------------------------------------ layout --


def _expert_major(w, name: str, fn: str):
    """w as [E, a, b]: itself if contiguous, or the contiguous tensor behind
    upstream's permute(1, 2, 0) view ([a, b, E])."""
    if isinstance(w, torch.Tensor) and w.dim() == 3 and not w.is_contiguous():
        p = w.permute(2, 0, 1)
        if p.is_contiguous():
            return p
    return w


def interleave_gate_up(w: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """HF-style concatenated [gate; up] rows -> interleaved (gate_j at row 2j,
    up_j at 2j+1) along dim 1 of w [E, 2I, H] or b [E, 2I]; `inverse` undoes
    it. Differentiable. Uses the library (bf16 / fp32 on cpu or cuda) when it
    is available, else an index permutation in PyTorch."""
    fn = "interleave_gate_up"
    V.tensor(fn, "w", w, contiguous=False)
    if w.dim() not in (2, 3) or w.shape[1] % 2 or w.shape[1] == 0:
        raise ValueError(f"sonicmoe.{fn}: argument 'w': expected shape (E, 2*I, H) or "
                         f"(E, 2*I), got {V.shape_str(w.shape)}")
    from . import _lib

    # While tracing, the index permutation below (plain PyTorch, traceable)
    # stands in: probing for the library reads files, which Dynamo won't.
    if (w.dtype in (torch.bfloat16, torch.float32) and w.device.type in ("cpu", "cuda")
            and w.numel() > 0 and not torch.compiler.is_compiling() and _lib.available()):
        return ops.permute_gate_up(w.contiguous(), bool(inverse))
    n = w.shape[1] // 2
    if not inverse:
        perm = torch.stack([torch.arange(n), torch.arange(n) + n], dim=1).reshape(-1)
    else:
        perm = torch.cat([torch.arange(0, 2 * n, 2), torch.arange(1, 2 * n, 2)])
    return w[:, perm.to(w.device)]


def deinterleave_gate_up(w: torch.Tensor) -> torch.Tensor:
    """Inverse of interleave_gate_up: interleaved rows -> [gate; up]."""
    return interleave_gate_up(w, inverse=True)


# ---------------------------------------------------------------- autocast --


def _autocast_dtype(device_type: str):
    """The dtype torch.autocast asks for on this device type, None when off."""
    if device_type not in ("cpu", "cuda"):
        return None
    try:
        enabled = torch.is_autocast_enabled(device_type)
        dtype = torch.get_autocast_dtype(device_type) if enabled else None
    except (TypeError, AttributeError):  # pragma: no cover - torch < 2.4
        cuda = device_type == "cuda"
        enabled = torch.is_autocast_enabled() if cuda else torch.is_autocast_cpu_enabled()
        dtype = (torch.get_autocast_gpu_dtype() if cuda else torch.get_autocast_cpu_dtype()) \
            if enabled else None
    return dtype


def _autocast_inputs(fn, backend, x, *tensors):
    """Under torch.autocast, the layer's floating inputs (x and the expert
    weights) in the autocast dtype, as autocast treats a matmul: fp32 and
    fp16 tensors are cast (differentiably, so fp32 parameters get fp32
    gradients), fp64 ones are left alone. The library computes in bf16
    only, so it refuses another autocast dtype rather than change the
    precision the caller asked for."""
    dtype = _autocast_dtype(x.device.type) if isinstance(x, torch.Tensor) else None
    if dtype is None:
        return (x, *tensors)
    if backend == KernelBackendMoE.sonicmoe and dtype != torch.bfloat16:
        raise TypeError(f"sonicmoe.{fn}: torch.autocast asks for "
                        f"{str(dtype).replace('torch.', '')}; the library computes in bfloat16 "
                        f"only: use torch.autocast(..., dtype=torch.bfloat16)")

    def cast(t):
        if isinstance(t, torch.Tensor) and t.dtype in (torch.float32, torch.float16) \
                and t.dtype != dtype:
            return t.to(dtype)
        return t
    return tuple(cast(t) for t in (x, *tensors))


# -------------------------------------------------------------- validation --


def _check_weights(fn, x, w1, b1, w2, b2, act, backend, num_experts=None):
    """Shapes, dtypes, devices of x and the expert weights; returns E, H, I."""
    lib = backend == KernelBackendMoE.sonicmoe
    dt = _BF16 if lib else _FLOATS
    V.tensor(fn, "x", x, dtypes=dt, ndim=2, expect="(T, H)", align=16 if lib else None)
    T, H = x.shape
    dev = x.device
    if x.device.type not in ("cpu", "cuda", "meta"):
        raise ValueError(f"sonicmoe.{fn}: argument 'x': expected a cpu or cuda tensor, got one "
                         f"on {x.device}")
    if T < 1:
        raise ValueError(f"sonicmoe.{fn}: argument 'x': expected at least one token, got shape "
                         f"{V.shape_str(x.shape)}")
    if not lib:
        dt = (x.dtype,)
    V.tensor(fn, "w2", w2, dtypes=dt, ndim=3, expect="(E, H, I)", device=dev,
             align=16 if lib else None)
    E, _, I = w2.shape
    if num_experts is not None and E != num_experts:
        raise ValueError(f"sonicmoe.{fn}: argument 'w2': expected {num_experts} experts "
                         f"(argument 'E'), got shape {V.shape_str(w2.shape)}")
    V.tensor(fn, "w2", w2, shape=(E, H, I), expect="(E, H, I)")
    R = 2 * I if is_glu(act) else I
    V.tensor(fn, "w1", w1, dtypes=dt, shape=(E, R, H), device=dev, align=16 if lib else None,
             expect=f"(E, {'2*I' if is_glu(act) else 'I'}, H) for {act.value}")
    if b1 is not None:
        V.tensor(fn, "b1", b1, dtypes=dt, shape=(E, R), device=dev, align=16 if lib else None,
                 expect="(E, R)")
    if b2 is not None:
        V.tensor(fn, "b2", b2, dtypes=dt, shape=(E, H), device=dev, align=16 if lib else None,
                 expect="(E, H)")
    if lib:
        V.feature_size(fn, "the hidden size H (x.shape[1])", H)
        V.feature_size(fn, "the intermediate size I (w2.shape[2])", I)
        if T >= _INT32_MAX or E >= _INT32_MAX:
            raise ValueError(f"sonicmoe.{fn}: T and E must be below 2^31-1 (int32 metadata)")
    return E, H, I


def _prepare(fn, x, w1, b1, w2, b2, activation_type, kernel_backend_moe,
             is_concatenated_gate_up, num_experts=None):
    act = as_activation(activation_type, "activation_type")
    backend = as_backend(kernel_backend_moe)
    V.tensor(fn, "x", x, contiguous=False)
    w1 = _expert_major(w1, "w1", fn)
    w2 = _expert_major(w2, "w2", fn)
    x, w1, b1, w2, b2 = _autocast_inputs(fn, backend, x, w1, b1, w2, b2)
    if is_concatenated_gate_up and is_glu(act):
        V.tensor(fn, "w1", w1, ndim=3, expect="(E, 2*I, H)")
        w1 = interleave_gate_up(w1)
        if b1 is not None:
            V.tensor(fn, "b1", b1, ndim=2, expect="(E, 2*I)")
            b1 = interleave_gate_up(b1)
    E, H, I = _check_weights(fn, x, w1, b1, w2, b2, act, backend, num_experts)
    return act, backend, x, w1, b1, w2, b2, E


def _compat_positional(activation_type, is_inference_mode_enabled, extra, stream_id):
    """Upstream's positional form puts `stream_id` before `activation_type`:
    f(..., stream_id, activation_type, is_inference_mode_enabled). An int in
    the activation slot is taken as that stream id (unused here: kernels run
    on torch.cuda.current_stream())."""
    if isinstance(activation_type, int) and not isinstance(activation_type, bool):
        stream_id = activation_type
        if isinstance(is_inference_mode_enabled, (ActivationType, str)):
            activation_type = is_inference_mode_enabled
            is_inference_mode_enabled = bool(extra) if extra is not None else False
        else:
            activation_type = ActivationType.SWIGLU
    elif extra is not None:
        raise TypeError("sonicmoe: too many positional arguments")
    return activation_type, bool(is_inference_mode_enabled), stream_id


def _router_logits(x, router_w):
    # Mixed dtypes (e.g. bf16 x with an fp32 router) compute the logits in
    # fp32: the top-K choice is then made on the more precise values.
    if x.dtype == router_w.dtype:
        return F.linear(x, router_w)
    return F.linear(x.float(), router_w.float())


def _keep_h(inference: bool, *tensors) -> bool:
    """Training mode (keep H for backward) only when a backward can follow:
    under torch.no_grad() or with no input requiring grad the library runs
    its inference mode and keeps nothing."""
    if inference or not torch.is_grad_enabled():
        return False
    return any(t is not None and t.requires_grad for t in tensors)


# ------------------------------------------------------------------ router --


def softmax_topk_router(router_logits: torch.Tensor, K: int,
                        router_order: RouterOrder | str = RouterOrder.TOPK_THEN_SOFTMAX,
                        renormalize: bool = False,
                        kernel_backend_moe: KernelBackendMoE | str = KernelBackendMoE.sonicmoe):
    """Token-choice router on logits [T, E]: (scores fp32 [T, K], expert ids
    int32 [T, K]), ids by descending logit (ties to the lower id).
    Differentiable w.r.t. the logits."""
    fn = "softmax_topk_router"
    order = as_router_order(router_order)
    backend = as_backend(kernel_backend_moe)
    lib = backend == KernelBackendMoE.sonicmoe
    V.tensor(fn, "router_logits", router_logits,
             dtypes=(torch.float32, torch.bfloat16) if lib else _FLOATS, ndim=2,
             expect="(T, E)", align=4 if lib else None)
    T, E = router_logits.shape
    V.integer(fn, "K", K, 1, E)
    if T < 1:
        raise ValueError(f"sonicmoe.{fn}: argument 'router_logits': expected at least one token")
    if not lib:
        return reference.router(router_logits, K, order, bool(renormalize))
    return ops.router_forward(router_logits, K, order.value, bool(renormalize))


# ------------------------------------------------------------------- layer --


def moe_TC_softmax_topk_layer(
    x: torch.Tensor,
    router_w: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor | None,
    w2: torch.Tensor,
    b2: torch.Tensor | None,
    K: int,
    activation_type: ActivationType | str = ActivationType.SWIGLU,
    is_inference_mode_enabled: bool = False,
    _upstream_extra=None,
    *,
    router_order: RouterOrder | str = RouterOrder.TOPK_THEN_SOFTMAX,
    renormalize: bool = False,
    kernel_backend_moe: KernelBackendMoE | str = KernelBackendMoE.sonicmoe,
    is_concatenated_gate_up: bool = False,
    stream_id: int | None = None,
    token_rounding: TokenRounding | str | None = None,
    rounding_tile: int = 128,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token-choice top-K MoE layer.

    logits = x router_w^T (PyTorch); top-K + softmax (either order), routing
    metadata and the experts in the chosen backend.

    x [T, H]; router_w [E, H]; w1, b1, w2, b2 as in the module docstring.
    Returns (output [T, H], router_logits [T, E], expert_frequency int32 [E]).
    Gradients flow to x, router_w, w1, b1, w2, b2.

    `is_inference_mode_enabled` keeps nothing for backward (the output
    cannot be differentiated). `router_order`: TOPK_THEN_SOFTMAX (softmax over
    the K picked logits) or SOFTMAX_THEN_TOPK (softmax over all E, then the
    K largest; divided by their sum when `renormalize`).

    `token_rounding` ('nearest', 'up', 'down'; None: plain top-K) rounds each
    expert's count to a multiple of `rounding_tile` after the router
    (round_routing) and runs the experts on that general routing
    (moe_general_routing_inputs); expert_frequency then counts the rounded
    pairs. The routing runs in libsonicmoe whatever the expert backend.
    Gradients: see round_routing (added pairs' scores are constants)."""
    fn = "moe_TC_softmax_topk_layer"
    activation_type, inference, _ = _compat_positional(
        activation_type, is_inference_mode_enabled, _upstream_extra, stream_id)
    act, backend, x, w1, b1, w2, b2, E = _prepare(fn, x, w1, b1, w2, b2, activation_type,
                                                   kernel_backend_moe, is_concatenated_gate_up)
    order = as_router_order(router_order)
    V.tensor(fn, "router_w", router_w, dtypes=_FLOATS, shape=(E, x.shape[1]), device=x.device,
             expect="(E, H)", contiguous=False)
    V.integer(fn, "K", K, 1, E)
    logits = _router_logits(x, router_w)
    if token_rounding is not None:
        if backend == KernelBackendMoE.sonicmoe:
            scores, ids = ops.router_forward(logits, K, order.value, bool(renormalize))
        else:
            scores, ids = reference.router(logits, K, order, bool(renormalize))
        z = logits if logits.dtype in (torch.float32, torch.bfloat16) else logits.float()
        tok, exp, sc, _num = round_routing(z, ids, scores, rounding_tile, token_rounding)
        out, freq = moe_general_routing_inputs(
            x, sc, tok, exp, w1, b1, w2, b2, E, act, inference, kernel_backend_moe=backend)
        return out, logits, freq
    if backend != KernelBackendMoE.sonicmoe:
        impl = reference.moe_reference if backend == KernelBackendMoE.torch \
            else reference.moe_grouped_mm
        out, logits, freq = reference.moe_layer_reference(
            x, router_w, w1, b1, w2, b2, K, act, order, bool(renormalize), impl=impl)
        return out, logits, freq
    scores, ids = ops.router_forward(logits, K, order.value, bool(renormalize))
    routing = ops.routing_from_topk(ids, E)
    out, _h = ops.moe_forward(x, w1, b1, w2, b2, scores, *routing, activation_code(act),
                              _keep_h(inference, x, w1, b1, w2, b2, scores))
    return out, logits, routing[0]


def moe_general_routing_inputs(
    x: torch.Tensor,
    router_scores: torch.Tensor,
    token_indices: torch.Tensor,
    expert_indices: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor | None,
    w2: torch.Tensor,
    b2: torch.Tensor | None,
    E: int,
    activation_type: ActivationType | str = ActivationType.SWIGLU,
    is_inference_mode_enabled: bool = False,
    _upstream_extra=None,
    *,
    kernel_backend_moe: KernelBackendMoE | str = KernelBackendMoE.sonicmoe,
    is_concatenated_gate_up: bool = False,
    stream_id: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MoE layer on a general routing: N (token, expert, score) triples,
    sorted by token (a token may have any number of experts, zero included).

    router_scores [N] (any floating dtype; computed in fp32); token_indices,
    expert_indices [N] int32 or int64, token_indices non-decreasing in
    [0, T), expert_indices in [0, E), or -1 for a padding pair (what
    round_routing writes past its pair count), which is dropped: it counts
    for no expert and its score gets gradient 0. Returns (output [T, H],
    expert_frequency int32 [E]). Gradients flow to x, router_scores, w1, b1,
    w2, b2.

    On CPU tensors the index ranges and the order are checked here; on CUDA
    they are not (that would synchronise with the host): the library drops
    pairs whose ids are out of range, and unsorted token indices give
    undefined (but memory-safe) results."""
    fn = "moe_general_routing_inputs"
    activation_type, inference, _ = _compat_positional(
        activation_type, is_inference_mode_enabled, _upstream_extra, stream_id)
    V.integer(fn, "E", E, 1, _INT32_MAX - 1)
    act, backend, x, w1, b1, w2, b2, E = _prepare(fn, x, w1, b1, w2, b2, activation_type,
                                                   kernel_backend_moe, is_concatenated_gate_up,
                                                   num_experts=E)
    T = x.shape[0]
    V.tensor(fn, "router_scores", router_scores, dtypes=_FLOATS, ndim=1, expect="(N,)",
             device=x.device, contiguous=False)
    N = router_scores.shape[0]
    V.tensor(fn, "token_indices", token_indices, dtypes=_INDEX, shape=(N,), expect="(N,)",
             device=x.device, contiguous=False)
    V.tensor(fn, "expert_indices", expert_indices, dtypes=_INDEX, shape=(N,), expect="(N,)",
             device=x.device, contiguous=False)
    if N > _INT32_MAX:
        raise ValueError(f"sonicmoe.{fn}: at most 2^31-1 pairs, got {N}")
    V.index_range(fn, "token_indices", token_indices, 0, T)
    V.index_range(fn, "expert_indices", expert_indices, 0, E, padding=_NO_EXPERT)
    V.non_decreasing(fn, "token_indices", token_indices)
    if backend != KernelBackendMoE.sonicmoe:
        impl = reference.moe_reference if backend == KernelBackendMoE.torch \
            else reference.moe_grouped_mm
        out = impl(x, router_scores.float(), token_indices, expert_indices, w1, b1, w2, b2, act)
        return out, reference.expert_frequency(expert_indices, E)
    scores = router_scores.to(torch.float32).contiguous()
    tok = token_indices.to(torch.int32).contiguous()
    exp = expert_indices.to(torch.int32).contiguous()
    routing = ops.routing_from_pairs(tok, exp, T, E)
    out, _h = ops.moe_forward(x, w1, b1, w2, b2, scores, *routing, activation_code(act),
                              _keep_h(inference, x, w1, b1, w2, b2, scores))
    return out, routing[0]


def round_routing(logits: torch.Tensor, topk_ids: torch.Tensor, topk_scores: torch.Tensor,
                  tile: int = 128, mode: TokenRounding | str = TokenRounding.NEAREST):
    """Token rounding (tile-aware routing) of a top-K routing.

    logits [T, E] f32 or bf16 (the router's input), topk_ids [T, K] int32 or
    int64 in [0, E), topk_scores [T, K] (the router's outputs). Each expert's
    count is rounded to a multiple of `tile` ('nearest' with ties to even,
    'up' or 'down', capped at T): an expert that must drop tokens drops its
    lowest-scoring picks, one that must take more takes the tokens with the
    highest raw probability softmax(logits[t])[e] among those that did not
    pick it (every pick outranks every non-pick).

    Returns (token_ids int32 [C], expert_ids int32 [C], scores f32 [C],
    num_pairs int32 [1]) sorted by token then expert, C the capacity
    (ops.round_routing_capacity: T*K + E*(tile-1) for 'up', T*K + E*(tile//2)
    for 'nearest', T*K for 'down', at most T*E). The pair count stays on the
    device (no host sync): the tail [num_pairs, C) is padding (token T-1,
    expert -1, score 0), which moe_general_routing_inputs drops; pass the
    four outputs to it as they are.

    Gradients: a kept pick's score is its top-K score and its gradient flows
    to topk_scores (and from there through the router to the logits); an
    added pair's score, the raw probability, is treated as a constant (no
    gradient reaches the logits through it), like padding."""
    fn = "round_routing"
    m = as_token_rounding(mode, "mode")
    V.tensor(fn, "logits", logits, dtypes=(torch.float32, torch.bfloat16), ndim=2,
             expect="(T, E)", align=4, contiguous=False)
    T, E = logits.shape
    V.tensor(fn, "topk_ids", topk_ids, dtypes=_INDEX, ndim=2, expect="(T, K)",
             device=logits.device, contiguous=False)
    K = topk_ids.shape[1]
    V.tensor(fn, "topk_ids", topk_ids, shape=(T, K), expect="(T, K)")
    V.tensor(fn, "topk_scores", topk_scores, dtypes=_FLOATS, shape=(T, K), expect="(T, K)",
             device=logits.device, contiguous=False)
    V.integer(fn, "tile", tile, 1, _INT32_MAX)
    V.index_range(fn, "topk_ids", topk_ids, 0, E)
    return ops.round_routing(logits.contiguous(), topk_ids.to(torch.int32).contiguous(),
                             topk_scores.to(torch.float32).contiguous(), int(tile), m.value)


def switch_aux_loss(router_logits: torch.Tensor, expert_frequency: torch.Tensor) -> torch.Tensor:
    """Switch-Transformer load-balancing loss E * sum_e f_e * P_e.

    f_e = expert_frequency[e] / sum(expert_frequency): the share of routed
    (token, expert) pairs that went to e (for K=1 the fraction of tokens);
    P_e = the mean over tokens of softmax(router_logits)[:, e]. Equals 1 for a
    perfectly balanced router whatever K. Differentiable w.r.t. the logits
    (f is a count). Normalised as upstream SonicMoE does."""
    logits = router_logits.reshape(-1, router_logits.shape[-1])
    E = logits.shape[1]
    p = torch.softmax(logits, dim=-1, dtype=torch.float32).mean(dim=0)
    f = expert_frequency.to(torch.float32)
    f = f / f.sum().clamp_min(1.0)
    return E * (p * f).sum()
