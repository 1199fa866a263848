#!/usr/bin/env bash
# Where one grouped GEMM's warps stall, per SASS instruction (ncu warp-state
# sampling). Usage: tools/device_hotspots.sh CONFIG LAUNCH [ENGINE]
# LAUNCH counts grouped_gemm launches of `sonicmoe-bench --kernels --warmup 0
# --iters 1` from 0; each product runs twice (the bench's own first run and
# the timed one), in the order up_proj, down_proj, dh, dw2, dx_tilde, dw1:
# 4 is dH, 10 is dW1. Report and CSV in $OUT.
set -u
config=${1:-7b-n256}
launch=${2:-4}
out=${OUT:-/tmp}
SONICMOE_ENGINE=${3:-hopper} timeout 250 ncu --clock-control none -k regex:grouped_gemm \
  --launch-skip "$launch" --launch-count 1 --section SourceCounters --section WarpStateStats \
  -o "$out/hotspots" -f .dev/sonicmoe-bench --kernels --config "$config" --warmup 0 --iters 1 \
  > "$out/hotspots.log" 2>&1
echo "ncu rc=$?"
grep -m1 "grouped_gemm_kernel" "$out/hotspots.log" | cut -c1-150
ncu -i "$out/hotspots.ncu-rep" --page source --print-source sass --csv > "$out/hotspots.csv"
python3 tools/ncu_hotspots.py "$out/hotspots.csv" 30
