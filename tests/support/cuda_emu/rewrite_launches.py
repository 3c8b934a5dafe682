#!/usr/bin/env python3
"""Turns a CUDA source into C++ for the CUDA emulator (tests/support/cuda_emu).

Each `name<<<grid, block[, shared[, stream]]>>>(args)` becomes
`::cuda_emu::Launcher(&name, "name", grid, block, shared, stream)(args)`, and the kernel
side of the emulator (cuda_emu/device.h) is included first. Nothing else changes: the
emulated code is the code nvcc compiles.

usage: rewrite_launches.py INPUT.cu OUTPUT.cc
"""
import re
import sys

LAUNCH = re.compile(r"([A-Za-z_][A-Za-z_0-9:]*(?:<[^<>;]*>)?)\s*<<<(.*?)>>>\s*\(", re.S)


def rewrite(text: str, source: str) -> str:
    count = 0

    def launch(match: re.Match) -> str:
        nonlocal count
        count += 1
        kernel = match.group(1)
        config = match.group(2)
        return f'::cuda_emu::Launcher(&{kernel}, "{kernel}", {config})('

    body = LAUNCH.sub(launch, text)
    header = (f"// Generated from {source} by tests/support/cuda_emu/rewrite_launches.py "
              f"({count} launches rewritten). Do not edit.\n"
              "#include \"cuda_emu/device.h\"\n"
              f"#line 1 \"{source}\"\n")
    return header + body


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    source, target = sys.argv[1], sys.argv[2]
    with open(source, encoding="utf-8") as f:
        text = f.read()
    rewritten = rewrite(text, source)
    try:
        with open(target, encoding="utf-8") as f:
            if f.read() == rewritten:
                return 0
    except FileNotFoundError:
        pass
    with open(target, "w", encoding="utf-8") as f:
        f.write(rewritten)
    return 0


if __name__ == "__main__":
    sys.exit(main())
