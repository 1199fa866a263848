#!/usr/bin/env bash
# One device call for a device-code trial: the Hopper GPU tests gate the
# timing. Runs .dev/sonicmoe_tests (hopper, with and without clusters) and
# a memcheck of the two layer tests that reach the most tile paths, each
# under a short timeout, and only when all of them pass, the same-call A/B
# of tools/device_ab.sh with the given arguments. A kernel that hangs (a
# barrier waited on forever, a setmaxnreg that cannot be granted) then
# costs one timeout, not the whole call (docs/NOTES.md: a 600-second call
# lost to a hang inside the first test). Results in $OUT/trial.txt (tests)
# and $OUT/ab.txt (timings).
# Usage: tools/device_trial.sh BASE NEW ROUNDS BENCH-ARGS...
#   tools/device_trial.sh .dev/bench-base .dev/sonicmoe-bench 2 --kernels \
#     --config 7b-n256,120b-n2048 --only up_proj,forward_sequence
set -u
out=${OUT:-/tmp}
log=$out/trial.txt
tests=.dev/sonicmoe_tests
limit=${TRIAL_TIMEOUT:-90}
bash tools/dev_unpack.sh
gate() {  # name, then the command; fails the trial unless it passes
  local name=$1
  shift
  timeout -k 10 "$limit" "$@" > "$out/trial-run.log" 2>&1
  local rc=$?
  local summary
  summary=$(grep -E '^\[  (FAILED|PASSED) |ERROR SUMMARY' "$out/trial-run.log" | sort -u | head -20)
  echo "== $name: rc=$rc" | tee -a "$log"
  echo "$summary" | tee -a "$log"
  [ "$rc" -eq 0 ] && ! grep -qE '^\[  FAILED  \]' <<< "$summary" || {
    [ "$rc" -eq 124 ] && echo "   (timed out after ${limit}s: a hang?)" | tee -a "$log"
    tail -5 "$out/trial-run.log" >> "$log"
    return 1
  }
}
export SONICMOE_ENGINE=hopper
gate "hopper, clusters" "$tests" --gtest_filter='Gpu*' || exit 1
gate "hopper, solo" env SONICMOE_HOPPER_CLUSTER=1 "$tests" --gtest_filter='Gpu*' || exit 1
gate "memcheck" compute-sanitizer --tool memcheck --error-exitcode 1 "$tests" \
  --gtest_filter='GpuLayer.EdgeShapes:GpuLayer.ManyTilesPerCta' || exit 1
rm -f "$out/trial-run.log"
exec "$(dirname "$0")/device_ab.sh" "$@"
