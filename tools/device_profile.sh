#!/usr/bin/env bash
# Per-kernel durations (ncu, gpu__time_duration) of one bench iteration, in
# launch order: where a layer's milliseconds go. Without hardware counters
# beyond the timer, so it is cheap. Usage: tools/device_profile.sh BENCH-ARGS...
# Example: tools/device_profile.sh --config 7b-n256 --routing round-nearest
set -u
out=${OUT:-/tmp}
tag=$(echo "$*" | tr -c 'a-zA-Z0-9-' '_')
SONICMOE_ENGINE=${SONICMOE_ENGINE:-hopper} timeout 200 ncu --clock-control none \
  --metrics gpu__time_duration.sum --csv \
  .dev/sonicmoe-bench "$@" --heat-ms 0 --warmup 0 --iters 1 --check none \
  > "$out/profile-$tag.csv" 2> "$out/profile-$tag.err"
echo "== $* rc=$?"
# "ID","PID","Process","Host","Kernel Name",...,"Metric Value" -> name (cut) and us
python3 - "$out/profile-$tag.csv" <<'PY'
import csv, sys, collections
rows = [r for r in csv.reader(l for l in open(sys.argv[1]) if l.startswith('"')) if len(r) > 10]
if not rows: print("no rows"); sys.exit()
hdr = rows[0]; name = hdr.index("Kernel Name"); val = hdr.index("Metric Value"); unit = hdr.index("Metric Unit")
tot = collections.OrderedDict()
for r in rows[1:]:
    v = float(r[val].replace(",", "")); u = r[unit]
    us = v / 1000 if u in ("ns", "nsecond") else v * 1000 if u in ("ms", "msecond") else v
    k = r[name].split("(")[0][:90]
    if "grouped_gemm" in r[name]: k = r[name][:110]
    tot.setdefault(k, [0, 0.0]); tot[k][0] += 1; tot[k][1] += us
for k, (n, us) in tot.items(): print(f"{us:10.1f} us {n:4d}x  {k}")
PY
