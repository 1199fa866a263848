"""How many bytes the Hopper grouped-M products must read from L2, by their
tile schedule, beside a dense product of the same shape on cuBLAS's tiles
(a model, not a measurement; ncu's lts__t_sectors_srcunit_tex_op_read
counts the same reads, 32 bytes a sector).

Our products run 128 x 256 tiles (kBM x kWideN) on 2-CTA clusters: each
CTA reads its tile's A rows, and the expert's 256 x K weight tile (B)
arrives once per cluster by TMA multicast; an expert's odd last tile runs
solo (Tile::solo) and reads the whole B tile itself. Gathered A rows past
the expert's end are zero-filled (not read); TMA A boxes (down_proj, dX~)
read all 128 rows, the next expert's included. dH's epilogue also reads
its rows' H (2n columns). The dense reference is the kernel cuBLAS picks
for 131072 x 4096 x 4096 on an H200 (320 x 128 tiles, 1 x 2 clusters
sharing A: docs/NOTES.md), on M = the routed pairs.

Columns, in GB (1e9 bytes): "A", "B", "epi" (epilogue reads) and "total"
of our schedule; "ideal" the same tiles with no padding and no solo
tiles (M split evenly into 256-row pairs); "2x2" our schedule on 4-CTA
clusters whose two column pairs also share A by multicast (TMA A only:
gathered rows come by cp.async, which cannot multicast); "dense" the
reference; and "total / dense".

    python3 tools/l2_model.py [--config 120b-n2048] [--expert-bias-std 0.5]

With --record <kernels jsonl> (a `sonicmoe-bench --kernels` record, e.g.
docs/results/kernels-hopper-h200.jsonl) it prints instead what each
recorded grouped-M product loses per tile: its ratio to dense divided by
the wave model's busy and row shares is its in-tile efficiency e, and with
S stages of 64 k-rows per tile, S (1/e - 1) is a tile's cost beyond the
dense rate in stage-times (1024 cycles of tensor work each).

Needs numpy; the expert loads come from tools/wave_model.py (the bench's
router, bit for bit).
"""
import argparse
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wave_model  # noqa: E402

BM, BN = wave_model.BM, wave_model.BN
DENSE_BM, DENSE_BN, DENSE_SHARE_A = 320, 128, 2  # cuBLAS's tile, A shared by 2 CTAs


def ours(counts, N, K, gathered_a):
    """(A, B) bytes of one grouped-M product on our schedule."""
    tiles = (counts + BM - 1) // BM
    n_tiles = math.ceil(N / BN)
    if gathered_a:
        a_rows = counts.sum()  # rows past an expert's end are zero-filled
    else:
        a_rows = tiles.sum() * BM  # whole 128-row TMA boxes
    a = a_rows * K * 2 * n_tiles
    # One B tile per whole pair (multicast), one per odd (solo) tile.
    b_loads = (tiles // 2).sum() + (tiles & 1).sum()
    b = b_loads * BN * K * 2 * n_tiles
    return a, b


def ideal(M, N, K):
    """Our tiles on M rows with no expert edges: pairs of 256 rows."""
    n_tiles = math.ceil(N / BN)
    return M * K * 2 * n_tiles, math.ceil(M / (2 * BM)) * BN * K * 2 * n_tiles


def dense(M, N, K):
    """cuBLAS's 320 x 128 tiles, A shared by the two CTAs of a cluster."""
    a = M * K * 2 * math.ceil(N / (DENSE_BN * DENSE_SHARE_A))
    b = N * K * 2 * math.ceil(M / DENSE_BM)
    return a + b


def per_tile(record, names, seed, sigma):
    """The per-tile loss table of a kernels record."""
    rows = [json.loads(line) for line in open(record)]
    print(f"{'config':14} {'product':9} {'ratio':>6} {'busy':>6} {'rows':>6} {'in-tile':>7}"
          f" {'S':>4} {'loss/tile':>9}")
    for name in names:
        T, d, n, E, K = wave_model.CONFIGS[name]
        counts = wave_model.expert_counts(T, E, K, seed, sigma)
        for prod, cols, depth in (("up_proj", 2 * n, d), ("down_proj", d, n), ("dh", n, d),
                                  ("dx_tilde", d, 2 * n)):
            got = [r for r in rows if r["config"] == name and r["kernel"] == prod]
            if not got or not got[0].get("ratio"):
                continue
            ratio = got[0]["ratio"]
            _, _, busy, row_share = wave_model.grouped_m(counts, cols, 66)
            e = ratio / busy / row_share
            S = depth / 64
            print(f"{name:14} {prod:9} {ratio:6.3f} {busy:6.3f} {row_share:6.3f} {e:7.3f}"
                  f" {S:4.0f} {S * (1 / e - 1):9.2f}")


def main():
    np.seterr(over="ignore")  # wave_model's mix64 relies on uint64 wraparound
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="7b-n256,30b-n1024,120b-n2048")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--expert-bias-std", type=float, default=0.5)
    ap.add_argument("--record", help="a --kernels jsonl record: print the per-tile losses")
    a = ap.parse_args()
    names = list(wave_model.CONFIGS) if a.config == "all" else a.config.split(",")
    if a.record:
        per_tile(a.record, names, a.seed, a.expert_bias_std)
        return
    gb = 1e9
    print(f"{'config':14} {'product':9} {'A':>7} {'B':>7} {'epi':>6} {'total':>7} {'ideal':>7}"
          f" {'2x2':>7} {'dense':>7} {'/dense':>6}")
    for name in names:
        T, d, n, E, K = wave_model.CONFIGS[name]
        counts = wave_model.expert_counts(T, E, K, a.seed, a.expert_bias_std)
        M = int(counts.sum())
        R = 2 * n  # gated: H and W1 have 2n columns (the bench runs SwiGLU)
        for prod, N, depth, gathered, epi in (
                ("up_proj", R, d, True, 0),
                ("down_proj", d, n, False, 0),
                ("dh", n, d, True, M * R * 2),  # the epilogue reads H
                ("dx_tilde", d, R, False, 0)):
            ra, rb = ours(counts, N, depth, gathered)
            ia, ib = ideal(M, N, depth)
            total = ra + rb + epi
            ref = dense(M, N, depth)
            quad = f"{(ra / 2 + rb + epi) / gb:7.2f}" if not gathered else f"{'-':>7}"
            print(f"{name:14} {prod:9} {ra / gb:7.2f} {rb / gb:7.2f} {epi / gb:6.2f}"
                  f" {total / gb:7.2f} {(ia + ib + epi) / gb:7.2f} {quad} {ref / gb:7.2f}"
                  f" {total / ref:6.3f}")


if __name__ == "__main__":
    main()
