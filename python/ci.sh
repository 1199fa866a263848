#!/usr/bin/env bash
# CI for the Python front end on a CPU machine with PyPI access: installs
# what the tests need into a virtual environment, builds libsonicmoe.so if
# needed, runs python/tests. Exit 0 when the tests pass (skips carry their
# reasons); pytest's "no tests collected" (5) is a failure.
#
# PyTorch comes from PyPI. The Linux x86_64 wheel there is the CUDA build:
# `pip install torch` pulls ~3.0 GB of NVIDIA wheels (measured: 87 s, 5.3 GB
# installed). A machine that builds this project has the CUDA toolkit, whose
# runtime libraries (cudart, cuBLAS, cuFFT, cuSPARSE, NVRTC, CUPTI, and here
# cuDNN) satisfy libtorch's loader, so the default "slim" install takes torch
# with --no-deps plus only the native wheels the toolkit lacks (NCCL of the
# version torch was built with, cuSPARSELt, NVSHMEM, cuFile), pinned from
# torch's own metadata: ~1.1 GB, ~30 s, 1.8 GB installed. If torch then fails
# to import, the full install runs instead.
#
# Environment:
#   SONICMOE_CI_VENV    the virtual environment (reused across runs)
#                       [~/.cache/sonicmoe/ci-venv-pyXY]
#   SONICMOE_CI_TORCH   the torch requirement [torch]
#   SONICMOE_CI_FULL=1  skip the slim attempt
#   SONICMOE_LIBRARY    a built libsonicmoe.so (else build-py/ is built)
#   PYTHON              the interpreter that makes the venv [python3]
#   PYTEST_ARGS         extra pytest arguments
#   SONICMOE_CI_PRELOAD LD_PRELOAD for the pytest process only
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
T0=$(date +%s)
log() { echo "[ci.sh +$(( $(date +%s) - T0 ))s] $*" >&2; }
die() { log "FAILED: $*"; exit 1; }

PYVER=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")') \
  || die "no $PYTHON"
VENV=${SONICMOE_CI_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/sonicmoe/ci-venv-py$PYVER}
TORCH_REQ=${SONICMOE_CI_TORCH:-torch}

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "$PYTHON" -m venv "$VENV" || die "python -m venv"
fi
VPY="$VENV/bin/python"
pip() { "$VPY" -m pip --disable-pip-version-check -q "$@"; }
# pip's resolver warns that torch's other requirements are missing after a
# --no-deps install; that is intended: show pip's output only on failure.
pip_quiet() {
  local out
  out=$(pip "$@" 2>&1) && return 0
  echo "$out" >&2
  return 1
}

torch_ok() {
  "$VPY" - <<'EOF' 2>/dev/null
import torch
major, minor = (int(v) for v in torch.__version__.split(".")[:2])
assert (major, minor) >= (2, 4), torch.__version__
torch.ones(2) @ torch.ones(2)
EOF
}

if torch_ok; then
  log "reusing torch $("$VPY" -c 'import torch; print(torch.__version__)') in $VENV"
else
  if [ "${SONICMOE_CI_FULL:-0}" != 1 ]; then
    log "slim torch install: $TORCH_REQ --no-deps + its pure-Python deps + missing native libs"
    pip_quiet install --no-deps "$TORCH_REQ" || die "pip install --no-deps $TORCH_REQ"
    # torch's requirements, split into pure-Python ones (installed with their
    # deps) and the native wheels the CUDA toolkit does not provide; written
    # as requirement files (old metadata spells versions "name (>=x)").
    REQDIR=$(mktemp -d)
    "$VPY" - "$REQDIR" <<'EOF' || die "reading torch's requirements"
import re, sys
from importlib.metadata import requires
pure, native = [], []
for r in requires("torch") or []:
    spec, _, marker = r.partition(";")
    marker = marker.strip()
    if "extra ==" in marker:
        continue
    spec = spec.strip()
    name = re.split(r"[\[(<>=!~ ]", spec, maxsplit=1)[0].lower()
    line = f"{spec} ; {marker}" if marker else spec
    if name.startswith(("nvidia-nccl", "nvidia-cusparselt", "nvidia-nvshmem")):
        native.append(line)
    elif name == "cuda-toolkit":  # keep the pin, take only cuFile
        native.append(re.sub(r"\[[^\]]*\]", "[cufile]", line, count=1))
    elif not name.startswith(("nvidia-", "cuda-", "triton")):
        pure.append(line)
with open(f"{sys.argv[1]}/pure.txt", "w") as f:
    f.write("\n".join(pure + ["pytest", "numpy"]) + "\n")
with open(f"{sys.argv[1]}/native.txt", "w") as f:
    f.write("".join(n + "\n" for n in native))
EOF
    pip_quiet install -r "$REQDIR/pure.txt" || die "pip install torch's pure-Python deps"
    if [ -s "$REQDIR/native.txt" ]; then
      pip_quiet install -r "$REQDIR/native.txt" \
        || log "could not install: $(tr '\n' ' ' < "$REQDIR/native.txt")"
    fi
    rm -rf "$REQDIR"
  fi
  if ! torch_ok; then
    log "full torch install: pip install $TORCH_REQ"
    pip install "$TORCH_REQ" || die "pip install $TORCH_REQ"
    torch_ok || die "torch does not import after a full install"
  fi
  log "torch $("$VPY" -c 'import torch; print(torch.__version__)') ready"
fi
"$VPY" -c "import pytest" 2>/dev/null || pip install pytest || die "pip install pytest"

if [ -z "${SONICMOE_LIBRARY:-}" ]; then
  log "building libsonicmoe.so (build-py, incremental)"
  out=$(cmake -G Ninja -S "$ROOT" -B "$ROOT/build-py" -DSONICMOE_BUILD_TESTS=OFF \
    -DSONICMOE_BUILD_BENCH=OFF 2>&1) || { echo "$out" >&2; die "cmake configure"; }
  out=$(ninja -C "$ROOT/build-py" sonicmoe 2>&1) || { echo "$out" >&2; die "ninja sonicmoe"; }
  export SONICMOE_LIBRARY="$ROOT/build-py/src/libsonicmoe.so"
fi
export SONICMOE_REQUIRE_LIBRARY=1
# A fresh Inductor cache: compiled graphs left by an earlier run may call the
# library's ops with an older schema (docs/NOTES.md, "Inductor's on-disk cache").
TORCHINDUCTOR_CACHE_DIR=$(mktemp -d)
export TORCHINDUCTOR_CACHE_DIR
trap 'rm -rf "$TORCHINDUCTOR_CACHE_DIR"' EXIT
export PYTHONPATH="$ROOT/python${PYTHONPATH:+:$PYTHONPATH}"

log "pytest python/tests (library: $SONICMOE_LIBRARY)"
# SONICMOE_CI_PRELOAD: libraries for LD_PRELOAD in the test process only
# (tools/host_sanitize.sh: the sanitizer runtimes of a sanitized library).
# shellcheck disable=SC2086
env ${SONICMOE_CI_PRELOAD:+LD_PRELOAD="$SONICMOE_CI_PRELOAD"} \
  "$VPY" -m pytest "$ROOT/python/tests" -q -rs -p no:cacheprovider ${PYTEST_ARGS:-}
rc=$?
if [ "$rc" -eq 5 ]; then
  die "pytest collected no tests"
fi
log "done: pytest exit $rc"
exit "$rc"
