#!/usr/bin/env bash
# Is a kernel's time decided per process? Runs the per-kernel bench in N
# separate processes and prints one kernel's median from each, then N more
# processes under ncu (that kernel's first timed launch only) with its
# duration, L2 hit rate and DRAM throughput, to compare a fast process with
# a slow one. Written for 30b-n1024's up-projection (docs/NOTES.md), whose
# time has two modes across processes.
# Usage: tools/device_modes.sh [CONFIG] [KERNEL] [N] [LAUNCH]
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
  timeout 120 .dev/sonicmoe-bench --kernels --config "$config" > "$out/modes-$i.jsonl" \
    2> "$out/modes-$i.err"
  echo "process $i rc=$? $(grep -E "^$config +$kernel " "$out/modes-$i.err" | awk '{print $3 " ms, " $5 " TF/s"}')"
done
for i in $(seq 1 "$n"); do
  timeout 200 ncu --clock-control none -k regex:grouped_gemm --launch-skip "$launch" \
    --launch-count 1 --section SpeedOfLight --section MemoryWorkloadAnalysis \
    .dev/sonicmoe-bench --kernels --config "$config" --warmup 0 --iters 1 \
    > "$out/modes-ncu-$i.txt" 2>&1
  echo "ncu process $i rc=$? $(grep -E "^ +(Duration|L2 Hit Rate|DRAM Throughput|L2 Cache Throughput|Memory Throughput) " \
    "$out/modes-ncu-$i.txt" | awk '{$1=$1; print}' | tr '\n' ';')"
done
