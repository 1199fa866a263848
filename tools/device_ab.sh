#!/usr/bin/env bash
# Same-call A/B of two bench binaries: runs them alternately, ROUNDS times
# each, with the same bench arguments, then prints each table row's values
# per binary side by side. Leases differ by more than most changes do
# (docs/NOTES.md: a build's layer figures moved 1-3% from one H200 lease to
# the next), so a comparison means something only within one call, and
# only against the parent built as it was (a never-taken branch in the
# consumers' k-loop moved dW by 4-5%: build the base in a git worktree).
# Everything goes to one file, $OUT/ab.txt: $OUT returns at most 8 files.
# Usage: tools/device_ab.sh BASE NEW ROUNDS BENCH-ARGS...
#   tools/device_ab.sh .dev/bench-base .dev/sonicmoe-bench 4 --kernels --config 7b-n256,120b-n2048
#   tools/device_ab.sh .dev/bench-base .dev/sonicmoe-bench 2 --config 7b-n256,30b-n1024 --check none
# A binary given as NAME may arrive gzipped as NAME.gz (a third of the size
# to carry): it is unpacked first. SONICMOE_ENGINE defaults to hopper.
set -u
base=$1 new=$2 rounds=$3
shift 3
out=${OUT:-/tmp}
log=$out/ab.txt
export SONICMOE_ENGINE=${SONICMOE_ENGINE:-hopper}
for b in "$base" "$new"; do [ -f "$b.gz" ] && [ ! -f "$b" ] && gunzip "$b.gz"; done
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$log"
rows=$out/ab-rows.txt
: > "$rows"
for i in $(seq 1 "$rounds"); do
  for pair in "base:$base" "new:$new"; do
    tag=${pair%%:*} bin=${pair#*:}
    start=$(date +%s)
    timeout 300 "$bin" "$@" > /dev/null 2> "$out/ab-run.err"
    echo "$tag$i rc=$? $(( $(date +%s) - start ))s" | tee -a "$log"
    # Table rows: a config name, then either a kernel name or numbers.
    grep -E '^[0-9a-z.]+-[0-9a-z.]+ +[0-9a-z_.]+ ' "$out/ab-run.err" | sed "s/^/$tag$i /" >> "$rows"
  done
done
cat "$rows" >> "$log"
# Per row (config [kernel]): the first value (ms) of each run, base runs
# then new runs; layer rows show fwd/bwd ms.
awk '
  { tag = $1; sub(/[0-9]+$/, "", tag)
    if ($3 ~ /^[0-9.]+$/) { key = $2; v = $3 "/" $4 } else { key = $2 " " $3; v = $4 }
    if (!(key in seen)) { seen[key] = 1; order[++n] = key }
    vals[key, tag] = vals[key, tag] " " v }
  END { for (i = 1; i <= n; ++i) { k = order[i]
          printf "%-32s base%s | new%s\n", k, vals[k, "base"], vals[k, "new"] } }
' "$rows" | tee -a "$log"
rm -f "$out/ab-run.err" "$rows"
