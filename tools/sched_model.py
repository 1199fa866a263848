"""Host-side model of the grouped-M tile schedule (src/gemm/common/scheduler.cuh).

Transcribes kernels::tile_offsets (its three prefixes) and Scheduler::at for
grouped-M products, solo (Pair::None) and in 2-CTA pairs (Pair::M: whole
pairs of one expert's M tiles, then the odd last tiles two experts at a
time, Tile::solo), and checks on many expert loads (empty experts, a
single expert, all odd, uneven) that:
  - every row of every expert is in exactly one scheduled tile, per N tile;
  - no tile reaches past its expert's rows, and both halves of a whole
    pair belong to one expert (they share its weights by multicast);
  - a tile with no rows is the second half of the last odd unit only;
  - the unit count stays under the launch's bound, grouped_m_tiles
    (ceil(N / 2 BM) + E units).
It is a transcription, not the code itself: keep it in step with
scheduler.cuh and layer_kernels.cu. Runs under CTest (scheduler_model).

    python3 tools/sched_model.py
"""
import random
import sys

BM = 128


def tile_offsets(counts):
    """kernels::tile_offsets: [tiles, whole pairs, odd tiles] prefixes."""
    parts = []
    for part in range(3):
        prefix, acc = [], 0
        for c in counts:
            prefix.append(acc)
            t = (max(0, c) + BM - 1) // BM
            acc += t if part == 0 else t // 2 if part == 1 else t & 1
        prefix.append(acc)
        parts.append(prefix)
    return parts


def expert_at(prefix, v, lo, num_experts):
    """Scheduler::expert_at: largest e with prefix[e] <= v."""
    hi = num_experts - 1
    if prefix[lo] > v:
        lo = 0
    if lo < hi and prefix[lo + 1] > v:
        hi = lo
    while lo < hi:
        mid = (lo + hi + 1) >> 1
        if prefix[mid] <= v:
            lo = mid
        else:
            hi = mid - 1
    return lo


def at(mt, rank, paired, offsets, tiles, pairs, odd, hint):
    """Scheduler::at's M part: (expert, m0, rows, solo), and the new hint."""
    E = len(offsets) - 1
    positions = offsets[-1]
    units = pairs if paired else tiles
    if paired and mt >= pairs[E]:  # odd_tile
        u = mt - pairs[E]
        count = odd[E]
        i = min(2 * u + rank, count - 1)
        e = expert_at(odd, i, 0, E)
        begin, end = max(0, offsets[e]), min(positions, offsets[e + 1])
        n_tiles = tiles[e + 1] - tiles[e]
        m0 = begin + max(0, n_tiles - 1) * BM
        rows = min(BM, end - m0) if (2 * u + rank < count and n_tiles > 0) else 0
        if rows <= 0:
            rows, m0 = 0, begin
        return (e, m0, rows, True), hint
    lo = expert_at(units, mt, hint, E)
    begin, end = max(0, offsets[lo]), min(positions, offsets[lo + 1])
    pair = 2 if paired else 1
    m0 = begin + (mt - units[lo]) * BM * pair + (rank * BM if paired else 0)
    rows = min(BM, end - m0)
    if rows <= 0:
        rows, m0 = 0, begin
    return (lo, m0, rows, False), lo


def check(counts, paired):
    offsets = [0]
    for c in counts:
        offsets.append(offsets[-1] + c)
    E, N = len(counts), offsets[-1]
    tiles, pairs, odd = tile_offsets(counts)
    total = pairs[E] + (odd[E] + 1) // 2 if paired else tiles[E]
    pair_rows = BM * (2 if paired else 1)
    bound = (N + pair_rows - 1) // pair_rows + E
    assert total <= bound, (total, bound)
    covered = [0] * N
    empties = []
    for rank in (range(2) if paired else range(1)):
        hint = 0
        for mt in range(total):  # one CTA's ids grow: the hint follows them
            (e, m0, rows, solo), hint = at(mt, rank, paired, offsets, tiles, pairs, odd, hint)
            assert 0 <= e < E
            if rows == 0:
                empties.append((mt, rank))
                continue
            assert offsets[e] <= m0 and m0 + rows <= offsets[e + 1], (e, m0, rows)
            for r in range(m0, m0 + rows):
                covered[r] += 1
            if paired and not solo:  # both halves of a whole pair: one expert
                other, _ = at(mt, 1 - rank, paired, offsets, tiles, pairs, odd, 0)
                assert other[0] == e and other[2] > 0, (mt, other)
    assert all(c == 1 for c in covered), "a row is covered %s times" % sorted(set(covered))
    if paired:
        # Only the last odd unit may have an empty half, and only when the
        # odd tiles are odd in number.
        expect = [(total - 1, 1)] if odd[E] % 2 else []
        assert empties == expect, (empties, expect)
    else:
        assert not empties, empties


def main():
    rng = random.Random(1)
    cases = [
        [0], [1], [128], [129], [256], [257], [0, 0, 5], [128, 0, 128],
        [1, 1, 1, 1, 1], [BM * 3] * 7, [BM * 3 + 1, 0, BM * 5 - 3, 2],
    ]
    for _ in range(300):
        E = rng.choice([1, 2, 3, 8, 64, 128])
        skew = rng.random() * 3
        cases.append([int(rng.expovariate(1.0) ** skew * rng.choice([50, 700, 3000]))
                      if rng.random() > 0.1 else 0 for _ in range(E)])
    for counts in cases:
        for paired in (False, True):
            check(counts, paired)
    print("sched_model: %d expert loads, solo and paired: every row in one tile, "
          "pairs within one expert, empty halves only at the end" % len(cases))
    return 0


if __name__ == "__main__":
    sys.exit(main())
