#!/usr/bin/env bash
# The Hopper objects' compiler launcher (CUDA_COMPILER_LAUNCHER in
# src/CMakeLists.txt): runs the compile command it is given and fails it
# when ptxas reports a "Potential Performance Loss", such as wgmmas it
# serialized (C7510-C7520). ptxas prints those as info lines, which
# -Werror=all-warnings does not catch, and one of them serializes every
# wgmma of the kernel it names (docs/NOTES.md). The compiler's own output
# passes through unchanged.
# Usage: tools/ptxas_guard.sh COMMAND [ARG...]
set -u
log=$(mktemp)
"$@" 2> "$log"
rc=$?
cat "$log" >&2
if grep -q "Potential Performance Loss" "$log"; then
  echo "error: ptxas reported a performance loss above (serialized wgmma?): see" \
       "'A wgmma that may not run' in docs/NOTES.md" >&2
  [ "$rc" -eq 0 ] && rc=1
fi
rm -f "$log"
exit "$rc"
