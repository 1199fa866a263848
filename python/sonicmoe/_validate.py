"""Argument checks run in Python before anything reaches the library.

Every failure names the public function and the argument. Shape, dtype and
device checks work on fake tensors too (torch.compile tracing); checks that
read memory addresses or tensor contents run only on real tensors, and
content checks (index ranges) only on CPU tensors: on CUDA they would need a
host synchronisation, so there the library's own handling applies (its GPU
routing drops pairs whose ids are out of range).
"""

from __future__ import annotations

from typing import Sequence

import torch

_FLOATS = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_INTS = (torch.int32, torch.int64, torch.int16, torch.int8, torch.uint8)


def _fail(fn: str, name: str, msg: str, exc=ValueError):
    raise exc(f"sonicmoe.{fn}: argument '{name}': {msg}")


def is_real(t: torch.Tensor) -> bool:
    """False for tensors seen while tracing (fake / functional / meta)."""
    if t.device.type == "meta":
        return False
    try:
        if torch.compiler.is_compiling():
            return False
    except AttributeError:  # pragma: no cover - torch < 2.3
        pass
    try:
        from torch._subclasses.fake_tensor import is_fake

        if is_fake(t):
            return False
    except ImportError:  # pragma: no cover
        pass
    return True


def shape_str(s: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(v)) for v in s) + ")"


def tensor(fn: str, name: str, t, *, dtypes=None, ndim: int | None = None, shape=None,
           device: torch.device | None = None, contiguous: bool = True, align: int | None = None,
           expect: str | None = None) -> torch.Tensor:
    """Check one tensor argument; `shape` entries may be None (any size).

    `expect` describes the shape in words for the message, e.g. '(E, 2*I, H)'."""
    if not isinstance(t, torch.Tensor):
        _fail(fn, name, f"expected a torch.Tensor, got {type(t).__name__}", TypeError)
    if dtypes is not None and t.dtype not in dtypes:
        want = " or ".join(str(d).replace("torch.", "") for d in dtypes)
        _fail(fn, name, f"expected dtype {want}, got {str(t.dtype).replace('torch.', '')}",
              TypeError)
    if ndim is not None and t.dim() != ndim:
        _fail(fn, name, f"expected {ndim} dimensions{' ' + expect if expect else ''}, "
                        f"got shape {shape_str(t.shape)}")
    if shape is not None:
        if t.dim() != len(shape) or any(w is not None and int(w) != int(g)
                                        for w, g in zip(shape, t.shape)):
            want = shape_str(["*" if w is None else w for w in shape]).replace("'", "")
            _fail(fn, name, f"expected shape {expect + ' = ' if expect else ''}{want}, "
                            f"got {shape_str(t.shape)}")
    if device is not None and t.device != device:
        _fail(fn, name, f"expected a tensor on {device} like 'x', got one on {t.device}")
    if t.device.type not in ("cpu", "cuda", "meta"):
        _fail(fn, name, f"expected a cpu or cuda tensor, got one on {t.device}")
    if contiguous and not t.is_contiguous():
        _fail(fn, name, f"expected a contiguous tensor, got strides {shape_str(t.stride())} "
                        f"for shape {shape_str(t.shape)} (call .contiguous())")
    if align and t.numel() > 0 and is_real(t) and t.data_ptr() % align:
        _fail(fn, name, f"expected {align}-byte aligned data, got address {t.data_ptr():#x} "
                        f"(offset {t.data_ptr() % align}; a view at an odd offset? "
                        f"call .clone())")
    return t


def integer(fn: str, name: str, v, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, torch.SymInt):
            return v
        _fail(fn, name, f"expected an int, got {type(v).__name__}", TypeError)
    if lo is not None and v < lo:
        _fail(fn, name, f"expected a value >= {lo}, got {v}")
    if hi is not None and v > hi:
        _fail(fn, name, f"expected a value <= {hi}, got {v}")
    return v


MAX_FEATURE = 1 << 20


def feature_size(fn: str, what: str, v: int) -> None:
    # The library's GPU loaders move 16-byte rows: hidden and intermediate
    # sizes must be multiples of 8 bf16 elements, and at most 2^20 so that
    # offsets inside a tile fit 32 bits (the library checks the same).
    if v < 8 or v % 8:
        raise ValueError(f"sonicmoe.{fn}: {what} must be a positive multiple of 8 for the "
                         f"sonicmoe backend, got {v}")
    if v > MAX_FEATURE:
        raise ValueError(f"sonicmoe.{fn}: {what} must be at most {MAX_FEATURE} (2^20) for the "
                         f"sonicmoe backend, got {v}")


def index_range(fn: str, name: str, t: torch.Tensor, lo: int, hi: int,
                padding: int | None = None) -> None:
    """Values in [lo, hi), or equal to `padding`; CPU tensors only (no host
    sync on CUDA)."""
    if t.device.type != "cpu" or t.numel() == 0 or not is_real(t):
        return
    bad = (t < lo) | (t >= hi)
    if padding is not None:
        bad &= t != padding
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0]) if t.dim() == 1 else int(bad.flatten().nonzero()[0, 0])
        v = int(t.flatten()[i])
        _fail(fn, name, f"expected values in [{lo}, {hi}), got {v} at flat index {i}")


def non_decreasing(fn: str, name: str, t: torch.Tensor) -> None:
    if t.device.type != "cpu" or t.numel() < 2 or not is_real(t):
        return
    bad = t[1:] < t[:-1]
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0]) + 1
        _fail(fn, name, f"expected non-decreasing token indices (pairs sorted by token), "
                        f"got {int(t[i])} after {int(t[i - 1])} at index {i}")
