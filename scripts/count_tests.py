#!/usr/bin/env python3
"""Prints one line "N passed, N failed" over meson test logs (testlog.json)."""
import json
import sys

passed = failed = 0
for path in sys.argv[1:]:
    try:
        log = open(path)
    except OSError:
        print(f"count_tests: no test log at {path} (the build failed?): counted as 1 failure", file=sys.stderr)
        failed += 1
        continue
    with log:
        for line in log:
            result = json.loads(line)["result"]
            if result in ("OK", "EXPECTEDFAIL"):
                passed += 1
            elif result != "SKIP":
                failed += 1
print(f"{passed} passed, {failed} failed")
