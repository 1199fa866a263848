#!/usr/bin/env bash
# Benchmarks on the device machine for each engine: the layer on the given
# configs and the per-kernel mode on the first one. JSON lines go to
# $OUT/bench-<engine>.jsonl, tables to stdout. Binaries come prebuilt in .dev/.
# Usage: tools/device_bench.sh CONFIGS [ENGINES] [extra bench flags...]
set -u
configs=${1:-7b-n256}
engines=${2:-"portable hopper"}
shift 2 2>/dev/null || shift $#
out=${OUT:-/tmp}
for engine in $engines; do
  echo "== engine $engine"
  SONICMOE_ENGINE=$engine timeout 400 .dev/sonicmoe-bench --config "$configs" --check sampled "$@" \
    > "$out/bench-$engine.jsonl" 2> "$out/bench-$engine.err"
  echo "rc=$?"; grep -vE "^\[" "$out/bench-$engine.err" | tail -22
  SONICMOE_ENGINE=$engine timeout 120 .dev/sonicmoe-bench --kernels --config "${configs%%,*}" "$@" \
    >> "$out/bench-$engine.jsonl" 2> "$out/kernels-$engine.err"
  echo "rc=$?"; grep -vE "^\[" "$out/kernels-$engine.err" | tail -16
done
