#!/usr/bin/env bash
# The host code under AddressSanitizer and UndefinedBehaviorSanitizer: the
# argument validation, the CPU reference backend, the C ABI and the routing
# reference run every CPU test (CTest, then the Python tests through the C
# ABI) with the sanitizers on, so that an out-of-bounds read, an overflowing
# int or a use after free on a path the tests take fails CI instead of
# passing silently. GPU tests skip themselves as usual.
#
# Usage: tools/host_sanitize.sh [build dir, default build-asan]
# Device code is compiled for sm_80 only (the build needs it, nothing here
# runs it): ~6 min on 2 cores, tests ~1 min.
set -euo pipefail
cd "$(dirname "$0")/.."
B=$(realpath -m "${1:-build-asan}")
# One flag per sanitizer: nvcc's -Xcompiler splits its list at commas.
san="-fsanitize=address -fsanitize=undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
cmake -G Ninja -S . -B "$B" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSONICMOE_PORTABLE_ARCHS=80-real -DSONICMOE_HOPPER_ARCHS= \
  "-DCMAKE_CXX_FLAGS=$san" "-DCMAKE_CUDA_FLAGS=-Xcompiler=${san// /,}" \
  "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=address,undefined" \
  "-DCMAKE_SHARED_LINKER_FLAGS=-fsanitize=address,undefined" > /dev/null
cmake --build "$B"

# protect_shadow_gap=0: the CUDA driver reserves addresses inside ASan's
# shadow gap, the usual setting for CUDA programs under ASan
# (google/sanitizers#629; not exercised here: no GPU, nothing is mapped).
export ASAN_OPTIONS=protect_shadow_gap=0:halt_on_error=1:detect_leaks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
ctest --test-dir "$B" --output-on-failure -j2 > "$B/ctest.log" || { cat "$B/ctest.log"; exit 1; }
grep -E 'tests passed|Total Test time' "$B/ctest.log"

# The Python tests load the sanitized library into an interpreter built
# without ASan, so the runtime is preloaded; torch's own allocations are
# not ours to account for (no leak check there).
cxx=$(sed -n 's/^CMAKE_CXX_COMPILER:[A-Z]*=//p' "$B/CMakeCache.txt")
preload="$("$cxx" -print-file-name=libasan.so) $("$cxx" -print-file-name=libubsan.so)"
ASAN_OPTIONS=protect_shadow_gap=0:halt_on_error=1:detect_leaks=0:verify_asan_link_order=0 \
  SONICMOE_CI_PRELOAD="$preload" SONICMOE_LIBRARY="$B/src/libsonicmoe.so" bash python/ci.sh
