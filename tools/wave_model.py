"""How evenly the Hopper engine's persistent grid is loaded, per product, on
the bench's own expert loads (a model, not a measurement).

Rebuilds the bench's router exactly (bench/random.hpp: counter-based
normal_at, logits N(0,1) plus a per-expert N(0, sigma) offset; top-K), counts
each expert's pairs, and lays the tiles out as src/gemm/common/scheduler.cuh
does with 2-CTA clusters (Pair::M, 128 x 256 tiles):
  grouped-M (up_proj, down_proj, dH, dX~): whole pairs of one expert's M
    tiles, then the odd tiles two at a time; every unit costs the same, so a
    launch takes ceil(units / clusters) unit times. "waves" is units /
    clusters, "busy" the share of cluster time that does work, and "rows"
    the valid rows over the tile rows (an expert's last tile is partial).
  grouped-K (dW1 as dW1^T, dW2): every expert has the same tile count and a
    tile costs its expert's k16-step count plus a fixed epilogue cost
    (--epilogue-steps); tiles are listed heaviest expert first and walked
    in zigzag waves (tile_of), and "busy" is total cost over clusters x the
    most loaded cluster's cost; "run-time" is the same with the tiles taken
    at run time as branch next/dynamic-dw does (tile_queue.cuh): each by
    the cluster that comes first to its current tile's second-last chunk.
Assumes `--clusters` resident clusters (66 on a 132-SM H100 or H200).

    python3 tools/wave_model.py [--config 7b-n256,120b-n2048] [--clusters 66]

Needs numpy. Keep in step with scheduler.cuh and bench/random.hpp.
"""
import argparse
import heapq
import math

import numpy as np

CONFIGS = {  # T, H (d), I (n), E, K: bench/configs
    "1.4b-n256": (40960, 768, 256, 128, 8),
    "1.4b-n1024": (40960, 768, 1024, 32, 2),
    "7b-n256": (24576, 1536, 256, 128, 8),
    "7b-n512": (24576, 1536, 512, 64, 4),
    "7b-n1024": (24576, 1536, 1024, 32, 2),
    "30b-n256": (32768, 4096, 256, 256, 16),
    "30b-n1024": (32768, 4096, 1024, 64, 4),
    "120b-n512": (32768, 4096, 512, 256, 16),
    "120b-n2048": (32768, 4096, 2048, 64, 4),
    "olmoe-7b": (32768, 2048, 1024, 64, 8),
    "gptoss-20b": (32768, 2880, 2880, 32, 4),
    "kimi-48b": (32768, 2304, 1024, 256, 8),
    "qwen3next-80b": (32768, 2048, 512, 512, 10),
    "qwen3-235b": (32768, 4096, 1536, 128, 8),
    "dsv3-685b": (32768, 7168, 2048, 256, 8),
}
BM, BN, STAGE_K = 128, 256, 64
FIELD_LOGITS, FIELD_EXPERT_BIAS = 7, 8  # bench::Field
M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def mix64(z):
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def normal_at(seed, field, i):
    base = mix64(np.uint64(seed) ^ np.uint64(field << 56))
    h = mix64(base + i.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    u1 = (((h >> np.uint64(40)) & np.uint64(0xFFFFFF)).astype(np.float32) + np.float32(1)) * \
        np.float32(1.0 / 16777216.0)
    u2 = ((h >> np.uint64(16)) & np.uint64(0xFFFFFF)).astype(np.float32) * np.float32(1.0 / 16777216.0)
    return np.sqrt(np.float32(-2) * np.log(u1)) * np.cos(np.float32(6.28318530718) * u2)


def expert_counts(T, E, K, seed, sigma):
    bias = normal_at(seed, FIELD_EXPERT_BIAS, np.arange(E, dtype=np.uint64))
    counts = np.zeros(E, dtype=np.int64)
    rows = max(1, (1 << 22) // E)  # in blocks: T x E logits run to 16M
    for t0 in range(0, T, rows):
        t1 = min(T, t0 + rows)
        idx = np.arange(t0 * E, t1 * E, dtype=np.uint64)
        logits = normal_at(seed, FIELD_LOGITS, idx).reshape(t1 - t0, E) + np.float32(sigma) * bias
        top = np.argpartition(-logits, K - 1, axis=1)[:, :K]
        counts += np.bincount(top.ravel(), minlength=E)
    return counts


def grouped_m(counts, cols, clusters):
    tiles = (counts + BM - 1) // BM
    units = int((tiles // 2).sum() + ((tiles & 1).sum() + 1) // 2) * math.ceil(cols / BN)
    waves = units / clusters
    return units, waves, units / (clusters * math.ceil(waves)), counts.sum() / (tiles.sum() * BM)


def run_time_order(steps, epilogue_steps, clusters):
    """Makespan when the clusters take the list's tiles at run time, as
    tile_queue.cuh does: a cluster takes its next tile one chunk of stages
    (16 k16 steps) before its current tile's last chunk starts, when the
    producer needs it next, so tiles are taken in the order of those
    moments. steps: each tile's k16 steps."""
    chunk = 4 * 4

    def claim(start, s):  # when a tile started at `start` takes the next one
        return start + max(0, math.ceil(s / chunk) - 2) * chunk

    running = [(claim(0.0, steps[c]), c, 0.0, steps[c]) for c in range(min(clusters, len(steps)))]
    heapq.heapify(running)
    end, taken = 0.0, len(running)
    while running:
        _, c, start, s = heapq.heappop(running)
        finish = start + s + epilogue_steps
        end = max(end, finish)
        if taken < len(steps):
            heapq.heappush(running, (claim(finish, steps[taken]), c, finish, steps[taken]))
            taken += 1
    return end


def grouped_k(counts, M, N, clusters, epilogue_steps):
    """Tiles, waves, busy share with the static zigzag and with the run-time order."""
    units_m, units_n = math.ceil(math.ceil(M / BM) / 2), math.ceil(N / BN)
    order = np.argsort(-counts, kind="stable")
    steps = np.repeat(np.ceil(counts[order] / STAGE_K) * 4, units_m * units_n)  # k16 steps
    cost = steps + epilogue_steps
    load = np.zeros(clusters)
    for k in range(math.ceil(len(cost) / clusters)):
        ids = k * clusters + (np.arange(clusters)[::-1] if k & 1 else np.arange(clusters))
        valid = ids < len(cost)
        load[valid] += cost[ids[valid]]
    work = cost.sum() / clusters
    return (len(cost), len(cost) / clusters, work / load.max(),
            work / run_time_order(steps, epilogue_steps, clusters))


def main():
    np.seterr(over="ignore")  # mix64 relies on uint64 wraparound
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="7b-n256,30b-n1024,120b-n2048")
    ap.add_argument("--clusters", type=int, default=66)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--expert-bias-std", type=float, default=0.5)
    ap.add_argument("--epilogue-steps", type=float, default=4.0,
                    help="a grouped-K tile's epilogue, in k16 steps of its mainloop")
    a = ap.parse_args()
    names = list(CONFIGS) if a.config == "all" else a.config.split(",")
    print(f"{'config':14} {'product':9} {'units':>7} {'waves':>8} {'busy':>6} {'rows':>6}"
          f" {'run-time':>8}")
    for name in names:
        T, d, n, E, K = CONFIGS[name]
        counts = expert_counts(T, E, K, a.seed, a.expert_bias_std)
        for prod, cols in (("up_proj", 2 * n), ("down_proj", d), ("dh", n), ("dx_tilde", d)):
            u, w, busy, rows = grouped_m(counts, cols, a.clusters)
            print(f"{name:14} {prod:9} {u:7d} {w:8.2f} {busy:6.3f} {rows:6.3f}")
        for prod, M, N in (("dw1", d, 2 * n), ("dw2", d, n)):
            u, w, busy, run_time = grouped_k(counts, M, N, a.clusters, a.epilogue_steps)
            print(f"{name:14} {prod:9} {u:7d} {w:8.2f} {busy:6.3f}      - {run_time:8.3f}")


if __name__ == "__main__":
    main()
