"""The library's calls as PyTorch custom operators (namespace ``sonicmoe``).

Each op allocates its outputs (and its workspace) with PyTorch on the input's
device and runs one library call on ``torch.cuda.current_stream()`` (CPU
tensors: the library's CPU backend). Every output shape follows from input
shapes alone (N = T*K for top-K routing, N = len(token_ids) for general
routing), so the ops have exact fake implementations: torch.compile traces
them with fullgraph=True and CUDA graphs capture them (no host syncs).

Autograd: router_forward -> router_backward, moe_forward -> moe_backward,
permute_gate_up -> its inverse, round_routing -> its scores' gradient to
topk_scores (below). The routing ops produce int32 metadata and are not
differentiable.

Ops (all functional, no input is mutated):
  sonicmoe::router_forward(logits, k, order, renormalize) -> (scores f32 [T,K], ids i32 [T,K])
  sonicmoe::router_backward(logits, ids, dscores, order, renormalize) -> dlogits
  sonicmoe::routing_from_topk(ids, num_experts) -> 6 x int32 metadata
  sonicmoe::routing_from_pairs(token_ids, expert_ids, num_tokens, num_experts) -> 6 x int32
  sonicmoe::moe_forward(x, w1, b1?, w2, b2?, scores, <6 metadata>, activation, training)
      -> (out [T,H], h [N,R] (empty in inference); h's rows are in position
         order, its columns in the library's layout: h_stored_columns)
  sonicmoe::moe_backward(x, w1, b1?, w2, b2?, scores, <6 metadata>, activation, h, dout,
                         needs bool[6])
      -> (dx, dw1, db1, dw2, db2, dscores); empty where needs is False (autograd's
         needs_input_grad) or the bias is absent: that work is skipped
  sonicmoe::permute_gate_up(src, inverse) -> dst   (HF [gate; up] rows <-> interleaved)
  sonicmoe::round_routing(logits, topk_ids, topk_scores, tile, mode)
      -> (token_ids i32 [C], expert_ids i32 [C], scores f32 [C], num_pairs i32 [1]),
      C = round_routing_capacity(T, E, K, tile, mode); the tail past num_pairs
      is padding (expert -1, score 0), which routing_from_pairs and the layer drop
"""

from __future__ import annotations

import torch

from . import _lib

_I32 = torch.int32
_F32 = torch.float32

_ROUTING = ("Tensor expert_counts, Tensor expert_offsets, Tensor token_offsets, "
            "Tensor sorted_token, Tensor sorted_pair, Tensor pair_position")
_SIX = "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"


def _prep(t: torch.Tensor | None, align: int) -> torch.Tensor | None:
    """Contiguous and aligned as the library requires.

    The public functions have already rejected bad layouts with a ValueError;
    this only guards tensors that a compiler produced (e.g. views into a
    larger buffer), for which a copy is the right answer."""
    if t is None:
        return None
    t = t.contiguous()
    if t.numel() and t.data_ptr() % align:
        t = t.clone()
    return t


def _a16(t):
    return _prep(t, 16)


def _a4(t):
    return _prep(t, 4)


def _routing_like(device, T: int, E: int, N: int):
    e = lambda n: torch.empty(n, dtype=_I32, device=device)  # noqa: E731
    return e(E), e(E + 1), e(T + 1), e(N), e(N), e(N)


# ------------------------------------------------------------------ router --


@torch.library.custom_op("sonicmoe::router_forward", mutates_args=(),
                         schema="(Tensor logits, int k, int order, bool renormalize) "
                                "-> (Tensor, Tensor)")
def router_forward(logits: torch.Tensor, k: int, order: int, renormalize: bool):
    logits = _a4(logits)
    T = logits.shape[0]
    scores = torch.empty(T, k, dtype=_F32, device=logits.device)
    ids = torch.empty(T, k, dtype=_I32, device=logits.device)
    _lib.router_forward(logits, k, order, renormalize, scores, ids)
    return scores, ids


@router_forward.register_fake
def _(logits, k, order, renormalize):
    T = logits.shape[0]
    return logits.new_empty(T, k, dtype=_F32), logits.new_empty(T, k, dtype=_I32)


@torch.library.custom_op("sonicmoe::router_backward", mutates_args=(),
                         schema="(Tensor logits, Tensor expert_ids, Tensor dscores, int order, "
                                "bool renormalize) -> Tensor")
def router_backward(logits, expert_ids, dscores, order: int, renormalize: bool):
    logits, expert_ids, dscores = _a4(logits), _a4(expert_ids), _a4(dscores)
    dlogits = torch.empty_like(logits, memory_format=torch.contiguous_format)
    _lib.router_backward(logits, expert_ids, dscores, order, renormalize, dlogits)
    return dlogits


@router_backward.register_fake
def _(logits, expert_ids, dscores, order, renormalize):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _router_setup(ctx, inputs, output):
    logits, k, order, renormalize = inputs
    ctx.save_for_backward(logits, output[1])
    ctx.order = order
    ctx.renormalize = renormalize
    ctx.mark_non_differentiable(output[1])


def _router_backward(ctx, dscores, _dids):
    logits, ids = ctx.saved_tensors
    if dscores is None:
        return None, None, None, None
    dlogits = router_backward(logits, ids, dscores.to(_F32).contiguous(), ctx.order,
                              ctx.renormalize)
    return dlogits, None, None, None


router_forward.register_autograd(_router_backward, setup_context=_router_setup)

# ----------------------------------------------------------------- routing --


@torch.library.custom_op("sonicmoe::routing_from_topk", mutates_args=(),
                         schema=f"(Tensor expert_ids, int num_experts) -> {_SIX}")
def routing_from_topk(expert_ids: torch.Tensor, num_experts: int):
    expert_ids = _a4(expert_ids)
    T, K = expert_ids.shape
    out = _routing_like(expert_ids.device, T, num_experts, T * K)
    _lib.routing_from_topk(expert_ids, num_experts, out)
    return out


@routing_from_topk.register_fake
def _(expert_ids, num_experts):
    T, K = expert_ids.shape
    return _routing_like(expert_ids.device, T, num_experts, T * K)


@torch.library.custom_op("sonicmoe::routing_from_pairs", mutates_args=(),
                         schema="(Tensor token_ids, Tensor expert_ids, int num_tokens, "
                                f"int num_experts) -> {_SIX}")
def routing_from_pairs(token_ids, expert_ids, num_tokens: int, num_experts: int):
    token_ids, expert_ids = _a4(token_ids), _a4(expert_ids)
    out = _routing_like(token_ids.device, num_tokens, num_experts, token_ids.shape[0])
    _lib.routing_from_pairs(token_ids, expert_ids, num_tokens, num_experts, out)
    return out


@routing_from_pairs.register_fake
def _(token_ids, expert_ids, num_tokens, num_experts):
    return _routing_like(token_ids.device, num_tokens, num_experts, token_ids.shape[0])


# ---------------------------------------------------------- token rounding --


def round_routing_capacity(T: int, E: int, K: int, tile: int, mode: int) -> int:
    """The pairs round_routing's outputs hold: the library's formula
    (sonicmoe.hpp, round_routing_capacity), in Python so that fake tensors
    and torch.compile need no library call to know the shapes."""
    if mode == _lib.ROUNDING_DOWN:
        return T * K
    extra = E * (tile - 1) if mode == _lib.ROUNDING_UP else E * (tile // 2)
    return min(T * K + extra, T * E)


def _rounded_like(logits, K, tile, mode):
    T, E = logits.shape
    C = round_routing_capacity(T, E, K, tile, mode)
    e = lambda dt: torch.empty(C, dtype=dt, device=logits.device)  # noqa: E731
    return e(_I32), e(_I32), e(_F32), torch.empty(1, dtype=_I32, device=logits.device)


@torch.library.custom_op("sonicmoe::round_routing", mutates_args=(),
                         schema="(Tensor logits, Tensor topk_ids, Tensor topk_scores, int tile, "
                                "int mode) -> (Tensor, Tensor, Tensor, Tensor)")
def round_routing(logits, topk_ids, topk_scores, tile: int, mode: int):
    logits, topk_ids, topk_scores = _a4(logits), _a4(topk_ids), _a4(topk_scores)
    out = _rounded_like(logits, topk_ids.shape[1], tile, mode)
    _lib.round_routing(logits, topk_ids, topk_scores, tile, mode, *out)
    return out


@round_routing.register_fake
def _(logits, topk_ids, topk_scores, tile, mode):
    return _rounded_like(logits, topk_ids.shape[1], tile, mode)


def _round_setup(ctx, inputs, output):
    logits, topk_ids, topk_scores, tile, mode = inputs
    ctx.save_for_backward(topk_ids, output[0], output[1])
    ctx.mark_non_differentiable(output[0], output[1], output[3])


def _round_backward(ctx, _dtok, _dexp, dscores, _dnum):
    """A kept pick's score is its top-K score: its gradient goes to that
    (token, slot) of topk_scores (the first slot naming the expert, should a
    row name it twice). Added pairs' scores (the raw softmax probability)
    and padding are constants: no gradient reaches the logits through them.
    Plain tensor ops, no host synchronisation."""
    topk_ids, tok, exp = ctx.saved_tensors
    if dscores is None:
        return None, None, None, None, None
    T, K = topk_ids.shape
    t = tok.long().clamp(0, T - 1)
    match = topk_ids.index_select(0, t) == exp.unsqueeze(1)          # [C, K]
    first = match & (match.int().cumsum(1) == 1)
    g = first.to(_F32) * dscores.to(_F32).unsqueeze(1)
    dtopk = torch.zeros(T, K, dtype=_F32, device=dscores.device).index_add_(0, t, g)
    return None, None, dtopk, None, None


round_routing.register_autograd(_round_backward, setup_context=_round_setup)

# ------------------------------------------------------------------- layer --

_LAYER_IN = (f"Tensor x, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, Tensor scores, {_ROUTING}, "
             "int activation")


_GATED = (0, 1, 2)  # the library's SwiGLU, GeGLU, ReGLU


def h_stored_columns(width: int, activation: int) -> torch.Tensor:
    """Where each column of a saved h row is stored: h[..., idx] with idx =
    h_stored_columns(R, activation) puts a row in its natural column order
    (gate_j, up_j at 2j, 2j+1 for gated activations). The library's layout
    (sonicmoe::h_stored_column): non-gated rows are natural; gated ones keep
    each 32-column block in the up-projection's register order, column
    8a + 2b + e of a block (G groups of 8: 4, or 2 in a short last block)
    at 2 (G b + a) + e. Pure torch, checked against the library's own
    answer in the tests. Raises ValueError naming a bad argument."""
    if isinstance(activation, bool) or not isinstance(activation, int) or \
            not 0 <= activation <= 6:
        raise ValueError(f"h_stored_columns: argument 'activation': expected a library "
                         f"activation code in [0, 6], got {activation!r}")
    unit = 16 if activation in _GATED else 8
    if isinstance(width, bool) or not isinstance(width, int) or width <= 0 or width % unit:
        raise ValueError(f"h_stored_columns: argument 'width': expected a positive multiple "
                         f"of {unit}, got {width!r}")
    j = torch.arange(width, dtype=torch.int64)
    if activation not in _GATED:
        return j
    block = j & ~31
    groups = torch.where(width - block >= 32, 4, (width - block) // 8)
    o = j - block
    return block + 2 * (groups * ((o >> 1) & 3) + (o >> 3)) + (o & 1)


def _h_shape(x, w1, sorted_token, training):
    return (sorted_token.shape[0], w1.shape[1]) if training else (0,)


@torch.library.custom_op("sonicmoe::moe_forward", mutates_args=(),
                         schema=f"({_LAYER_IN}, bool training) -> (Tensor, Tensor)")
def moe_forward(x, w1, b1, w2, b2, scores, expert_counts, expert_offsets, token_offsets,
                sorted_token, sorted_pair, pair_position, activation: int, training: bool):
    x, w1, b1, w2, b2 = _a16(x), _a16(w1), _a16(b1), _a16(w2), _a16(b2)
    scores = _a4(scores)
    routing = tuple(_a4(t) for t in (expert_counts, expert_offsets, token_offsets, sorted_token,
                                     sorted_pair, pair_position))
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    h = torch.empty(_h_shape(x, w1, sorted_token, training), dtype=x.dtype, device=x.device)
    _lib.moe_forward(x, w1, b1, w2, b2, scores, routing, activation, training, out, h)
    return out, h


@moe_forward.register_fake
def _(x, w1, b1, w2, b2, scores, expert_counts, expert_offsets, token_offsets, sorted_token,
      sorted_pair, pair_position, activation, training):
    return x.new_empty(x.shape), x.new_empty(_h_shape(x, w1, sorted_token, training))


@torch.library.custom_op("sonicmoe::moe_backward", mutates_args=(),
                         schema=f"({_LAYER_IN}, Tensor h, Tensor dout, bool[6] needs) -> {_SIX}")
def moe_backward(x, w1, b1, w2, b2, scores, expert_counts, expert_offsets, token_offsets,
                 sorted_token, sorted_pair, pair_position, activation: int, h, dout, needs):
    """Gradients of (x, w1, b1, w2, b2, scores); needs[i] False (or an absent
    bias) gives an empty tensor there, and the library skips the work only
    that gradient needs (frozen experts: no weight-gradient products)."""
    x, w1, b1, w2, b2 = _a16(x), _a16(w1), _a16(b1), _a16(w2), _a16(b2)
    h, dout = _a16(h), _a16(dout)
    scores = _a4(scores)
    routing = tuple(_a4(t) for t in (expert_counts, expert_offsets, token_offsets, sorted_token,
                                     sorted_pair, pair_position))
    grads = _grads_like(x, w1, b1, w2, b2, scores, needs)
    outs = [g if w else None for g, w in zip(grads, _wanted(b1, b2, needs))]
    _lib.moe_backward(x, w1, b1, w2, b2, scores, routing, activation, h, dout, *outs)
    return grads


def _wanted(b1, b2, needs):
    """Which of the six gradients are computed: asked for, and for the bias
    gradients, a bias there."""
    ndx, ndw1, ndb1, ndw2, ndb2, nds = (bool(v) for v in needs)
    return ndx, ndw1, ndb1 and b1 is not None, ndw2, ndb2 and b2 is not None, nds


def _grads_like(x, w1, b1, w2, b2, scores, needs):
    # An empty tensor stands for a gradient not computed (each a tensor of
    # its own: custom ops may not return aliases of one another).
    return tuple(torch.empty(t.shape, dtype=t.dtype, device=t.device) if want
                 else x.new_empty(0)
                 for t, want in zip((x, w1, b1, w2, b2, scores), _wanted(b1, b2, needs)))


@moe_backward.register_fake
def _(x, w1, b1, w2, b2, scores, expert_counts, expert_offsets, token_offsets, sorted_token,
      sorted_pair, pair_position, activation, h, dout, needs):
    return _grads_like(x, w1, b1, w2, b2, scores, needs)


def _moe_setup(ctx, inputs, output):
    (x, w1, b1, w2, b2, scores, *routing, activation, training) = inputs
    ctx.activation = activation
    ctx.training = training
    ctx.has_b1, ctx.has_b2 = b1 is not None, b2 is not None
    ctx.save_for_backward(x, w1, b1, w2, b2, scores, *routing, output[1])
    ctx.mark_non_differentiable(output[1])


def _moe_backward(ctx, dout, _dh):
    if not ctx.training:
        raise RuntimeError(
            "sonicmoe: backward through a forward run in inference mode "
            "(is_inference_mode_enabled=True or module.eval()): the pre-activation H was not "
            "kept. Run the forward in training mode to differentiate it.")
    x, w1, b1, w2, b2, scores, *routing, h = ctx.saved_tensors
    # Only the gradients autograd asks for: frozen experts (w1, w2 without
    # requires_grad) skip the two weight-gradient products, an input that
    # needs no gradient skips dX~ and its aggregation.
    needs = list(ctx.needs_input_grad[:6])
    grads = moe_backward(x, w1, b1, w2, b2, scores, *routing, ctx.activation, h,
                         dout.to(x.dtype).contiguous(), needs)
    wanted = _wanted(b1, b2, needs)
    return tuple(g if w else None for g, w in zip(grads, wanted)) + (None,) * 8


moe_forward.register_autograd(_moe_backward, setup_context=_moe_setup)

# --------------------------------------------------------------- utilities --


@torch.library.custom_op("sonicmoe::permute_gate_up", mutates_args=(),
                         schema="(Tensor src, bool inverse) -> Tensor")
def permute_gate_up(src: torch.Tensor, inverse: bool):
    src = _prep(src, 16 if src.dtype == torch.bfloat16 else 4)
    dst = torch.empty(src.shape, dtype=src.dtype, device=src.device)
    _lib.permute_gate_up(src, dst, inverse)
    return dst


@permute_gate_up.register_fake
def _(src, inverse):
    return src.new_empty(src.shape)


def _perm_setup(ctx, inputs, output):
    ctx.inverse = inputs[1]


def _perm_backward(ctx, grad):
    return permute_gate_up(grad.contiguous(), not ctx.inverse), None


permute_gate_up.register_autograd(_perm_backward, setup_context=_perm_setup)
