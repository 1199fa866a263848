#!/usr/bin/env bash
# Device run for the fused aggregation (docs/trials/fused-aggregation.patch;
# docs/NOTES.md, "The aggregation can hide under down_proj and dX~"), most
# important first, so that a call cut short keeps what matters:
#   1. the GPU tests with the aggregation forced on every shape (2-CTA
#      pairs), then solo (SONICMOE_HOPPER_CLUSTER=1);
#   2. main vs the patch (fused where n >= 1024) on 30b-n1024 and
#      120b-n2048, heated, and 7b-n256 with it forced on;
#   3. memcheck of the patch's own test; the pipe micro-benchmark.
# Takes from .dev/ (plain or xz-compressed): bench-base (main's bench),
# bench-agg and tests-agg (the patched build's bench and sonicmoe_tests),
# and pipe_bench (docs/trials/pipe_bench.cu), if there. Run from the
# repository root: bash docs/trials/device_agg.sh (about 7 minutes).
set -u
out=${OUT:-/tmp}
log=$out/agg.txt
(cd .dev && for f in *.xz; do [ -e "$f" ] || continue
   xz -d -f "$f" 2> /dev/null || python3 -c 'import lzma,sys; open(sys.argv[1][:-3],"wb").write(lzma.open(sys.argv[1]).read())' "$f"
 done; chmod +x ./*)
printf '#!/usr/bin/env bash\nSONICMOE_FUSED_AGGREGATION=1 exec .dev/bench-agg "$@"\n' > .dev/agg-forced.sh
chmod +x .dev/agg-forced.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$log"
F='Gpu*:LayerOptionalGrads.Gpu*'
SONICMOE_ENGINE=hopper SONICMOE_FUSED_AGGREGATION=1 timeout 150 .dev/tests-agg \
  --gtest_filter="$F" > "$out/t-forced.log" 2>&1
echo "tests, forced, pairs: rc=$?" | tee -a "$log"
grep -E "^\[  FAILED  \]|^\[  PASSED  \]" "$out/t-forced.log" | sort -u | head -20 | tee -a "$log"
SONICMOE_ENGINE=hopper SONICMOE_HOPPER_CLUSTER=1 SONICMOE_FUSED_AGGREGATION=1 timeout 100 \
  .dev/tests-agg --gtest_filter='GpuLayer.*' > "$out/t-solo.log" 2>&1
echo "tests, forced, solo: rc=$?" | tee -a "$log"
grep -E "^\[  FAILED  \]|^\[  PASSED  \]" "$out/t-solo.log" | sort -u | head -20 | tee -a "$log"
ABN_LOG=abn.txt timeout 200 bash tools/device_abn.sh 2 base=.dev/bench-base agg=.dev/bench-agg \
  -- --config 30b-n1024,120b-n2048 --check none | tail -4
ABN_LOG=abn7b.txt timeout 60 bash tools/device_abn.sh 1 base=.dev/bench-base forced=.dev/agg-forced.sh \
  -- --config 7b-n256 --check none | tail -3
SONICMOE_ENGINE=hopper timeout 80 compute-sanitizer --tool memcheck .dev/tests-agg \
  --gtest_filter='GpuLayer.FusedAggregation*' > "$out/memcheck.log" 2>&1
echo "memcheck: rc=$?" | tee -a "$log"
tail -3 "$out/memcheck.log" | tee -a "$log"
[ -x .dev/pipe_bench ] && timeout 20 .dev/pipe_bench > "$out/pipe.txt" 2>&1
