#!/usr/bin/env bash
# The figures of the closing notes: every canonical config on each engine
# (sampled checks), and the paper's four headline configs with near-uniform
# expert loads. JSON lines to $OUT/final-*.jsonl, tables to stdout.
set -u
out=${OUT:-/tmp}
for engine in hopper portable; do
  echo "== all configs, engine $engine"
  SONICMOE_ENGINE=$engine timeout 280 .dev/sonicmoe-bench --config all --check sampled \
    > "$out/final-$engine.jsonl" 2> "$out/final-$engine.err"
  echo "rc=$?"; sed -n '/^config/,$p' "$out/final-$engine.err"
done
echo "== uniform loads (--expert-bias-std 0), engine hopper"
SONICMOE_ENGINE=hopper timeout 120 .dev/sonicmoe-bench --config 7b-n256,7b-n1024,30b-n1024,120b-n2048 \
  --check none --expert-bias-std 0 > "$out/final-uniform.jsonl" 2> "$out/final-uniform.err"
echo "rc=$?"; sed -n '/^config/,$p' "$out/final-uniform.err"
echo "== pytest on the GPU"
SONICMOE_LIBRARY=$PWD/.dev/libsonicmoe.so PYTHONPATH=$PWD/python timeout 250 \
  python3 -m pytest -q -p no:cacheprovider python/tests > "$out/pytest.log" 2>&1
echo "rc=$?"; tail -2 "$out/pytest.log"
