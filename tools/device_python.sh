#!/usr/bin/env bash
# The Python package on the device machine: pytest on the GPU, then the
# package benchmark (library vs pure torch vs torch grouped_mm) on every
# canonical config. Needs .dev/libsonicmoe.so (carried). Outputs in $OUT.
set -u
out=${OUT:-/tmp}
export SONICMOE_LIBRARY=$PWD/.dev/libsonicmoe.so PYTHONPATH=$PWD/python PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 300 python3 -m pytest -q -p no:cacheprovider python/tests > "$out/pytest.log" 2>&1
echo "pytest rc=$?"; tail -3 "$out/pytest.log"
timeout 250 python3 -m sonicmoe.bench --configs all --plot "$out/bench.png" \
  > "$out/pybench.jsonl" 2> "$out/pybench.err"
echo "bench rc=$?"; grep -vE "^\s*[0-9]+%|it/s|\r" "$out/pybench.err" | tail -30
