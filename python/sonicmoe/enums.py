"""Enums of the public API, named as in the upstream SonicMoE package."""

from __future__ import annotations

from enum import Enum


class ActivationType(Enum):
    """Expert activation. Gated ones (SWIGLU, GEGLU, REGLU) read interleaved
    up-projection rows: row 2j is the gate g_j, row 2j+1 the up value u_j.
    GELU and GEGLU use the exact erf form (PyTorch's nn.GELU() default)."""

    SWIGLU = "swiglu"  # silu(g) * u
    GEGLU = "geglu"  # gelu(g) * u
    REGLU = "reglu"  # relu(g) * u
    GELU = "gelu"
    RELU = "relu"
    RELU_SQ = "relu_sq"  # relu(x)^2
    SILU = "silu"

    # Lower-case spellings and the library's name for RELU_SQ (aliases).
    swiglu = "swiglu"
    geglu = "geglu"
    reglu = "reglu"
    gelu = "gelu"
    relu = "relu"
    relu_sq = "relu_sq"
    RELU2 = "relu_sq"
    relu2 = "relu_sq"
    silu = "silu"

    @classmethod
    def _missing_(cls, value):
        if isinstance(value, str):
            return _ACT_BY_NAME.get(value.strip().lower())
        return None


# Name lookups are plain dicts built at import: the functions below run
# inside torch.compile traces, where Dynamo does not follow Enum iteration or
# Enum(value) construction on every Python version.
_ACT_BY_NAME = {m.value: m for m in ActivationType}
_ACT_BY_NAME.update({m.name.lower(): m for m in ActivationType}, relu2=ActivationType.RELU_SQ)
_ACT_GLU = frozenset(("swiglu", "geglu", "reglu"))
# The C ABI's SMOE_ACT_* values.
_ACT_CODE = {"swiglu": 0, "geglu": 1, "reglu": 2, "gelu": 3, "relu": 4, "relu_sq": 5, "silu": 6}


def is_glu(activation_type: ActivationType | str) -> bool:
    return as_activation(activation_type).value in _ACT_GLU


def as_activation(a, name: str = "activation_type") -> ActivationType:
    if isinstance(a, ActivationType):
        return a
    if isinstance(a, str):
        m = _ACT_BY_NAME.get(a.strip().lower())
        if m is not None:
            return m
        raise ValueError(f"sonicmoe: argument '{name}': expected one of "
                         f"{sorted(_ACT_BY_NAME)}, got {a!r}")
    raise TypeError(f"sonicmoe: argument '{name}': expected an ActivationType or a str, "
                    f"got {type(a).__name__}")


def activation_code(a: ActivationType) -> int:
    return _ACT_CODE[a.value]


class KernelBackendMoE(Enum):
    """Which implementation computes the experts.

    sonicmoe:   libsonicmoe (bf16 tensors, fp32 math; CPU tensors on its CPU
                reference backend, CUDA tensors on its GPU kernels).
    torch:      the pure-PyTorch reference: per-expert loops and index_add,
                any floating dtype (fp32 included), every activation, bias,
                both router orders and general routing. Syncs with the host.
    grouped_mm: PyTorch's grouped GEMM (torch._grouped_mm) over the
                expert-sorted pairs, or a per-expert loop where it is missing;
                the baseline of ``python -m sonicmoe.bench``.
    """

    sonicmoe = "sonicmoe"
    torch = "torch"
    grouped_mm = "grouped_mm"


_BACKEND_BY_NAME = {m.value: m for m in KernelBackendMoE}


def as_backend(b, name: str = "kernel_backend_moe") -> KernelBackendMoE:
    if isinstance(b, KernelBackendMoE):
        return b
    if isinstance(b, str):
        m = _BACKEND_BY_NAME.get(b.strip().lower())
        if m is not None:
            return m
        raise ValueError(f"sonicmoe: argument '{name}': expected one of "
                         f"{sorted(_BACKEND_BY_NAME)}, got {b!r}")
    raise TypeError(f"sonicmoe: argument '{name}': expected a KernelBackendMoE or a str, "
                    f"got {type(b).__name__}")


class RouterOrder(Enum):
    """Order of the token-choice router (values are the C ABI's)."""

    TOPK_THEN_SOFTMAX = 0  # Mixtral / OLMoE: softmax over the K largest logits
    SOFTMAX_THEN_TOPK = 1  # Qwen3 / DeepSeek: softmax over all E, then top-K

    topk_then_softmax = 0
    softmax_then_topk = 1


_ORDER_BY_NAME = {m.name.lower(): m for m in RouterOrder}


def as_router_order(o, name: str = "router_order") -> RouterOrder:
    if isinstance(o, RouterOrder):
        return o
    if isinstance(o, str):
        m = _ORDER_BY_NAME.get(o.strip().lower())
        if m is not None:
            return m
        raise ValueError(f"sonicmoe: argument '{name}': expected 'topk_then_softmax' or "
                         f"'softmax_then_topk', got {o!r}")
    raise TypeError(f"sonicmoe: argument '{name}': expected a RouterOrder or a str, "
                    f"got {type(o).__name__}")


class TokenRounding(Enum):
    """Token rounding (tile-aware routing): each expert's top-K count is
    rounded to a multiple of the tile. Values are the C ABI's."""

    NEAREST = 0  # to the nearest multiple, ties to even
    UP = 1       # experts take their best non-picks: no token loses a pick
    DOWN = 2     # experts drop their lowest-scoring picks: no pair is added

    nearest = 0
    up = 1
    down = 2


_ROUNDING_BY_NAME = {m.name.lower(): m for m in TokenRounding}


def as_token_rounding(r, name: str = "token_rounding") -> TokenRounding:
    if isinstance(r, TokenRounding):
        return r
    if isinstance(r, str):
        m = _ROUNDING_BY_NAME.get(r.strip().lower())
        if m is not None:
            return m
        raise ValueError(f"sonicmoe: argument '{name}': expected 'nearest', 'up' or 'down', "
                         f"got {r!r}")
    raise TypeError(f"sonicmoe: argument '{name}': expected a TokenRounding or a str, "
                    f"got {type(r).__name__}")
