#!/usr/bin/env bash
# The device run of fused-aggregation.patch and alu-bf16-packs.patch, most
# important first, so that a call cut short keeps what matters: the fused
# aggregation's GPU tests and A/B, the ALU-rounded H packs' up_proj A/B,
# the pipe micro-benchmark, then the rest (solo tests, memcheck).
# Binaries in .dev/ (plain or .xz): bench-base, bench-agg, tests-agg,
# bench-int2, bench-int4, tests-int2, pipe_bench.
set -u
out=${OUT:-/tmp}
log=$out/both.txt
bash tools/dev_unpack.sh
printf '#!/usr/bin/env bash\nSONICMOE_FUSED_AGGREGATION=1 exec .dev/bench-agg "$@"\n' > .dev/agg-forced.sh
chmod +x .dev/agg-forced.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$log"
F='Gpu*:LayerOptionalGrads.Gpu*'
SONICMOE_ENGINE=hopper SONICMOE_FUSED_AGGREGATION=1 timeout 120 .dev/tests-agg \
  --gtest_filter="$F" > "$out/t-forced.log" 2>&1
echo "agg tests, forced, pairs: rc=$?" | tee -a "$log"
grep -E "^\[  FAILED  \]|^\[  PASSED  \]" "$out/t-forced.log" | sort -u | head -20 | tee -a "$log"
ABN_LOG=abn.txt timeout 150 bash tools/device_abn.sh 2 base=.dev/bench-base agg=.dev/bench-agg \
  -- --config 30b-n1024,120b-n2048 --check none | tail -4
ABN_LOG=abn-int.txt timeout 100 bash tools/device_abn.sh 1 base=.dev/bench-base int2=.dev/bench-int2 int4=.dev/bench-int4 \
  -- --kernels --config 7b-n256 --only up_proj,forward_sequence | tail -4
[ -x .dev/pipe_bench ] && timeout 20 .dev/pipe_bench > "$out/pipe.txt" 2>&1
SONICMOE_ENGINE=hopper SONICMOE_HOPPER_CLUSTER=1 SONICMOE_FUSED_AGGREGATION=1 timeout 80 \
  .dev/tests-agg --gtest_filter='GpuLayer.*' > "$out/t-solo.log" 2>&1
echo "agg tests, forced, solo: rc=$?" | tee -a "$log"
grep -E "^\[  FAILED  \]|^\[  PASSED  \]" "$out/t-solo.log" | sort -u | head -20 | tee -a "$log"
SONICMOE_ENGINE=hopper timeout 100 .dev/tests-int2 --gtest_filter="$F" > /tmp/t-int2.log 2>&1
echo "int2 tests: rc=$?" | tee -a "$log"; tail -3 /tmp/t-int2.log | tee -a "$log"
ABN_LOG=abn7b.txt timeout 60 bash tools/device_abn.sh 1 base=.dev/bench-base forced=.dev/agg-forced.sh \
  -- --config 7b-n256 --check none | tail -3
SONICMOE_ENGINE=hopper timeout 80 compute-sanitizer --tool memcheck .dev/tests-agg \
  --gtest_filter='GpuLayer.FusedAggregation*' > "$out/memcheck.log" 2>&1
echo "memcheck: rc=$?" | tee -a "$log"
tail -3 "$out/memcheck.log" | tee -a "$log"
