#!/usr/bin/env bash
# Same-call comparison of any number of bench binaries (tools/device_ab.sh
# takes two): runs them in turn, ROUNDS times, with the same bench
# arguments, then prints one line per table row (config and kernel, or
# config for layer rows) with every binary's values, run by run. Useful
# when a trial has timing-only variants (a feature off, a hint on) that
# must be read against the same base in one lease: leases differ by more
# than most changes do (docs/NOTES.md). Everything goes to one file,
# $OUT/abn.txt ($ABN_LOG if set), since $OUT returns at most 8 files:
# every run's table rows (TF/s, dense ratios), then the summary.
# Usage: tools/device_abn.sh ROUNDS [LABEL=]BIN... -- BENCH-ARGS...
#   tools/device_abn.sh 3 base=.dev/bench-base a=.dev/bench-a .dev/bench-b -- \
#     --kernels --config 7b-n256,120b-n2048 --only up_proj,forward_sequence
# A binary without a label is labelled by its path. A binary given as NAME
# may arrive gzipped as NAME.gz: it is unpacked first. SONICMOE_ENGINE
# defaults to hopper. Layer rows show fwd/bwd ms.
set -u
rounds=$1
shift
labels=() bins=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  case $1 in
    *=*) labels+=("${1%%=*}") bins+=("${1#*=}") ;;
    *) labels+=("$1") bins+=("$1") ;;
  esac
  shift
done
[ $# -gt 0 ] && shift
out=${OUT:-/tmp}
log=$out/${ABN_LOG:-abn.txt}
work=$(mktemp -d)
child=
# timeout(1) passes the TERM on to the bench it runs.
trap '[ -n "$child" ] && kill "$child" 2> /dev/null; exit 143' TERM INT
export SONICMOE_ENGINE=${SONICMOE_ENGINE:-hopper}
for b in "${bins[@]}"; do [ -f "$b.gz" ] && [ ! -f "$b" ] && gunzip "$b.gz"; done
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$log"
for i in $(seq 1 "$rounds"); do
  for j in "${!bins[@]}"; do
    start=$(date +%s)
    # In the background and waited for, so that the trap above runs when a
    # caller's timeout stops this script: a bench run in the foreground
    # outlived it and shared the GPU with the caller's next step, whose
    # layer timings then read 3x slow (docs/NOTES.md).
    timeout 300 "${bins[$j]}" "$@" > /dev/null 2> "$work/run.err" &
    child=$!
    wait $child
    echo "${labels[$j]} round $i: rc=$? $(( $(date +%s) - start ))s" | tee -a "$log"
    # Table rows: a config name, then either a kernel name or numbers.
    # Logged run by run, so that a call cut short keeps the rounds it ran.
    grep -E '^[0-9a-z.]+-[0-9a-z.]+ +[0-9a-z_.]+ ' "$work/run.err" | sed "s/^/$j /" |
      tee -a "$work/rows" | sed "s/^$j /${labels[$j]} /" >> "$log"
  done
done

# Per row: for each binary, its runs' first value (ms), or fwd/bwd ms.
awk -v n="${#bins[@]}" -v names="${labels[*]}" '
  BEGIN { split(names, l, " ") }
  { if ($3 ~ /^[0-9.]+$/) { key = $2; v = $3 "/" $4 } else { key = $2 " " $3; v = $4 }
    if (!(key in seen)) { seen[key] = 1; order[++nk] = key }
    vals[key, $1] = vals[key, $1] " " v }
  END { for (k = 1; k <= nk; ++k) {
          line = sprintf("%-32s", order[k])
          for (b = 0; b < n; ++b) line = line sprintf(" | %s%s", l[b + 1], vals[order[k], b])
          print line } }' "$work/rows" | tee -a "$log"
rm -rf "$work"
