"""Where a Hopper product's tiles spend their time, from a tile trace.

The trace comes from the diagnostic build (cmake -DSONICMOE_TILE_TRACE=ON,
src/gemm/sm90/trace.cuh) run with SONICMOE_TILE_TRACE=<file>, e.g.

    SONICMOE_TILE_TRACE=/tmp/trace.txt SONICMOE_ENGINE=hopper \\
      build-trace/bench/sonicmoe-bench --kernels --config 120b-n2048 \\
      --only down_proj --warmup 0 --iters 1 --heat-ms 0
    python3 tools/tile_trace.py /tmp/trace.txt

For each launch it prints, in SM cycles (clock(), 32 bits, so differences
are taken modulo 2^32), per consumer warpgroup tile: its scheduler lookup
and the wait for its first stage ("first"), the mainloop from then to its
last MMA's retirement ("main", and per stage), the epilogue ("epi"), and
the gap to the warpgroup's next tile ("gap"), as medians and as shares of
the consumers' summed time; for the producer, the wait for
the tile's first free stage and the time it took to issue the tile. A
stage of a 128 x 256 x 64 tile is 1024 cycles of tensor-core work at the
SM's 4096 bf16 FLOPs per cycle: "main per stage" against that says how
fast the mainloop runs, the other shares what it loses outside.

    python3 tools/tile_trace.py --self-test   (CTest: tile_trace_model)
"""
import argparse
import statistics
import sys
from collections import defaultdict

FIELDS = ("role", "sm", "cta", "k", "id", "rows", "expert", "ktiles", "t0", "t1", "t2", "t3")


def parse(lines):
    """[(header, [record dict])] per launch."""
    launches = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        if line.startswith("# launch"):
            launches.append((line[2:], []))
            continue
        values = [int(v) for v in line.split()]
        if len(values) != len(FIELDS) or not launches:
            raise ValueError("not a tile trace line: %r" % line)
        launches[-1][1].append(dict(zip(FIELDS, values)))
    return launches


def dt(a, b):
    """Cycles from a to b on one SM's 32-bit counter."""
    return (b - a) & 0xFFFFFFFF


def median(xs):
    return statistics.median(xs) if xs else 0


def summarise(records):
    """The figures of one launch, as a dict."""
    cons = [r for r in records if r["role"] >= 1 and r["ktiles"] > 0]
    prod = [r for r in records if r["role"] == 0 and r["ktiles"] > 0]
    first = [dt(r["t0"], r["t1"]) for r in cons]
    main = [dt(r["t1"], r["t2"]) for r in cons]
    epi = [dt(r["t2"], r["t3"]) for r in cons]
    per_stage = [m / r["ktiles"] for m, r in zip(main, cons)]
    # Gaps: between one tile's epilogue end and the same warpgroup's next tile.
    by_wg = defaultdict(list)
    for r in records:
        if r["role"] >= 1:
            by_wg[(r["cta"], r["role"])].append(r)
    gaps = []
    for rs in by_wg.values():
        rs.sort(key=lambda r: r["k"])
        gaps += [dt(a["t3"], b["t0"]) for a, b in zip(rs, rs[1:])]
    total = sum(first) + sum(main) + sum(epi) + sum(gaps)
    share = (lambda xs: sum(xs) / total) if total else (lambda xs: 0.0)
    return {
        "tiles": len(cons), "first": median(first), "main": median(main), "epi": median(epi),
        "gap": median(gaps), "per_stage": median(per_stage),
        "share_first": share(first), "share_main": share(main), "share_epi": share(epi),
        "share_gap": share(gaps),
        "prod_wait": median([dt(r["t0"], r["t1"]) for r in prod]),
        "prod_issue": median([dt(r["t1"], r["t2"]) for r in prod]),
    }


def report(launches, out=sys.stdout):
    for header, records in launches:
        s = summarise(records)
        print(header, file=out)
        print(f"  consumer tiles {s['tiles']}: median cycles first {s['first']:.0f}, "
              f"main {s['main']:.0f} ({s['per_stage']:.0f} per stage), epi {s['epi']:.0f}, "
              f"gap {s['gap']:.0f}", file=out)
        print(f"  share of consumer time: first {s['share_first']:.3f}, main "
              f"{s['share_main']:.3f}, epi {s['share_epi']:.3f}, gap {s['share_gap']:.3f}",
              file=out)
        print(f"  producer: median wait for a tile's first free stage {s['prod_wait']:.0f}, "
              f"issue {s['prod_issue']:.0f}", file=out)


def self_test():
    """A synthetic trace with known figures: two CTAs, two consumer
    warpgroups each, two tiles of 4 stages (first stage after 100 cycles,
    4 x 1100 of mainloop, 300 of epilogue, 50 to the next tile); producer
    records; and an empty grouped-K tile (no stages), which counts only
    through the gap before it."""
    lines = ["# launch 0 down_proj grid 2 records 11"]
    for cta in range(2):
        for wg in (1, 2):
            t = 1000 * cta
            for k in range(2):
                t0, t1 = t, t + 100
                t2 = t1 + 4 * 1100
                t3 = t2 + 300
                lines.append(f"{wg} {cta} {cta} {k} {k} 128 0 4 {t0} {t1} {t2} {t3}")
                t = t3 + 50
        lines.append(f"0 {cta} {cta} 0 0 128 0 4 0 20 420 420")
    lines.append("1 0 0 2 9 0 0 0 9700 0 9701 9701")  # 50 after cta 0, wg 1's second tile
    (header, records), = parse(lines)
    s = summarise(records)
    assert header.startswith("launch 0 down_proj"), header
    assert s["tiles"] == 8, s
    assert (s["first"], s["main"], s["epi"], s["per_stage"], s["gap"]) == (100, 4400, 300, 1100, 50), s
    total = 8 * (100 + 4400 + 300) + 5 * 50
    for key, part in (("share_first", 100), ("share_main", 4400), ("share_epi", 300)):
        assert abs(s[key] - 8 * part / total) < 1e-12, (key, s)
    assert abs(s["share_gap"] - 5 * 50 / total) < 1e-12, s
    assert (s["prod_wait"], s["prod_issue"]) == (20, 400), s
    # The 32-bit counter wraps: a tile across the wrap reads the same.
    wrapped = parse(["# launch 1 x", "1 0 0 0 0 1 0 2 4294967196 4 2004 2104"])[0][1]
    w = summarise(wrapped)
    assert (w["first"], w["main"], w["epi"]) == (104, 2000, 100), w
    try:
        parse(["1 2 3"])
    except ValueError:
        pass
    else:
        raise AssertionError("a line outside a launch must be rejected")
    print("tile_trace: synthetic trace summarised as built")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trace", nargs="?")
    ap.add_argument("--self-test", action="store_true")
    a = ap.parse_args()
    if a.self_test:
        return self_test()
    if not a.trace:
        ap.error("a trace file, or --self-test")
    with open(a.trace) as f:
        report(parse(f))
    return 0


if __name__ == "__main__":
    sys.exit(main())
