"""Top stall locations of one kernel from an ncu source-page CSV.

Usage: python3 tools/ncu_hotspots.py SRC.csv [N]
SRC.csv comes from `ncu -i REPORT --page source --print-source sass --csv`.
Prints the N SASS instructions (default 30) with the most warp-stall
samples, with their long-scoreboard share: spin loops on
SYNCS.PHASECHK...TRYWAIT are mbarrier waits (the offset says which barrier).
"""
import csv
import sys


def number(text):
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


def split_roles(data, src):
    """A warp-specialized kernel's rows as (producer, consumers, first): code
    after the producer's `setmaxnreg.dec` (USETMAXREG.DEALLOC) up to the next
    unpredicated EXIT is the producer's, the rest the consumers' (the spin
    loops' out-of-line retry branches land with whichever role's EXIT
    precedes them); consumers[:first] is the consumers' code before the
    producer's, without those out-of-line loops. None if there are no roles."""
    start = next((i for i, r in enumerate(data) if "USETMAXREG.DEALLOC" in r[src]), None)
    if start is None:
        return None
    end = next((i for i in range(start, len(data))
                if "EXIT" in data[i][src] and "@" not in data[i][src]), len(data))
    return data[start:end + 1], data[:start] + data[end + 1:], start


def roles(split, names, samples, labels=("producer", "consumers")):
    """Samples per warp role, by stall reason."""
    stalls = [i for i, n in enumerate(names) if n.startswith("stall_") and "Not Issued" not in n]
    producer, consumers, _ = split
    for name, rows in zip(labels, (producer, consumers)):
        if not rows:
            continue
        total = sum(number(r[samples]) for r in rows)
        by = sorted(((sum(number(r[i]) for r in rows), names[i][6:]) for i in stalls), reverse=True)
        print(f"{name:9s} {total:8.0f} samples: " +
              ", ".join(f"{n} {v / total:.0%}" for v, n in by[:6] if total))


def epilogue(split, src, samples):
    """The consumers' samples after their wgmma_wait<0> (`WARPGROUP.DEPBAR.LE
    gsb0, 0x0`, once per tile, right before the epilogue), by opcode: where
    the epilogue spends its time. Only a guide: code the compiler moved past
    that point (the next tile's scheduling) counts too."""
    _, consumers, first = split
    waits = [i for i, r in enumerate(consumers) if "DEPBAR.LE gsb0, 0x0" in r[src]]
    if not waits:
        return
    total = sum(number(r[samples]) for r in consumers)
    # Up to the producer's code when the wait comes before it: the
    # out-of-line spin loops after the producer's EXIT are not epilogue.
    tail = consumers[waits[0]:first] if waits[0] < first else consumers[waits[0]:]
    by = {}
    for r in tail:
        words = r[src].split()
        op = words[1] if words and words[0].startswith("@") and len(words) > 1 else (
            words[0] if words else "?")
        by[op.split(".")[0]] = by.get(op.split(".")[0], 0.0) + number(r[samples])
    share = sum(by.values())
    print(f"epilogue  {share:8.0f} samples ({share / total:.0%} of the consumers'): " +
          ", ".join(f"{k} {v / share:.0%}" for v, k in sorted(((v, k) for k, v in by.items()),
                                                            reverse=True)[:10] if share))


def main():
    rows = list(csv.reader(open(sys.argv[1], errors="replace")))
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    head = next(i for i, r in enumerate(rows) if "Source" in (c.strip() for c in r))
    names = [c.strip() for c in rows[head]]
    data = [r for r in rows[head + 1:] if len(r) == len(names)]
    addr, src = names.index("Address"), names.index("Source")
    samples = names.index("Warp Stall Sampling (All Samples)")
    long_sb = next((i for i, n in enumerate(names) if n == "stall_long_sb"), None)
    total = sum(number(r[samples]) for r in data)
    print(f"{total:.0f} samples over {len(data)} instructions")
    split = split_roles(data, src)
    if split:
        roles(split, names, samples)
        epilogue(split, src, samples)
    else:  # one role (the portable engine): the whole kernel by stall reason
        roles((data, [], 0), names, samples, ("kernel", ""))
    for r in sorted(data, key=lambda r: -number(r[samples]))[:top]:
        share = number(r[samples]) / total if total else 0.0
        lsb = f"long_sb {number(r[long_sb]):7.0f}" if long_sb is not None else ""
        print(f"{number(r[samples]):7.0f} {share:6.1%} {r[addr][-6:]} {lsb}  {r[src][:80]}")


if __name__ == "__main__":
    main()
