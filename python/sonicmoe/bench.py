"""python -m sonicmoe.bench: the MoE layer in this library vs PyTorch.

For each canonical config (sonicmoe/_configs.py, a copy of the project's
bench_configs.json) and each implementation:
  sonicmoe    this library through the PyTorch front end (custom ops)
  grouped_mm  the same layer on torch._grouped_mm (sort by expert, SwiGLU,
              grouped GEMMs, weighted index_add), or a per-expert loop where
              torch._grouped_mm is missing
  torch       the pure-PyTorch reference backend (per-expert loops)
it measures forward and backward time (CUDA events, warm-up, median), TFLOPS
with FLOPs = 6*T*K*H*I forward and 12*T*K*H*I backward (backward time =
(forward+backward) - forward), activation memory (bytes allocated by the
training forward that stay alive until backward, less the output; the
parameters and the input were allocated before), the output's max error
relative to max |ref| against an fp32 reference on the first --check-tokens
tokens, and, once per config, a dense bf16 product of equal FLOPs (the
speed-of-light reference).

One JSON object per (config, impl) goes to stdout (BENCHMARK.md's fields; a
skipped pair has null figures and a "skipped" reason); tables and progress go
to stderr. --plot PATH writes a bar chart when matplotlib is installed.

--topk times the router alone instead (bench_topk.py): the library's fused
top-K + softmax (both its kernels) against torch.topk + softmax.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from . import reference
from ._configs import CONFIGS, TINY
from .enums import ActivationType, KernelBackendMoE
from .functional import moe_TC_softmax_topk_layer

IMPLS = ("sonicmoe", "grouped_mm", "torch")


def _log(*a):
    print(*a, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ timing --


class _Timer:
    def __init__(self, device: torch.device, heat_ms: float = 0.0):
        self.cuda = device.type == "cuda"
        self.heat_ms = heat_ms

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def heat(self, fn):
        """Runs fn back to back for heat_ms of device time (CUDA only), as the
        C++ bench's --heat-ms does: under a power cap the GPU clocks at boost
        for a moment after idling, so timing starts once the clock has
        settled where a training loop keeps it (docs/NOTES.md)."""
        if not self.cuda or self.heat_ms <= 0:
            return
        done, batch = 0.0, 1
        for _ in range(4096):  # ends the loop for an fn that enqueues nothing
            if done >= self.heat_ms:
                break
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(batch):
                fn()
            end.record()
            end.synchronize()
            took = start.elapsed_time(end)
            done += took
            if took < 25.0 and batch < 4096:
                batch *= 2

    def median_ms(self, fn, warmup: int, iters: int) -> float:
        for _ in range(warmup):
            fn()
        self.heat(fn)
        self.sync()
        if self.cuda:
            # All runs queued back to back, read after one synchronisation
            # (as the C++ bench and a training loop run them): a
            # synchronisation per run would count the host's Python overhead
            # at each run's start as device time.
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(iters)]
            for start, end in events:
                start.record()
                fn()
                end.record()
            self.sync()
            return statistics.median(start.elapsed_time(end) for start, end in events)
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)


# ------------------------------------------------------------------ inputs --


def make_inputs(cfg: dict, device: torch.device, seed: int = 0):
    """x ~ N(0,1), weights ~ N(0, 0.02), bf16, SwiGLU, no bias; a random
    router N(0, 0.02), so that loads are uneven as in training."""
    T, H, I, E = cfg["T"], cfg["H"], cfg["I"], cfg["E"]
    g = torch.Generator(device=device).manual_seed(seed)

    def rnd(*shape, std=1.0):
        t = torch.empty(*shape, device=device, dtype=torch.bfloat16)
        return t.normal_(0.0, std, generator=g)

    return {
        "x": rnd(T, H),
        "router_w": rnd(E, H, std=0.02),
        "w1": rnd(E, 2 * I, H, std=0.02),
        "w2": rnd(E, H, I, std=0.02),
        "dout": rnd(T, H),
    }


def _layer(p, K, impl):
    return moe_TC_softmax_topk_layer(p["x"], p["router_w"], p["w1"], None, p["w2"], None, K,
                                     ActivationType.SWIGLU,
                                     kernel_backend_moe=KernelBackendMoE(impl))


@torch.no_grad()
def _reference_rows(p, logits, K, rows: int) -> torch.Tensor:
    """fp32 reference output of the first `rows` tokens, given the logits the
    implementation computed (so the same experts are chosen); converts one
    expert's weights to fp32 at a time."""
    x = p["x"][:rows].float()
    scores, ids = reference.router(logits[:rows], K)
    out = torch.zeros_like(x)
    act = reference.activation_fn(ActivationType.SWIGLU)
    for e in torch.unique(ids).tolist():
        t, k = (ids == e).nonzero(as_tuple=True)
        h = act(F.linear(x[t], p["w1"][e].float()))
        out.index_add_(0, t, F.linear(h, p["w2"][e].float()) * scores[t, k, None])
    return out


def _torch_backend_estimate(cfg) -> tuple[float, float]:
    """(bytes kept by autograd, host round trips) of the pure-torch backend:
    per pair the gathered x, H, the activation's inputs, Y and its fp32 copy."""
    T, H, I, E, K = (cfg[k] for k in "THIEK")
    per_pair = 2 * H + 2 * 2 * I + 2 * 3 * I + 2 * H + 4 * H + 4
    return float(T * K * per_pair + 4 * T * H * 2), float(E)


def _skip_reason(impl, cfg, device, args) -> str | None:
    T, H, I, E, K = (cfg[k] for k in "THIEK")
    flops = 18.0 * T * K * H * I
    if device.type == "cpu" and flops > args.cpu_max_gflop * 1e9:
        return (f"{impl} on CPU: {flops / 1e9:.0f} GFLOP per step exceeds --cpu-max-gflop "
                f"{args.cpu_max_gflop:g}")
    if impl == "torch" and device.type == "cuda":
        nbytes, _ = _torch_backend_estimate(cfg)
        free, _total = torch.cuda.mem_get_info(device)
        if nbytes > 0.5 * free:
            return (f"pure-torch backend would keep ~{nbytes / 2**30:.1f} GiB for backward "
                    f"(> half of the {free / 2**30:.1f} GiB free)")
        if E > args.torch_max_experts:
            return (f"pure-torch backend loops over {E} experts with a host sync each "
                    f"(> --torch-max-experts {args.torch_max_experts}): too slow")
    return None


def dense_tflops(cfg, device, timer, args) -> float | None:
    """A dense bf16 product of equal FLOPs: (TK x H)(H x 2I), (TK x I)(I x H)."""
    T, H, I, K = cfg["T"], cfg["H"], cfg["I"], cfg["K"]
    if device.type == "cpu" and 18.0 * T * K * H * I > args.cpu_max_gflop * 1e9:
        return None
    M = T * K
    a = torch.randn(M, H, device=device, dtype=torch.bfloat16)
    b1 = torch.randn(H, 2 * I, device=device, dtype=torch.bfloat16)
    c = torch.randn(M, I, device=device, dtype=torch.bfloat16)
    b2 = torch.randn(I, H, device=device, dtype=torch.bfloat16)

    def fn():
        a @ b1
        c @ b2

    ms = timer.median_ms(fn, args.warmup, args.iters)
    del a, b1, c, b2
    return 6.0 * M * H * I / (ms * 1e-3) / 1e12


def bench_one(name, cfg, impl, p, device, timer, args, dense) -> dict:
    T, H, I, E, K = (cfg[k] for k in "THIEK")
    rec = {"config": name, "T": T, "H": H, "I": I, "E": E, "K": K, "impl": impl,
           "device": _device_name(device), "fwd_ms": None, "bwd_ms": None, "fwd_tflops": None,
           "bwd_tflops": None, "act_mem_bytes": None, "max_rel_err": None,
           "dense_tflops": dense}
    reason = _skip_reason(impl, cfg, device, args)
    if reason:
        rec["skipped"] = reason
        return rec
    leaves = [p["x"], p["router_w"], p["w1"], p["w2"]]
    for t in leaves:
        t.requires_grad_(True)
    try:
        def fwd():
            return _layer(p, K, impl)[0]

        def fwd_bwd():
            for t in leaves:
                t.grad = None
            out = _layer(p, K, impl)[0]
            out.backward(p["dout"])

        fwd_ms = timer.median_ms(fwd, args.warmup, args.iters)
        total_ms = timer.median_ms(fwd_bwd, args.warmup, args.iters)
        for t in leaves:
            t.grad = None
        # Activation memory: what the training forward leaves allocated.
        act = None
        if device.type == "cuda":
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated(device)
            out, logits, _ = _layer(p, K, impl)
            torch.cuda.synchronize()
            act = torch.cuda.memory_allocated(device) - before - out.numel() * out.element_size()
        else:
            out, logits, _ = _layer(p, K, impl)
        rows = min(args.check_tokens, T)
        ref = _reference_rows(p, logits.detach(), K, rows)
        err = ((out[:rows].detach().float() - ref).abs().max() / ref.abs().max()).item()
        del out, logits, ref
        bwd_ms = max(total_ms - fwd_ms, 1e-9)
        rec.update(fwd_ms=fwd_ms, bwd_ms=bwd_ms,
                   fwd_tflops=6.0 * T * K * H * I / (fwd_ms * 1e-3) / 1e12,
                   bwd_tflops=12.0 * T * K * H * I / (bwd_ms * 1e-3) / 1e12,
                   act_mem_bytes=act, max_rel_err=err)
    except torch.cuda.OutOfMemoryError:
        rec["skipped"] = "out of GPU memory"
    finally:
        for t in leaves:
            t.grad = None
            t.requires_grad_(False)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rec


def _device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()})"


# ---------------------------------------------------------------- reporting --


def _progress(total):
    """tqdm on a terminal when it is installed, else one line per step."""
    try:
        from tqdm import tqdm

        if not sys.stderr.isatty():
            raise ImportError
        return tqdm(total=total, file=sys.stderr, dynamic_ncols=True)
    except ImportError:
        class _Line:
            def __init__(self):
                self.n = 0

            def set_description(self, d):
                self.d = d

            def update(self, k=1):
                self.n += k
                _log(f"[{self.n}/{total}] {getattr(self, 'd', '')}")

            def close(self):
                pass

        return _Line()


def _table(records):
    head = (f"{'config':14s} {'impl':10s} {'fwd ms':>8s} {'bwd ms':>8s} {'fwd TF':>7s} "
            f"{'bwd TF':>7s} {'fwd/dense':>9s} {'act GiB':>8s} {'rel err':>8s}")
    lines = [head, "-" * len(head)]
    for r in records:
        if r.get("skipped"):
            lines.append(f"{r['config']:14s} {r['impl']:10s} skipped: {r['skipped']}")
            continue
        ratio = (f"{r['fwd_tflops'] / r['dense_tflops']:9.2f}" if r["dense_tflops"]
                 else f"{'-':>9s}")
        act = f"{r['act_mem_bytes'] / 2**30:8.3f}" if r["act_mem_bytes"] is not None \
            else f"{'-':>8s}"
        lines.append(f"{r['config']:14s} {r['impl']:10s} {r['fwd_ms']:8.3f} {r['bwd_ms']:8.3f} "
                     f"{r['fwd_tflops']:7.1f} {r['bwd_tflops']:7.1f} {ratio} {act} "
                     f"{r['max_rel_err']:8.1e}")
    return "\n".join(lines)


def plot(records, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _log("--plot: matplotlib is not installed; no chart written")
        return
    configs = list(dict.fromkeys(r["config"] for r in records))
    impls = list(dict.fromkeys(r["impl"] for r in records))
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 1.2 * len(configs) * len(impls) / 2), 8),
                             sharex=True)
    width = 0.8 / max(1, len(impls))
    for ax, key, title in ((axes[0], "fwd_tflops", "forward"),
                           (axes[1], "bwd_tflops", "backward")):
        for j, impl in enumerate(impls):
            vals = []
            for c in configs:
                r = next((r for r in records if r["config"] == c and r["impl"] == impl), None)
                vals.append(r[key] if r and r.get(key) else 0.0)
            ax.bar([i + j * width for i in range(len(configs))], vals, width, label=impl)
        ax.set_ylabel("TFLOPS")
        ax.set_title(f"MoE layer {title} ({records[0]['device']})")
        ax.legend()
    axes[1].set_xticks([i + width * (len(impls) - 1) / 2 for i in range(len(configs))])
    axes[1].set_xticklabels(configs, rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _log(f"chart written to {path}")


# --------------------------------------------------------------------- main --


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sonicmoe.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="all",
                    help="comma-separated config names, 'all' (default) or 'tiny'")
    ap.add_argument("--impls", default=",".join(IMPLS),
                    help=f"comma-separated subset of {','.join(IMPLS)}")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--heat-ms", type=float, default=2000.0,
                    help="CUDA: run each timed function untimed for this many ms of device "
                         "time first, so that timing starts at the clock of sustained load "
                         "(default 2000; 0: no heat)")
    ap.add_argument("--check-tokens", type=int, default=2048,
                    help="tokens whose output is checked against the fp32 reference")
    ap.add_argument("--torch-max-experts", type=int, default=1024,
                    help="skip the pure-torch backend above this many experts")
    ap.add_argument("--cpu-max-gflop", type=float, default=20.0,
                    help="on CPU, skip configs above this many GFLOP per training step")
    ap.add_argument("--plot", metavar="PATH", help="write a PNG bar chart (needs matplotlib)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--topk", action="store_true",
                    help="time the router alone against torch.topk + softmax (bench_topk.py)")
    ap.add_argument("--topk-T", type=int, default=32768, help="--topk: tokens (rows)")
    ap.add_argument("--topk-experts", default="64,128,256,512", help="--topk: values of E")
    ap.add_argument("--topk-k", default="4,8,16", help="--topk: values of K")
    ap.add_argument("--topk-orders", default="topk_then_softmax,softmax_then_topk",
                    help="--topk: router orders")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: PyTorch sees no GPU")
    if args.configs == "all":
        names = list(CONFIGS)
    else:
        names = [n.strip() for n in args.configs.split(",") if n.strip()]
    table = dict(CONFIGS, tiny=TINY)
    unknown = [n for n in names if n not in table]
    if unknown:
        ap.error(f"unknown config(s) {unknown}; known: {', '.join(table)}")
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    bad = [i for i in impls if i not in IMPLS]
    if bad:
        ap.error(f"unknown impl(s) {bad}; known: {', '.join(IMPLS)}")
    if args.warmup < 0 or args.iters < 1:
        ap.error("--warmup >= 0 and --iters >= 1")
    if not args.heat_ms >= 0:
        ap.error(f"--heat-ms expects a non-negative number, got {args.heat_ms}")
    if not hasattr(torch, "_grouped_mm") and "grouped_mm" in impls:
        _log("note: torch._grouped_mm is missing in this PyTorch; grouped_mm uses a "
             "per-expert loop")

    timer = _Timer(device, args.heat_ms)
    if args.topk:
        from . import bench_topk

        return bench_topk.run(args, timer, device, _device_name(device))
    records = []
    bar = _progress(len(names) * len(impls))
    for name in names:
        cfg = table[name]
        bar.set_description(f"{name}: inputs")
        p = make_inputs(cfg, device, args.seed)
        bar.set_description(f"{name}: dense reference")
        dense = dense_tflops(cfg, device, timer, args)
        for impl in impls:
            bar.set_description(f"{name}: {impl}")
            rec = bench_one(name, cfg, impl, p, device, timer, args, dense)
            records.append(rec)
            print(json.dumps(rec), flush=True)
            bar.update(1)
        del p
        if device.type == "cuda":
            torch.cuda.empty_cache()
    bar.close()
    _log(_table(records))
    skipped = [r for r in records if r.get("skipped")]
    if skipped:
        _log(f"{len(skipped)} skipped (reasons above)")
    if args.plot:
        plot(records, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
