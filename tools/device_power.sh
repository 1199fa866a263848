#!/usr/bin/env bash
# Clock and power of one kernel against its dense cuBLAS product, under
# sustained load. Under the H200's 700 W cap the clock is what a kernel's
# power draw leaves (docs/NOTES.md), so a kernel slower than cuBLAS at the
# same clock loses time (stalls: overlap helps), and one slower at a lower
# clock loses energy (bytes and instructions per FLOP: only doing less
# helps). For each kernel: nvidia-smi samples every 20 ms around
# `sonicmoe-bench --kernels --only KERNEL`, whose timeline is the heat
# (the kernel alone, HEAT_MS), the kernel timed, then cuBLAS timed; the
# script prints the median clock and power of the first HEAT_MS - 200 ms
# under load (the kernel) and of the last 800 ms under load (cuBLAS), and
# the bench's row. Read the clock: power.draw is a one-second average, so
# the kernel's window includes its ramp from idle (and "under load", power
# above 250 W, starts a few hundred ms late). ITERS sizes the timed phases
# (cuBLAS's must outlast 800 ms). Everything goes to one file,
# $OUT/power.txt; the raw samples to $OUT/power-traces.csv.
# Usage: [HEAT_MS=2000] tools/device_power.sh CONFIG ITERS KERNEL...
#   tools/device_power.sh 7b-n256 2000 up_proj dh dw1
set -u
config=$1 iters=$2
shift 2
heat=${HEAT_MS:-2000}
out=${OUT:-/tmp}
log=$out/power.txt
export SONICMOE_ENGINE=${SONICMOE_ENGINE:-hopper}
bin=.dev/sonicmoe-bench
[ -f "$bin.gz" ] && [ ! -f "$bin" ] && gunzip "$bin.gz"
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader | tee -a "$log"
for k in "$@"; do
  trace=$out/power-trace.csv
  nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw --format=csv,noheader,nounits \
    -lms 20 > "$trace" &
  smi=$!
  sleep 0.5
  timeout 300 "$bin" --kernels --only "$k" --config "$config" --heat-ms "$heat" \
    --iters "$iters" > /dev/null 2> "$out/power-run.err"
  rc=$?
  sleep 0.3
  kill "$smi"; wait "$smi" 2> /dev/null
  row=$(grep -E "^$config +$k " "$out/power-run.err" | awk '{$1=$1; print}')
  # Samples under load (> 250 W): the kernel's heat first, cuBLAS last.
  awk -F', ' -v heat="$heat" -v k="$k" -v cfg="$config" -v rc="$rc" -v row="$row" '
    function ms(ts,   a) { split(ts, a, /[ :]/); return ((a[2] * 60 + a[3]) * 60 + a[4]) * 1000 }
    BEGIN { n = 0 }
    $3 + 0 > 250 { t[n] = ms($1); c[n] = $2 + 0; p[n] = $3 + 0; ++n }
    function med(lo, hi, arr,   i, m, v, j, x) {
      m = 0; for (i = 0; i < n; ++i) if (t[i] >= lo && t[i] <= hi) v[m++] = arr[i]
      for (i = 1; i < m; ++i) { x = v[i]; for (j = i - 1; j >= 0 && v[j] > x; --j) v[j + 1] = v[j]; v[j + 1] = x }
      return m ? sprintf("%.0f (%d samples)", v[int(m / 2)], m) : "-" }
    END {
      if (n == 0) { printf "%s %s rc=%s: no samples under load\n", cfg, k, rc; exit }
      printf "%s %s rc=%s: kernel %s MHz, %s W; cuBLAS %s MHz, %s W\n  %s\n", cfg, k, rc,
        med(t[0], t[0] + heat - 200, c), med(t[0], t[0] + heat - 200, p),
        med(t[n - 1] - 800, t[n - 1], c), med(t[n - 1] - 800, t[n - 1], p), row }
  ' "$trace" | tee -a "$log"
  sed "s/^/$k /" "$trace" >> "$out/power-traces.csv"
done
rm -f "$out/power-run.err" "$out/power-trace.csv"
