"""What the SASS of the built library must show, checked without a GPU.

Usage: python3 tools/sass_check.py [BUILD_DIR]   (default: build)

Disassembles every device object under BUILD_DIR/src and fails (exit 1),
naming the kernel, when
  - a Hopper grouped GEMM kernel (namespace sm90) has no HGMMA: wgmma
    compiled out or lowered to something else;
  - a portable grouped GEMM kernel (namespace sm80) has no HMMA in the code
    of some architecture;
  - any kernel reads or writes local memory (LDL, STL: spills or arrays on
    the stack). ptxas's --warn-on-spills and --warn-on-local-memory-usage
    already fail the build on these; this says it of the final SASS too;
  - the kernels expected are missing (a renamed namespace would otherwise
    pass with nothing checked).
A GEMM kernel without its tensor-core instructions would still compute the
right result slowly, or in a test that never launches it not at all, so
only the SASS shows it.

cuobjdump comes from CUOBJDUMP, the PATH, or (as on a CI machine, whose
toolkit has none) PyPI's nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm
wheels, fetched once into ~/.cache/sonicmoe/sass-tools (docs/NOTES.md,
'SASS without a GPU').
"""
import collections
import glob
import os
import re
import shutil
import subprocess
import sys
import zipfile

INSTRUCTION = re.compile(r"^\s+/\*[0-9a-f]{4,}\*/\s+(.*?)\s*;")
ARCH = re.compile(r"^\s*code for (sm_\w+)")
LOCAL = {"LDL", "STL"}
WHEELS = ("nvidia-cuda-cuobjdump>=13,<14", "nvidia-cuda-nvdisasm>=13,<14")


def find_cuobjdump():
    tool = os.environ.get("CUOBJDUMP") or shutil.which("cuobjdump")
    if tool:
        return tool
    cache = os.path.join(os.path.expanduser("~"), ".cache", "sonicmoe", "sass-tools")
    tool = os.path.join(cache, "nvidia", "cu13", "bin", "cuobjdump")
    if not os.path.exists(tool):
        os.makedirs(cache, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--disable-pip-version-check", "-d", cache, *WHEELS], check=True)
        for wheel in glob.glob(os.path.join(cache, "*.whl")):
            with zipfile.ZipFile(wheel) as z:
                z.extractall(cache)
        for exe in glob.glob(os.path.join(cache, "nvidia", "cu13", "bin", "*")):
            os.chmod(exe, 0o755)
    return tool


def functions(tool, obj):
    """[(arch, mangled name, Counter of opcodes)] of every kernel in obj."""
    run = subprocess.run([tool, "-sass", obj], capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"{tool} -sass {obj} failed:\n{run.stderr.strip()}")
    out, arch = [], "?"
    for line in run.stdout.split("\n"):
        m = ARCH.match(line)
        if m:
            arch = m.group(1)
        elif "Function : " in line:
            out.append((arch, line.split("Function : ", 1)[1].strip(), collections.Counter()))
        elif out:
            m = INSTRUCTION.match(line)
            if m:
                words = m.group(1).split()
                op = words[1] if words[0].startswith("@") else words[0]
                out[-1][2][op.split(".")[0]] += 1
    return out


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else "build"
    objs = sorted(glob.glob(os.path.join(build, "src", "**", "*.cu.o"), recursive=True))
    if not objs:
        sys.exit(f"sass_check: no device objects under {build}/src (build first)")
    tool = find_cuobjdump()
    errors, seen = [], collections.Counter()
    for obj in objs:
        for arch, name, ops in functions(tool, obj):
            short = f"{os.path.basename(obj)} [{arch}] {name[:140]}"
            if LOCAL & ops.keys():
                errors.append(f"local memory ({', '.join(sorted(LOCAL & ops.keys()))}): {short}")
            if "sm9019grouped_gemm_kernel" in name:
                seen["hopper"] += 1
                if not ops["HGMMA"]:
                    errors.append(f"no HGMMA: {short}")
            elif "sm8019grouped_gemm_kernel" in name:
                seen[f"portable {arch}"] += 1
                if not ops["HMMA"]:
                    errors.append(f"no HMMA: {short}")
            seen["all"] += 1
    for need in ("hopper", "portable sm_80", "portable sm_90"):
        if not seen[need]:
            errors.append(f"no {need} grouped GEMM kernel found: renamed? (the check looks "
                          "for sm9019grouped_gemm_kernel / sm8019grouped_gemm_kernel)")
    for e in errors:
        print("sass_check:", e)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(seen.items()))
    print(f"sass_check: {len(objs)} objects, kernels: {counts}; "
          f"{'FAILED' if errors else 'HGMMA/HMMA in every GEMM kernel, no local memory'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
