#!/usr/bin/env bash
# The layer figures as a training job sees them: each canonical config in a
# process of its own (a config timed after others in the same process reads
# lower, docs/NOTES.md), heated (the bench's default 2000 ms), ROUNDS rounds
# (dsv3-685b once); then the 7b-n256 up_proj and dH kernels heated and
# unheated (BENCHMARK.md's protocol), twice. One line per process in
# $OUT/percfg.txt. BIN may arrive as BIN.xz or BIN.gz. HEAT_MS (2000) sets the layer
# processes' heat: 0 times them as BENCHMARK.md's protocol reads.
# Usage: [HEAT_MS=0] tools/device_percfg.sh [BIN (.dev/sonicmoe-bench)] [ROUNDS (3)]
set -u
bin=${1:-.dev/sonicmoe-bench}
rounds=${2:-3}
out=${OUT:-/tmp}; log=$out/percfg.txt
[ -f "$bin" ] || bash tools/dev_unpack.sh "$(dirname "$bin")"
chmod +x "$bin"
export SONICMOE_ENGINE=${SONICMOE_ENGINE:-hopper}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$log"
echo "layer heat: ${HEAT_MS:-2000} ms" | tee -a "$log"
configs=()
for i in $(seq 1 "$rounds"); do configs+=(7b-n256 30b-n1024 120b-n2048); done
for c in "${configs[@]}" dsv3-685b; do
  timeout 120 "$bin" --config "$c" --check none --heat-ms "${HEAT_MS:-2000}" > /dev/null 2> /tmp/percfg-err.txt
  echo "rc=$? $(grep -E "^$c +[0-9]" /tmp/percfg-err.txt)" | tee -a "$log"
done
for h in 2000 0 2000 0; do
  timeout 60 "$bin" --kernels --config 7b-n256 --only up_proj,dh --check none --heat-ms $h 2>&1 \
    > /dev/null | grep -E "^7b-n256 +(up_proj|dh) " | sed "s/^/heat $h: /" | tee -a "$log"
done
