#!/usr/bin/env bash
# Does a kernel's time depend on the process? Runs the per-kernel bench in N
# separate processes and prints one kernel's median from each, then N more
# processes under ncu (that kernel's first timed launch only) with its
# duration, L2 hit rate and DRAM throughput. Written when 30b-n1024's
# up-projection read 3.2 ms in some processes and 3.6 in others; the cause
# was the clock (docs/NOTES.md: it is the first heavy kernel timed, and ran
# partly at boost), so the bench calls run without the heat unless HEAT_MS
# says otherwise.
# Usage: [HEAT_MS=2000] tools/device_modes.sh [CONFIG] [KERNEL] [N] [LAUNCH]
#   LAUNCH: the kernel's index among the grouped GEMMs of one
#   `--warmup 0 --iters 1` run (device_hotspots.sh: up_proj 0, dH 4, dW1 10).
# Binaries come prebuilt in .dev/; outputs in $OUT; SONICMOE_ENGINE
# defaults to hopper.
set -u
config=${1:-30b-n1024}
kernel=${2:-up_proj}
n=${3:-5}
launch=${4:-0}
out=${OUT:-/tmp}
export SONICMOE_ENGINE=${SONICMOE_ENGINE:-hopper}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for i in $(seq 1 "$n"); do
  timeout 120 .dev/sonicmoe-bench --kernels --config "$config" --heat-ms "${HEAT_MS:-0}" > /dev/null \
    2> "$out/modes-run.err"
  echo "process $i rc=$? $(grep -E "^$config +$kernel " "$out/modes-run.err" | awk '{print $3 " ms, " $5 " TF/s"}')"
  sed "s/^/$i /" "$out/modes-run.err" >> "$out/modes.txt"  # one file: $OUT returns at most 8
done
rm -f "$out/modes-run.err"
for i in $(seq 1 "$n"); do
  timeout 200 ncu --clock-control none -k regex:grouped_gemm --launch-skip "$launch" \
    --launch-count 1 --section SpeedOfLight --section MemoryWorkloadAnalysis \
    .dev/sonicmoe-bench --kernels --config "$config" --heat-ms 0 --warmup 0 --iters 1 \
    > "$out/modes-ncu-run.txt" 2>&1
  echo "ncu process $i rc=$? $(grep -E "^ +(Duration|L2 Hit Rate|DRAM Throughput|L2 Cache Throughput|Memory Throughput) " \
    "$out/modes-ncu-run.txt" | awk '{$1=$1; print}' | tr '\n' ';')"
  sed "s/^/$i /" "$out/modes-ncu-run.txt" >> "$out/modes-ncu.txt"
done
rm -f "$out/modes-ncu-run.txt"
