#!/usr/bin/env python3
"""Every example answers --help (usage on stdout, exit 0) and refuses an
argument it does not take, or a flag without its value (one line on stderr,
exit 2), instead of ignoring it.

Usage: examples_args_test.py EXAMPLE...
"""
import os
import subprocess
import sys

failures = []
for example in sys.argv[1:]:
    name = os.path.basename(example)
    r = subprocess.run([example, "--help"], capture_output=True, text=True, timeout=30)
    if r.returncode != 0 or not r.stdout.startswith("usage: " + name):
        failures.append(f"{name} --help: exit {r.returncode}, stdout {r.stdout[:80]!r}")
    r = subprocess.run([example, "--bogus", "1"], capture_output=True, text=True, timeout=30)
    lines = r.stderr.strip().splitlines()
    if r.returncode != 2 or len(lines) != 1 or "--bogus" not in lines[0] or r.stdout:
        failures.append(f"{name} --bogus: exit {r.returncode}, stderr {r.stderr[:200]!r}, stdout {r.stdout[:80]!r}")
    else:
        print(f"ok   {name}: --help prints its usage; --bogus is refused: {lines[0]}")
    r = subprocess.run([example, "--target"], capture_output=True, text=True, timeout=30)
    if r.returncode != 2 or "--target needs a value" not in r.stderr:
        failures.append(f"{name} --target (no value): exit {r.returncode}, stderr {r.stderr[:200]!r}")
for failure in failures:
    print("FAIL " + failure)
sys.exit(1 if failures else 0)
