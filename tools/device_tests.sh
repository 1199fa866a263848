#!/usr/bin/env bash
# GPU test run for the device machine: the GPU suites on each engine. Full
# logs go to $OUT/tests-<engine>.log; the tail shows failures and summaries.
# Binaries come prebuilt in .dev/ (TESTS_BIN picks another test binary).
# Usage: tools/device_tests.sh [gtest filter]
set -u
filter=${1:-'Gpu*'}
bin=${TESTS_BIN:-.dev/sonicmoe_tests}
out=${OUT:-/tmp}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for engine in portable hopper; do
  SONICMOE_ENGINE=$engine timeout 300 $bin --gtest_filter="$filter" > "$out/tests-$engine.log" 2>&1
  echo "== engine $engine: rc=$?"
  grep -E "^\[  FAILED  \]|^\[  PASSED  \]|tests ran" "$out/tests-$engine.log" | sort -u | head -40
done
# The Hopper engine without 2-CTA clusters (the opt-out).
SONICMOE_ENGINE=hopper SONICMOE_HOPPER_CLUSTER=1 timeout 300 $bin \
  --gtest_filter="$filter" > "$out/tests-hopper-solo.log" 2>&1
echo "== engine hopper, no clusters: rc=$?"
grep -E "^\[  FAILED  \]|^\[  PASSED  \]|tests ran" "$out/tests-hopper-solo.log" | sort -u | head -40
# The Hopper engine's opt-in ping-pong schedule (grouped-M products).
SONICMOE_ENGINE=hopper SONICMOE_HOPPER_SCHEDULE=pingpong timeout 300 $bin \
  --gtest_filter="$filter" > "$out/tests-hopper-pingpong.log" 2>&1
echo "== engine hopper, ping-pong: rc=$?"
grep -E "^\[  FAILED  \]|^\[  PASSED  \]|tests ran" "$out/tests-hopper-pingpong.log" | sort -u | head -40
# The portable engine at the depths of devices with less shared memory (the
# runtime-depth kernels: 3 stages as on an A100, and the 2-stage minimum).
for depth in 3 2; do
  SONICMOE_ENGINE=portable SONICMOE_PORTABLE_STAGES=$depth timeout 300 $bin \
    --gtest_filter="$filter" > "$out/tests-portable-stages$depth.log" 2>&1
  echo "== engine portable, at most $depth stages: rc=$?"
  grep -E "^\[  FAILED  \]|^\[  PASSED  \]|tests ran" "$out/tests-portable-stages$depth.log" | sort -u | head -40
done
