#!/usr/bin/env bash
# Device run for the drain trials (docs/trials/, docs/NOTES.md "Deferring
# the up-projection's A"). Uses whichever of these .dev/ holds, gzipped or
# not: bench-V and trace-V (plain, and built with -DSONICMOE_TILE_TRACE=ON)
# for V in base (main), spread (spread-drains.patch), new (deferred-a.patch)
# and pf (deferred-a.patch with -DCMAKE_CUDA_FLAGS=-DSONICMOE_TRIAL_PREFETCH=6),
# and tests-V (that build's sonicmoe_tests). Prints each test binary's GPU
# summary on the Hopper engine, each trace build's tile trace of up_proj
# (7b-n256, 120b-n2048), then a same-call A/B of the benches (up_proj and
# the forward sequence). Eight gzipped binaries pass the 64 MiB carry limit
# (split them over two calls); xz-compressed, nine fit one call. Run from
# the repository root: bash docs/trials/device_drains.sh
set -u
out=${OUT:-/tmp}; log=$out/deferred-a.txt
# Binaries may come gzipped or xz-compressed (xz -6 halves gzip -1, so all
# nine fit one 64 MiB carry).
bash tools/dev_unpack.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$log"
F='Gpu*:LayerOptionalGrads.Gpu*'
for v in base spread new pf; do
  [ -x .dev/tests-$v ] || continue
  SONICMOE_ENGINE=hopper timeout 120 .dev/tests-$v --gtest_filter="$F" > "$out/t-$v.log" 2>&1
  echo "tests-$v (hopper) rc=$?" | tee -a "$log"
  grep -E "^\[  FAILED  \]|^\[  PASSED  \]" "$out/t-$v.log" | sort -u | head -20 | tee -a "$log"
done
for v in base spread new pf; do
  [ -x .dev/trace-$v ] || continue
  for c in 7b-n256 120b-n2048; do
    rm -f /tmp/tr.txt
    SONICMOE_TILE_TRACE=/tmp/tr.txt SONICMOE_ENGINE=hopper timeout 60 .dev/trace-$v --kernels \
      --config $c --only up_proj --warmup 2 --iters 1 --heat-ms 0 --check none > /dev/null 2>&1
    echo "== trace $v $c rc=$?" | tee -a "$log"
    python3 tools/tile_trace.py /tmp/tr.txt 2>&1 | tail -4 | tee -a "$log"
  done
done
benches=()
for v in base spread new pf; do [ -x .dev/bench-$v ] && benches+=("$v=.dev/bench-$v"); done
if [ ${#benches[@]} -gt 1 ]; then
  ABN_LOG=deferred-a-abn.txt timeout 400 tools/device_abn.sh 4 "${benches[@]}" -- --kernels \
    --config 7b-n256,30b-n1024,120b-n2048 --only up_proj,forward_sequence --check none \
    --heat-ms 2000 > /dev/null 2>&1
  echo "abn rc=$?" | tee -a "$log"
  tail -7 "$out/deferred-a-abn.txt" | tee -a "$log"
fi
