"""Opcode counts of the kernels of one or two device objects, without a GPU.

Usage: python3 tools/sass_opcodes.py REGEX A.o [B.o]
Disassembles with cuobjdump (CUOBJDUMP, default `cuobjdump`; the toolkit
here has none, PyPI's nvidia-cuda-cuobjdump wheel does; cuobjdump also
needs nvdisasm, from the nvidia-cuda-nvdisasm wheel, in its own folder or
on the PATH: docs/NOTES.md) and
prints, for each kernel whose mangled name matches REGEX, its instruction
count and its opcodes by count; given B.o, only the opcodes whose counts
differ, A against B. Example, the SwiGLU dH kernel of the Hopper engine:
  python3 tools/sass_opcodes.py 'DHEpilogueILNS_10ActivationE0EEELi128ELb0ELi2E' \\
      build/src/CMakeFiles/sonicmoe_cuda_hopper.dir/gemm/sm90/engine_sm90.cu.o
"""
import collections
import os
import re
import subprocess
import sys

INSTRUCTION = re.compile(r"^\s+/\*[0-9a-f]{4,}\*/\s+(.*?)\s*;")


def kernels(obj):
    """{mangled name: [opcode, ...]} of every function in obj."""
    tool = os.environ.get("CUOBJDUMP", "cuobjdump")
    run = subprocess.run([tool, "-sass", obj], capture_output=True, text=True)
    if run.returncode != 0:  # e.g. "Could not find executable file 'nvdisasm'"
        sys.exit(f"{tool} -sass {obj} failed:\n{run.stderr.strip()}")
    text = run.stdout
    out = {}
    for part in text.split("Function : ")[1:]:
        name, body = part.split("\n", 1)
        ops = []
        for line in body.split("\n"):
            m = INSTRUCTION.match(line)
            if m:
                words = m.group(1).split()
                ops.append(words[1] if words[0].startswith("@") else words[0])
        out[name.strip()] = ops
    return out


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    pattern = re.compile(sys.argv[1])
    a = kernels(sys.argv[2])
    b = kernels(sys.argv[3]) if len(sys.argv) == 4 else None
    for name in sorted(n for n in a if pattern.search(n)):
        ca = collections.Counter(a[name])
        if b is None:
            print(f"{name}\n  {len(a[name])} instructions")
            for op, k in ca.most_common():
                print(f"  {op:32s} {k:6d}")
            continue
        if name not in b:
            print(f"{name}: not in {sys.argv[3]}")
            continue
        cb = collections.Counter(b[name])
        print(f"{name}\n  {len(a[name])} -> {len(b[name])} instructions")
        for op in sorted(set(ca) | set(cb), key=lambda o: -(ca[o] + cb[o])):
            if ca[op] != cb[op]:
                print(f"  {op:32s} {ca[op]:6d} {cb[op]:6d}")


if __name__ == "__main__":
    main()
