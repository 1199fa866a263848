#!/usr/bin/env bash
# Same-call A/B of two bench binaries: runs them alternately, ROUNDS times
# each, with the same bench arguments, then prints each table row's values
# per binary side by side (tools/device_abn.sh with two builds labelled
# base and new). Leases differ by more than most changes do
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
ABN_LOG=ab.txt exec "$(dirname "$0")/device_abn.sh" "$rounds" "base=$base" "new=$new" -- "$@"
