#!/usr/bin/env bash
# Issue 6 on the device machine: the routing GPU tests (bitonic top-K, token
# rounding, router, routing, layer on general routing), the layer with
# round-nearest vs top-K on 7b-n256 and on T=16384 H=4096 I=1024 E=256 K=4
# (hopper engine, sampled checks), and the router alone against torch.topk +
# softmax. Binaries and libsonicmoe.so come prebuilt in .dev/. JSON lines and
# logs in $OUT, tables on stdout.
set -u
out=${OUT:-/tmp}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
SONICMOE_ENGINE=hopper timeout 200 .dev/sonicmoe_tests \
  --gtest_filter='GpuBitonic*:GpuRouter*:GpuRouting*:GpuTokenRounding*:GpuLayer.GeneralRouting*' \
  > "$out/tests-routing.log" 2>&1
echo "tests rc=$?"; grep -E "^\[  FAILED  \]|^\[  PASSED  \]|tests ran" "$out/tests-routing.log" | sort -u
n=0
for shape in "--config 7b-n256" "--T 16384 --H 4096 --I 1024 --E 256 --K 4"; do
  for routing in topk round-nearest; do
    n=$((n + 1))
    echo "== $shape --routing $routing"
    # shellcheck disable=SC2086
    SONICMOE_ENGINE=hopper timeout 150 .dev/sonicmoe-bench $shape --routing $routing \
      --check sampled >> "$out/routing.jsonl" 2> "$out/routing-$n.err"
    echo "rc=$?"; grep -E "ok |FAIL" "$out/routing-$n.err" | cut -c1-60 | tr '\n' ';'; echo
    sed -n '/^config/,$p' "$out/routing-$n.err"
  done
done
export SONICMOE_LIBRARY=$PWD/.dev/libsonicmoe.so PYTHONPATH=$PWD/python PYTHONUNBUFFERED=1
timeout 200 python3 -m sonicmoe.bench --topk > "$out/topk.jsonl" 2> "$out/topk.err"
echo "topk bench rc=$?"; tail -28 "$out/topk.err"
