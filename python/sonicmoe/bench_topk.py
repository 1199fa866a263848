"""python -m sonicmoe.bench --topk: the library's fused router vs PyTorch.

For each E in --topk-experts, K in --topk-k and router order, on fp32 logits
[T, E] (N(0,1) plus a per-expert N(0, 0.5) offset, as sonicmoe-bench draws
them), it times
  sonicmoe         ops.router_forward: the bitonic kernel where it applies
                   (E <= 512, K <= 16), else the first version
  sonicmoe_select  the same call with SONICMOE_ROUTER=select: the first
                   version (K rounds of warp arg-max)
  torch            torch.topk + softmax (topk_then_softmax: softmax of the K
                   values; softmax_then_topk: softmax over E, then topk)
(CUDA events, warm-up, median) and reports ms, GB/s over the bytes the call
must move at least (logits in, scores and ids out) and the speed-up over
torch. The two library kernels must give identical ids; the share of rows
whose ids differ from torch.topk's is reported (torch breaks ties its own
way). One JSON object per (E, K, order, impl) on stdout, a table on stderr.
"""

from __future__ import annotations

import json
import os
import sys

import torch

from . import ops
from .enums import RouterOrder

IMPLS = ("sonicmoe", "sonicmoe_select", "torch")


def _log(*a):
    print(*a, file=sys.stderr, flush=True)


def _logits(T, E, device, seed):
    g = torch.Generator(device="cpu").manual_seed(seed)
    z = torch.randn(T, E, generator=g) + 0.5 * torch.randn(E, generator=g)
    return z.to(device)


def _torch_router(z, K, order):
    if order == RouterOrder.TOPK_THEN_SOFTMAX:
        v, i = torch.topk(z, K, dim=-1)
        return torch.softmax(v, dim=-1), i
    v, i = torch.topk(torch.softmax(z, dim=-1), K, dim=-1)
    return v, i


def _library(z, K, order, select: bool):
    def fn():
        old = os.environ.get("SONICMOE_ROUTER")
        if select:
            os.environ["SONICMOE_ROUTER"] = "select"
        try:
            return ops.router_forward(z, K, order.value, False)
        finally:
            if select:
                if old is None:
                    del os.environ["SONICMOE_ROUTER"]
                else:
                    os.environ["SONICMOE_ROUTER"] = old
    return fn


def run(args, timer, device, device_name: str) -> int:
    experts = [int(e) for e in args.topk_experts.split(",")]
    ks = [int(k) for k in args.topk_k.split(",")]
    orders = [RouterOrder[o.strip().upper()] for o in args.topk_orders.split(",")]
    T = args.topk_T
    rows, failed = [], False
    for E in experts:
        z = _logits(T, E, device, args.seed + E)
        for K in ks:
            if K > E:
                continue
            for order in orders:
                fns = {"sonicmoe": _library(z, K, order, False),
                       "sonicmoe_select": _library(z, K, order, True),
                       "torch": lambda: _torch_router(z, K, order)}
                ids = {name: fn()[1].to(torch.int64) for name, fn in fns.items()}
                if not torch.equal(ids["sonicmoe"], ids["sonicmoe_select"]):
                    _log(f"E={E} K={K} {order.name.lower()}: the two library kernels' ids "
                         "DIFFER")
                    failed = True
                vs_torch = (ids["sonicmoe"] != ids["torch"]).any(dim=1).float().mean().item()
                ms = {name: timer.median_ms(fn, args.warmup, args.iters)
                      for name, fn in fns.items()}
                nbytes = T * E * 4 + T * K * 8
                for name in IMPLS:
                    rec = {"bench": "topk", "T": T, "E": E, "K": K,
                           "order": order.name.lower(), "impl": name, "device": device_name,
                           "ms": ms[name], "gbps": nbytes / (ms[name] * 1e-3) / 1e9,
                           "speedup_vs_torch": ms["torch"] / ms[name],
                           "rows_differing_from_torch": vs_torch}
                    rows.append(rec)
                    print(json.dumps(rec), flush=True)
    _log(f"{'E':>4} {'K':>3} {'order':<18} {'sonicmoe ms':>11} {'select ms':>10} "
         f"{'torch ms':>9} {'vs torch':>8} {'vs select':>9} {'GB/s':>7}")
    for i in range(0, len(rows), len(IMPLS)):
        a, s, t = rows[i:i + 3]
        _log(f"{a['E']:>4} {a['K']:>3} {a['order']:<18} {a['ms']:>11.4f} {s['ms']:>10.4f} "
             f"{t['ms']:>9.4f} {t['ms'] / a['ms']:>7.2f}x {s['ms'] / a['ms']:>8.2f}x "
             f"{a['gbps']:>7.0f}")
    _log(f"device: {device_name}; T={T}; fp32 logits; GB/s: logits in + scores and ids out")
    return 1 if failed else 0
