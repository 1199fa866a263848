#!/usr/bin/env bash
# Where one kernel's warps stall, per SASS instruction (ncu warp-state
# sampling). Usage: tools/device_hotspots.sh REGEX LAUNCH [BENCH-ARGS...]
# REGEX picks kernels by name, LAUNCH counts the matching launches of one
# `sonicmoe-bench ... --warmup 0 --iters 1` run from 0. With the default
# bench arguments (--kernels --config 7b-n256) each grouped GEMM runs twice
# (the bench's own first run and the timed one), in the order up_proj,
# down_proj, dh, dw2, dx_tilde, dw1: `grouped_gemm 4` is dH, 10 is dW1.
# --heat-ms 0: the heat's own launches would shift LAUNCH (and ncu times one
# launch on an idle GPU anyway: docs/NOTES.md on the power cap).
# Report and CSV in $OUT; SONICMOE_ENGINE defaults to hopper.
set -u
regex=${1:-grouped_gemm}
launch=${2:-4}
shift 2 2>/dev/null
args=("$@")
[ ${#args[@]} -eq 0 ] && args=(--kernels --config 7b-n256)
out=${OUT:-/tmp}
SONICMOE_ENGINE=${SONICMOE_ENGINE:-hopper} timeout 250 ncu --clock-control none \
  -k "regex:$regex" --launch-skip "$launch" --launch-count 1 --section SourceCounters \
  --section WarpStateStats -o "$out/hotspots" -f .dev/sonicmoe-bench "${args[@]}" --heat-ms 0 --warmup 0 \
  --iters 1 > "$out/hotspots.log" 2>&1
echo "ncu rc=$?"
grep -m1 -E "^  [a-z].*\(" "$out/hotspots.log" | cut -c1-150
ncu -i "$out/hotspots.ncu-rep" --page source --print-source sass --csv > "$out/hotspots.csv"
python3 tools/ncu_hotspots.py "$out/hotspots.csv" 30
