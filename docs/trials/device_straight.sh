#!/usr/bin/env bash
# The device run of straight-epilogue.patch, most important first: the
# up_proj / forward_sequence A/B against main, the trial's GPU tests, the
# layer A/B at 7b-n256 and 120b-n2048, then the tests in the other
# schedules. Binaries in .dev/ (plain or .xz): bench-base, tests-base,
# bench-straight, tests-straight.
set -u
out=${OUT:-/tmp}
log=$out/straight.txt
bash tools/dev_unpack.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$log"
ABN_LOG=abn-k.txt timeout 150 bash tools/device_abn.sh 2 base=.dev/bench-base straight=.dev/bench-straight \
  -- --kernels --config 7b-n256,120b-n2048 --only up_proj,forward_sequence | tail -6
F='Gpu*:LayerOptionalGrads.Gpu*'
SONICMOE_ENGINE=hopper timeout 100 .dev/tests-straight --gtest_filter="$F" > "$out/t-straight.log" 2>&1
echo "straight tests, pairs: rc=$?" | tee -a "$log"; tail -3 "$out/t-straight.log" | tee -a "$log"
ABN_LOG=abn-l.txt timeout 200 bash tools/device_abn.sh 2 base=.dev/bench-base straight=.dev/bench-straight \
  -- --config 7b-n256,120b-n2048 --check none | tail -4
for mode in SONICMOE_HOPPER_SCHEDULE=pingpong SONICMOE_HOPPER_CLUSTER=1; do
  env SONICMOE_ENGINE=hopper "$mode" timeout 80 .dev/tests-straight --gtest_filter="$F" > /tmp/t-mode.log 2>&1
  echo "straight tests, $mode: rc=$?" | tee -a "$log"; tail -2 /tmp/t-mode.log | tee -a "$log"
done
