#!/usr/bin/env bash
# compute-sanitizer (memcheck, racecheck, synccheck) on small GPU layer and
# routing tests, for each engine. Logs go to $OUT/sanitize-<tool>-<engine>.log.
set -u
out=${OUT:-/tmp}
filter=${1:-'GpuLayer.EdgeShapes:GpuLayer.GeneralRouting*:GpuRouting*'}
for engine in portable hopper; do
  for tool in memcheck racecheck synccheck; do
    SONICMOE_ENGINE=$engine timeout 200 compute-sanitizer --tool $tool --error-exitcode 9 \
      .dev/sonicmoe_tests --gtest_filter="$filter" > "$out/sanitize-$tool-$engine.log" 2>&1
    echo "$engine $tool rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED' "$out/sanitize-$tool-$engine.log" | sort -u | tr '\n' ' ')"
  done
done
