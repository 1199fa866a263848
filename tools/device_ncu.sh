#!/usr/bin/env bash
# ncu on the grouped GEMMs of one per-kernel bench iteration, per engine.
# Reports go to $OUT/ncu-<engine>.txt; a digest of the key lines is printed.
# Usage: tools/device_ncu.sh CONFIG [ENGINES]
set -u
config=${1:-7b-n256}
engines=${2:-"portable hopper"}
out=${OUT:-/tmp}
for engine in $engines; do
  SONICMOE_ENGINE=$engine timeout 280 ncu --clock-control none -k regex:grouped_gemm \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \
    --section Occupancy --section LaunchStats \
    .dev/sonicmoe-bench --kernels --config "$config" --heat-ms 0 --warmup 1 --iters 1 \
    > "$out/ncu-$engine.txt" 2>&1
  echo "== $engine rc=$?"
  grep -E "grouped_gemm_kernel|Duration|Compute \(SM\) Throughput|Memory Throughput|L2 Hit Rate|L1/TEX Hit|DRAM Throughput|Achieved Occupancy|Registers Per|Warp Cycles Per Issued|Stall|Block Limit Registers" \
    "$out/ncu-$engine.txt" | sed -E 's/grouped_gemm_kernel.*(Grouping[^,]*,[^,]*,[^,]*,[^ ]*).*/KERNEL \1/' | cut -c1-150 | head -120
done
