#!/usr/bin/env python3
"""A program that must not compile: runs the C++ compiler on FILE and passes
when it fails with EXPECTED in its messages (so it failed for the reason
the test is about, not for another).

Usage: compile_fail_test.py EXPECTED FILE COMPILER [ARGS...]
"""
import subprocess
import sys

expected, source, *compiler = sys.argv[1:]
result = subprocess.run([*compiler, "-fsyntax-only", source], capture_output=True, text=True)
if result.returncode == 0:
    print(f"FAIL {source} compiled; it must not")
    sys.exit(1)
if expected not in result.stderr:
    print(result.stderr[-4000:])
    print(f"FAIL {source} did not compile, but not with the expected message: {expected!r}")
    sys.exit(1)
print(f"ok   {source} is refused: {expected}")
