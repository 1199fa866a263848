"""ctypes binding of the sonicmoe C ABI (include/sonicmoe/sonicmoe.h).

Nothing here knows about autograd: these functions take torch tensors that
the caller allocated, describe them to the library and run one call on the
tensors' device (CPU tensors on the library's CPU reference backend, CUDA
tensors on its GPU backend, on ``torch.cuda.current_stream()``).

The shared library is found, in this order, at
  1. ``$SONICMOE_LIBRARY`` (a path to libsonicmoe.so),
  2. next to this file (the copy ``pip install .`` puts into the package),
  3. ``build*/src/libsonicmoe.so`` of the repository holding this package
     (a source checkout), the most recently built first.
It is loaded on first use, so ``import sonicmoe`` and the pure-torch backend
work without it.
"""

from __future__ import annotations

import ctypes
import glob
import os
import threading
from pathlib import Path

import torch

ABI_VERSION = 1
_LIB_NAME = "libsonicmoe.so"

# Values of the C enums (sonicmoe.h); never renumbered by the library.
DTYPE_BF16, DTYPE_F32, DTYPE_I32 = 0, 1, 2
DEVICE_CPU, DEVICE_CUDA = 0, 1
MODE_TRAINING, MODE_INFERENCE = 0, 1
ROUNDING_NEAREST, ROUNDING_UP, ROUNDING_DOWN = 0, 1, 2
NO_EXPERT = -1  # the expert id of a padding pair

STATUS_NAMES = {
    0: "ok",
    1: "invalid argument",
    2: "unsupported",
    3: "CUDA error",
    4: "internal error",
}

_DTYPES = {torch.bfloat16: DTYPE_BF16, torch.float32: DTYPE_F32, torch.int32: DTYPE_I32}


class SonicMoEError(RuntimeError):
    """A call into libsonicmoe returned a non-zero status.

    ``status`` is the smoe_status_t value and ``message`` the library's
    smoe_last_error() text, which names the call and the argument."""

    def __init__(self, call: str, status: int, message: str):
        self.call = call
        self.status = status
        self.message = message
        super().__init__(f"{call} failed ({STATUS_NAMES.get(status, status)}): {message}")


class SonicMoEInvalidArgument(SonicMoEError, ValueError):
    """SMOE_STATUS_INVALID_ARGUMENT: also a ValueError."""


class LibraryNotFoundError(ImportError):
    """libsonicmoe.so could not be located or loaded."""


# ----------------------------------------------------------- C structures --


class Tensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("dtype", ctypes.c_int32),
        ("device_type", ctypes.c_int32),
        ("device_index", ctypes.c_int32),
        ("ndim", ctypes.c_int32),
        ("shape", ctypes.c_int64 * 4),
        ("strides", ctypes.c_int64 * 4),
    ]


class Workspace(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("bytes", ctypes.c_size_t)]


class Routing(ctypes.Structure):
    _fields_ = [
        ("expert_counts", Tensor),
        ("expert_offsets", Tensor),
        ("token_offsets", Tensor),
        ("sorted_token", Tensor),
        ("sorted_pair", Tensor),
        ("pair_position", Tensor),
    ]


class Problem(ctypes.Structure):
    _fields_ = [
        ("num_tokens", ctypes.c_int64),
        ("hidden", ctypes.c_int64),
        ("intermediate", ctypes.c_int64),
        ("num_experts", ctypes.c_int64),
        ("num_pairs", ctypes.c_int64),
        ("activation", ctypes.c_int32),
        ("reserved", ctypes.c_int32),
    ]


class ForwardArgs(ctypes.Structure):
    _fields_ = [
        ("x", Tensor), ("w1", Tensor), ("b1", Tensor), ("w2", Tensor), ("b2", Tensor),
        ("scores", Tensor),
        ("routing", Routing),
        ("activation", ctypes.c_int32),
        ("mode", ctypes.c_int32),
        ("out", Tensor), ("h", Tensor),
        ("workspace", Workspace),
    ]


class BackwardArgs(ctypes.Structure):
    _fields_ = [
        ("x", Tensor), ("w1", Tensor), ("b1", Tensor), ("w2", Tensor), ("b2", Tensor),
        ("scores", Tensor),
        ("routing", Routing),
        ("activation", ctypes.c_int32),
        ("reserved", ctypes.c_int32),
        ("h", Tensor), ("dout", Tensor),
        ("dx", Tensor), ("dw1", Tensor), ("db1", Tensor), ("dw2", Tensor), ("db2", Tensor),
        ("dscores", Tensor),
        ("workspace", Workspace),
    ]


class RoundRoutingArgs(ctypes.Structure):
    _fields_ = [
        ("logits", Tensor), ("topk_ids", Tensor), ("topk_scores", Tensor),
        ("tile", ctypes.c_int64),
        ("mode", ctypes.c_int32),
        ("reserved", ctypes.c_int32),
        ("token_ids", Tensor), ("expert_ids", Tensor), ("scores", Tensor), ("num_pairs", Tensor),
        ("workspace", Workspace),
    ]


_P = ctypes.POINTER
_c_status = ctypes.c_int32
_PROTOTYPES = {
    "smoe_router_forward": (_c_status, [_P(Tensor), ctypes.c_int64, ctypes.c_int32, ctypes.c_int32,
                                        _P(Tensor), _P(Tensor), ctypes.c_void_p]),
    "smoe_router_backward": (_c_status, [_P(Tensor), _P(Tensor), _P(Tensor), ctypes.c_int32,
                                         ctypes.c_int32, _P(Tensor), ctypes.c_void_p]),
    "smoe_routing_workspace_size": (_c_status, [ctypes.c_int32, ctypes.c_int32, ctypes.c_int64,
                                                ctypes.c_int64, ctypes.c_int64,
                                                _P(ctypes.c_size_t)]),
    "smoe_routing_from_topk": (_c_status, [_P(Tensor), ctypes.c_int64, _P(Routing), Workspace,
                                           ctypes.c_void_p]),
    "smoe_routing_from_pairs": (_c_status, [_P(Tensor), _P(Tensor), ctypes.c_int64,
                                            ctypes.c_int64, _P(Routing), Workspace,
                                            ctypes.c_void_p]),
    "smoe_round_routing_capacity": (_c_status, [ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                                ctypes.c_int64, ctypes.c_int32,
                                                _P(ctypes.c_int64)]),
    "smoe_round_routing_workspace_size": (_c_status, [ctypes.c_int32, ctypes.c_int32,
                                                      ctypes.c_int64, ctypes.c_int64,
                                                      _P(ctypes.c_size_t)]),
    "smoe_round_routing": (_c_status, [_P(RoundRoutingArgs), ctypes.c_void_p]),
    "smoe_moe_forward_workspace_size": (_c_status, [ctypes.c_int32, ctypes.c_int32, _P(Problem),
                                                    ctypes.c_int32, _P(ctypes.c_size_t)]),
    "smoe_moe_forward": (_c_status, [_P(ForwardArgs), ctypes.c_void_p]),
    "smoe_moe_backward_workspace_size": (_c_status, [ctypes.c_int32, ctypes.c_int32, _P(Problem),
                                                     _P(ctypes.c_size_t)]),
    "smoe_moe_backward": (_c_status, [_P(BackwardArgs), ctypes.c_void_p]),
    "smoe_interleave_gate_up": (_c_status, [_P(Tensor), _P(Tensor), ctypes.c_void_p]),
    "smoe_deinterleave_gate_up": (_c_status, [_P(Tensor), _P(Tensor), ctypes.c_void_p]),
    "smoe_h_stored_column": (_c_status, [ctypes.c_int64, ctypes.c_int64, ctypes.c_int32,
                                         _P(ctypes.c_int64)]),
    "smoe_cuda_device_count": (ctypes.c_int32, []),
    "smoe_version": (ctypes.c_char_p, []),
    "smoe_abi_version": (ctypes.c_int32, []),
    "smoe_last_error": (ctypes.c_char_p, []),
}

# ---------------------------------------------------------------- loading --

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_lib_path: str | None = None


def candidate_paths() -> list[str]:
    """Where the library is looked for, in order (see the module docstring)."""
    env = os.environ.get("SONICMOE_LIBRARY")
    if env:
        return [env]
    here = Path(__file__).resolve().parent
    paths = [str(here / _LIB_NAME)]
    repo = here.parent.parent  # python/sonicmoe -> repository root
    built = glob.glob(str(repo / "build*" / "src" / _LIB_NAME))
    built.sort(key=lambda p: os.path.getmtime(p) if os.path.exists(p) else 0.0, reverse=True)
    return paths + built


def _load() -> ctypes.CDLL:
    global _lib, _lib_path
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        tried = []
        for path in candidate_paths():
            if not os.path.exists(path):
                tried.append(f"{path} (missing)")
                continue
            try:
                lib = ctypes.CDLL(path)
            except OSError as e:
                tried.append(f"{path} ({e})")
                continue
            for name, (restype, argtypes) in _PROTOTYPES.items():
                fn = getattr(lib, name)
                fn.restype = restype
                fn.argtypes = argtypes
            abi = lib.smoe_abi_version()
            if abi != ABI_VERSION:
                tried.append(f"{path} (ABI version {abi}, this package needs {ABI_VERSION})")
                continue
            _lib, _lib_path = lib, path
            return lib
        raise LibraryNotFoundError(
            "sonicmoe: could not load libsonicmoe.so; set SONICMOE_LIBRARY to its path, "
            "install the package with `pip install --no-build-isolation .`, or build it "
            "(cmake ... && ninja -C build-py sonicmoe). Tried: " + "; ".join(tried))


def lib() -> ctypes.CDLL:
    return _load()


def library_path() -> str:
    _load()
    assert _lib_path is not None
    return _lib_path


def available() -> bool:
    """Whether libsonicmoe.so can be loaded (does not raise)."""
    try:
        _load()
        return True
    except LibraryNotFoundError:
        return False


def version() -> str:
    return lib().smoe_version().decode()


def cuda_device_count() -> int:
    return int(lib().smoe_cuda_device_count())


def _check(call: str, status: int) -> None:
    if status != 0:
        msg = (lib().smoe_last_error() or b"").decode(errors="replace")
        cls = SonicMoEInvalidArgument if status == 1 else SonicMoEError
        raise cls(call, int(status), msg)


# ------------------------------------------------------------ descriptors --


def describe(t: torch.Tensor | None) -> Tensor:
    """The descriptor of a tensor; an all-zero one (absent) for None."""
    d = Tensor()
    if t is None:
        return d
    if t.dim() > 4:
        raise ValueError(f"sonicmoe: tensors have at most 4 dimensions, got {t.dim()}")
    dtype = _DTYPES.get(t.dtype)
    if dtype is None:
        raise TypeError(f"sonicmoe: unsupported dtype {t.dtype}")
    d.data = t.data_ptr() or None
    d.dtype = dtype
    if t.device.type == "cuda":
        d.device_type, d.device_index = DEVICE_CUDA, t.device.index or 0
    elif t.device.type == "cpu":
        d.device_type, d.device_index = DEVICE_CPU, 0
    else:
        raise ValueError(f"sonicmoe: tensors must be on cpu or cuda, got {t.device}")
    d.ndim = t.dim()
    for i, (s, st) in enumerate(zip(t.shape, t.stride())):
        d.shape[i] = s
        d.strides[i] = st
    return d


def _device(t: torch.Tensor) -> tuple[int, int]:
    if t.device.type == "cuda":
        return DEVICE_CUDA, t.device.index or 0
    return DEVICE_CPU, 0


def _stream(t: torch.Tensor) -> int | None:
    if t.device.type == "cuda":
        return torch.cuda.current_stream(t.device).cuda_stream or None
    return None


_WS_ALIGN = 256


def _workspace(nbytes: int, device: torch.device) -> tuple[torch.Tensor | None, Workspace]:
    """A 256-byte aligned workspace from PyTorch's allocator on `device`.

    The CUDA caching allocator hands out 512-byte aligned blocks; the CPU
    allocator only 64-byte ones, so the buffer is padded and offset there.
    The tensor is returned so that it outlives the (stream-ordered) call."""
    if nbytes == 0:
        return None, Workspace(None, 0)
    buf = torch.empty(nbytes, dtype=torch.uint8, device=device)
    ptr = buf.data_ptr()
    if ptr % _WS_ALIGN:
        buf = torch.empty(nbytes + _WS_ALIGN, dtype=torch.uint8, device=device)
        ptr = buf.data_ptr()
        ptr += (-ptr) % _WS_ALIGN
    return buf, Workspace(ptr, nbytes)


def _routing(tensors) -> Routing:
    r = Routing()
    (r.expert_counts, r.expert_offsets, r.token_offsets, r.sorted_token, r.sorted_pair,
     r.pair_position) = (describe(t) for t in tensors)
    return r


# ------------------------------------------------------------------ calls --


def router_forward(logits, k, order, renormalize, scores, expert_ids) -> None:
    L = lib()
    _check("smoe_router_forward",
           L.smoe_router_forward(ctypes.byref(describe(logits)), int(k), int(order),
                                 int(bool(renormalize)), ctypes.byref(describe(scores)),
                                 ctypes.byref(describe(expert_ids)), _stream(logits)))


def router_backward(logits, expert_ids, dscores, order, renormalize, dlogits) -> None:
    L = lib()
    _check("smoe_router_backward",
           L.smoe_router_backward(ctypes.byref(describe(logits)), ctypes.byref(describe(expert_ids)),
                                  ctypes.byref(describe(dscores)), int(order),
                                  int(bool(renormalize)), ctypes.byref(describe(dlogits)),
                                  _stream(logits)))


def routing_workspace_size(device: tuple[int, int], num_tokens, num_experts, num_pairs) -> int:
    """Workspace bytes of routing_from_*; `device` is (device_type, index)."""
    L = lib()
    dt, di = device
    out = ctypes.c_size_t(0)
    _check("smoe_routing_workspace_size",
           L.smoe_routing_workspace_size(dt, di, int(num_tokens), int(num_experts), int(num_pairs),
                                         ctypes.byref(out)))
    return int(out.value)


def routing_from_topk(expert_ids, num_experts, routing) -> None:
    L = lib()
    T, K = expert_ids.shape
    nbytes = routing_workspace_size(_device(expert_ids), T, num_experts, T * K)
    keep, ws = _workspace(nbytes, expert_ids.device)
    _check("smoe_routing_from_topk",
           L.smoe_routing_from_topk(ctypes.byref(describe(expert_ids)), int(num_experts),
                                    ctypes.byref(_routing(routing)), ws, _stream(expert_ids)))
    del keep


def routing_from_pairs(token_ids, expert_ids, num_tokens, num_experts, routing) -> None:
    L = lib()
    N = token_ids.shape[0]
    nbytes = routing_workspace_size(_device(token_ids), num_tokens, num_experts, N)
    keep, ws = _workspace(nbytes, token_ids.device)
    _check("smoe_routing_from_pairs",
           L.smoe_routing_from_pairs(ctypes.byref(describe(token_ids)),
                                     ctypes.byref(describe(expert_ids)), int(num_tokens),
                                     int(num_experts), ctypes.byref(_routing(routing)), ws,
                                     _stream(token_ids)))
    del keep


def round_routing_capacity(num_tokens, num_experts, k, tile, mode) -> int:
    """Pairs round_routing's outputs hold (the library's own answer)."""
    out = ctypes.c_int64(0)
    _check("smoe_round_routing_capacity",
           lib().smoe_round_routing_capacity(int(num_tokens), int(num_experts), int(k), int(tile),
                                             int(mode), ctypes.byref(out)))
    return int(out.value)


def h_stored_column(column, width, activation) -> int:
    """Where column `column` of a saved h row of `width` values is stored
    (the library's own answer, smoe_h_stored_column)."""
    out = ctypes.c_int64(0)
    _check("smoe_h_stored_column",
           lib().smoe_h_stored_column(int(column), int(width), int(activation),
                                      ctypes.byref(out)))
    return int(out.value)


def round_routing(logits, topk_ids, topk_scores, tile, mode,
                  token_ids, expert_ids, scores, num_pairs) -> None:
    L = lib()
    T, E = logits.shape
    dt, di = _device(logits)
    size = ctypes.c_size_t(0)
    _check("smoe_round_routing_workspace_size",
           L.smoe_round_routing_workspace_size(dt, di, int(T), int(E), ctypes.byref(size)))
    keep, ws = _workspace(int(size.value), logits.device)
    a = RoundRoutingArgs()
    a.logits, a.topk_ids, a.topk_scores = describe(logits), describe(topk_ids), describe(topk_scores)
    a.tile, a.mode = int(tile), int(mode)
    a.token_ids, a.expert_ids = describe(token_ids), describe(expert_ids)
    a.scores, a.num_pairs = describe(scores), describe(num_pairs)
    a.workspace = ws
    _check("smoe_round_routing", L.smoe_round_routing(ctypes.byref(a), _stream(logits)))
    del keep


def _problem(x, w1, w2, num_pairs, activation) -> Problem:
    p = Problem()
    p.num_tokens, p.hidden = x.shape
    p.intermediate = w2.shape[2]
    p.num_experts = w1.shape[0]
    p.num_pairs = num_pairs
    p.activation = int(activation)
    return p


def moe_forward(x, w1, b1, w2, b2, scores, routing, activation, training, out, h) -> None:
    L = lib()
    dt, di = _device(x)
    mode = MODE_TRAINING if training else MODE_INFERENCE
    prob = _problem(x, w1, w2, routing[3].shape[0], activation)
    size = ctypes.c_size_t(0)
    _check("smoe_moe_forward_workspace_size",
           L.smoe_moe_forward_workspace_size(dt, di, ctypes.byref(prob), mode, ctypes.byref(size)))
    keep, ws = _workspace(int(size.value), x.device)
    a = ForwardArgs()
    a.x, a.w1, a.b1, a.w2, a.b2 = describe(x), describe(w1), describe(b1), describe(w2), describe(b2)
    a.scores = describe(scores)
    a.routing = _routing(routing)
    a.activation = int(activation)
    a.mode = mode
    a.out = describe(out)
    a.h = describe(h if training else None)
    a.workspace = ws
    _check("smoe_moe_forward", L.smoe_moe_forward(ctypes.byref(a), _stream(x)))
    del keep


def moe_backward(x, w1, b1, w2, b2, scores, routing, activation, h, dout,
                 dx, dw1, db1, dw2, db2, dscores) -> None:
    L = lib()
    dt, di = _device(x)
    prob = _problem(x, w1, w2, routing[3].shape[0], activation)
    size = ctypes.c_size_t(0)
    _check("smoe_moe_backward_workspace_size",
           L.smoe_moe_backward_workspace_size(dt, di, ctypes.byref(prob), ctypes.byref(size)))
    keep, ws = _workspace(int(size.value), x.device)
    a = BackwardArgs()
    a.x, a.w1, a.b1, a.w2, a.b2 = describe(x), describe(w1), describe(b1), describe(w2), describe(b2)
    a.scores = describe(scores)
    a.routing = _routing(routing)
    a.activation = int(activation)
    a.h, a.dout = describe(h), describe(dout)
    a.dx, a.dw1, a.db1 = describe(dx), describe(dw1), describe(db1)
    a.dw2, a.db2, a.dscores = describe(dw2), describe(db2), describe(dscores)
    a.workspace = ws
    _check("smoe_moe_backward", L.smoe_moe_backward(ctypes.byref(a), _stream(x)))
    del keep


def permute_gate_up(src, dst, inverse: bool) -> None:
    L = lib()
    fn, name = ((L.smoe_deinterleave_gate_up, "smoe_deinterleave_gate_up") if inverse
                else (L.smoe_interleave_gate_up, "smoe_interleave_gate_up"))
    _check(name, fn(ctypes.byref(describe(src)), ctypes.byref(describe(dst)), _stream(src)))
