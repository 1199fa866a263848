"""Builds libsonicmoe.so with CMake and puts it inside the sonicmoe package.

The Python code is pure Python (ctypes); the one binary is the library,
which links the CUDA runtime statically and needs no libtorch, so one build
serves every PyTorch >= 2.4 and Python >= 3.10.

Environment:
  SONICMOE_PREBUILT_LIBRARY  path of an already built libsonicmoe.so: copied,
                             no CMake run
  SONICMOE_CMAKE_ARGS        extra CMake arguments (e.g.
                             -DSONICMOE_PORTABLE_ARCHS=80 -DSONICMOE_HOPPER_ARCHS=)
  SONICMOE_BUILD_JOBS        parallel build jobs (default: CPU count)
CMake and Ninja come from PATH or from the `cmake` / `ninja` PyPI packages
when installed; without Ninja, CMake's default generator is used.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
LIB = "libsonicmoe.so"


def _tool(name: str) -> str | None:
    path = shutil.which(name)
    if path:
        return path
    try:  # the PyPI wheels of cmake / ninja
        mod = __import__(name)
        d = getattr(mod, "CMAKE_BIN_DIR", None) or getattr(mod, "BIN_DIR", None)
        if d and (Path(d) / name).exists():
            return str(Path(d) / name)
    except ImportError:
        pass
    return None


def build_library(build_temp: Path) -> Path:
    prebuilt = os.environ.get("SONICMOE_PREBUILT_LIBRARY")
    if prebuilt:
        p = Path(prebuilt).resolve()
        if not p.is_file():
            sys.exit(f"SONICMOE_PREBUILT_LIBRARY={prebuilt}: no such file")
        print(f"sonicmoe: using the prebuilt {p}")
        return p
    cmake = _tool("cmake")
    if cmake is None:
        sys.exit("sonicmoe: CMake not found (install it, or `pip install cmake`), or set "
                 "SONICMOE_PREBUILT_LIBRARY to a built libsonicmoe.so")
    ninja = _tool("ninja")
    bdir = build_temp / "cmake"
    bdir.mkdir(parents=True, exist_ok=True)
    cfg = [cmake, "-S", str(ROOT), "-B", str(bdir), "-DCMAKE_BUILD_TYPE=Release",
           "-DSONICMOE_BUILD_TESTS=OFF", "-DSONICMOE_BUILD_BENCH=OFF"]
    if ninja and not (bdir / "CMakeCache.txt").exists():
        cfg += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
    cfg += shlex.split(os.environ.get("SONICMOE_CMAKE_ARGS", ""))
    jobs = os.environ.get("SONICMOE_BUILD_JOBS", str(os.cpu_count() or 1))
    print("sonicmoe:", " ".join(cfg), flush=True)
    subprocess.check_call(cfg)
    subprocess.check_call([cmake, "--build", str(bdir), "--target", "sonicmoe", "--parallel",
                           jobs])
    lib = bdir / "src" / LIB
    if not lib.exists():
        sys.exit(f"sonicmoe: the build produced no {lib}")
    return lib.resolve()


class BuildPyWithLibrary(build_py):
    """build_py, then the library into build_lib/sonicmoe/libsonicmoe.so."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install finds build*/src/libsonicmoe.so itself
        build_temp = Path(self.get_finalized_command("build").build_temp)
        lib = build_library(build_temp)
        dest = Path(self.build_lib) / "sonicmoe" / LIB
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(lib, dest)  # the real file, not the SONAME symlinks
        os.chmod(dest, 0o755)


cmdclass = {"build_py": BuildPyWithLibrary}

# The wheel holds a native library but no CPython extension: tag it
# py3-none-<platform> (any Python 3, this platform).
try:
    try:
        from setuptools.command.bdist_wheel import bdist_wheel as _bdist_wheel
    except ImportError:
        from wheel.bdist_wheel import bdist_wheel as _bdist_wheel

    class BdistWheel(_bdist_wheel):
        def finalize_options(self):
            super().finalize_options()
            self.root_is_pure = False

        def get_tag(self):
            _, _, plat = super().get_tag()
            return "py3", "none", plat

    cmdclass["bdist_wheel"] = BdistWheel
except ImportError:
    pass

setup(
    cmdclass=cmdclass,
    # Not "build/": that name is a CMake build folder of this repository.
    options={"build": {"build_base": "python/build"},
             "egg_info": {"egg_base": "python"}},
)
