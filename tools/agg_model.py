"""How much of the aggregation a fused design could hide under the product
that feeds it (a model over recorded times, not a measurement).

The forward's down_proj writes Y (a row per pair) and aggregate_rows then
reads it back to sum each token's K rows; the backward does the same with
dX~. The aggregation is a DRAM-bound pass of its own (0.24 ms of 7b-n256's
1.28 ms forward, 0.45 ms at 120b-n2048). A fused design (the product's CTAs
sum a token's rows once the last of them is written, in the fixed pair
order, so the bits do not change) can only start a token when its last row
is out, and the persistent scheduler walks experts in order, so most tokens
finish late: a token waits for the largest of its K experts (and for the
odd-tile units at the end of the list).

This rebuilds the bench's routing (tools/wave_model.py), places each pair
in its grouped-M unit as src/gemm/common/scheduler.cuh does (pairs within
an expert in token order; whole tile pairs by expert, then the odd tiles
two at a time; n tiles innermost; waves of --clusters), and finds the wave
in which each token's last row is stored. Then, wave by wave, the
aggregation of the tokens finished so far runs in the DRAM bandwidth the
product leaves free (practical peak minus the product's own bytes over its
time); what is left when the product ends runs alone at the full rate.
Fused time = product + that remainder; against product + aggregation now.
Ignores the SM time the summing takes from the product (it needs a warp
role that the TMA-only products leave idle) and the counters' atomics.

    python3 tools/agg_model.py [--config 7b-n256,120b-n2048]

Times: docs/results/kernels-hopper-h100.txt (H100, L2 flushed per run).
"""
import argparse
import math

import numpy as np

import wave_model as wm

# Measured alone (ms, H100): product, aggregation, practical peak (GB/s,
# the aggregation's own rate).
TIMES = {
    "7b-n256": {"down_proj": 0.3574, "agg_fwd": 0.2380, "dx_tilde": 0.5742, "agg_bwd": 0.2370},
    "30b-n1024": {"down_proj": 1.9619, "agg_fwd": 0.4510, "dx_tilde": 3.3337, "agg_bwd": 0.4555},
    "120b-n2048": {"down_proj": 3.5023, "agg_fwd": 0.4528, "dx_tilde": 7.2127, "agg_bwd": 0.4522},
}
PEAK_GBPS = 2950.0


def token_experts(T, E, K, seed, sigma):
    """[T, K] expert ids of the bench's router (the same draws as
    wave_model.expert_counts)."""
    bias = wm.normal_at(seed, wm.FIELD_EXPERT_BIAS, np.arange(E, dtype=np.uint64))
    out = np.empty((T, K), dtype=np.int64)
    rows = max(1, (1 << 22) // E)
    for t0 in range(0, T, rows):
        t1 = min(T, t0 + rows)
        idx = np.arange(t0 * E, t1 * E, dtype=np.uint64)
        logits = wm.normal_at(seed, wm.FIELD_LOGITS, idx).reshape(t1 - t0, E) + \
            np.float32(sigma) * bias
        out[t0:t1] = np.argpartition(-logits, K - 1, axis=1)[:, :K]
    return out


def finish_waves(experts, E, cols, clusters):
    """The wave in which each token's last row is stored, and the wave count."""
    T, K = experts.shape
    flat = experts.ravel()
    tok = np.repeat(np.arange(T), K)
    order = np.lexsort((tok, flat))  # by expert, then token: the scatter's order
    counts = np.bincount(flat, minlength=E)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.empty(len(flat), dtype=np.int64)
    rank[order] = np.arange(len(flat)) - starts[flat[order]]
    tiles = (counts + wm.BM - 1) // wm.BM
    pair_units = tiles // 2
    unit_prefix = np.concatenate(([0], np.cumsum(pair_units)[:-1]))
    odd = tiles & 1
    odd_prefix = np.concatenate(([0], np.cumsum(odd)[:-1]))
    total_pairs = int(pair_units.sum())
    tile = rank // wm.BM
    in_odd = (odd[flat] == 1) & (tile == tiles[flat] - 1)
    unit = np.where(in_odd, total_pairs + odd_prefix[flat] // 2,
                    unit_prefix[flat] + tile // 2)
    un = math.ceil(cols / wm.BN)
    units = total_pairs + (int(odd.sum()) + 1) // 2
    last_id = unit * un + un - 1
    wave = last_id // clusters
    return wave.reshape(T, K).max(axis=1), math.ceil(units * un / clusters)


def fused(product_ms, agg_ms, product_bytes, waves_done, waves):
    """Fused time: per wave, the aggregation of tokens finished by then runs
    in the bandwidth the product leaves; the rest after the product."""
    share = 1.0 - min(1.0, product_bytes / (product_ms * 1e-3) / (PEAK_GBPS * 1e9))
    per_token = agg_ms / len(waves_done)
    ready = np.bincount(waves_done, minlength=waves)
    wave_ms = product_ms / waves
    backlog = 0.0
    for w in range(waves):
        backlog += ready[w] * per_token
        backlog -= min(backlog, share * wave_ms)
    return product_ms + backlog, share


def main():
    np.seterr(over="ignore")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=",".join(TIMES))
    ap.add_argument("--clusters", type=int, default=66)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--expert-bias-std", type=float, default=0.5)
    a = ap.parse_args()
    print(f"{'config':11} {'pass':8} {'done by half':>12} {'by 3/4':>7} {'free bw':>7}"
          f" {'now ms':>7} {'fused ms':>8} {'saved':>6}")
    for name in a.config.split(","):
        T, d, n, E, K = wm.CONFIGS[name]
        experts = token_experts(T, E, K, a.seed, a.expert_bias_std)
        waves_done, waves = finish_waves(experts, E, d, a.clusters)
        N = T * K
        t = TIMES[name]
        # DRAM bytes of each product: its output rows, its A rows, the weights once.
        passes = (("forward", t["down_proj"], t["agg_fwd"], 2 * (N * d + N * n + E * n * d)),
                  ("backward", t["dx_tilde"], t["agg_bwd"], 2 * (N * d + N * 2 * n + E * 2 * n * d)))
        for label, prod, agg, nbytes in passes:
            f, share = fused(prod, agg, nbytes, waves_done, waves)
            half = np.mean(waves_done < waves / 2)
            three = np.mean(waves_done < 3 * waves / 4)
            now = prod + agg
            print(f"{name:11} {label:8} {half:12.2f} {three:7.2f} {share:7.2f} {now:7.3f}"
                  f" {f:8.3f} {now - f:6.3f}")


if __name__ == "__main__":
    main()
