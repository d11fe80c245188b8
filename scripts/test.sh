#!/usr/bin/env bash
# README command 2: install dependencies, build, run every test. Ends with one
# line "N passed, N failed" and fails when any test failed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
# The benchmark program is built (not run) so it cannot rot unnoticed.
meson configure build -Dbenchmarks=enabled
meson compile -C build
status=0
meson test -C build --print-errorlogs "$@" || status=$?
/usr/bin/python3 - build/meson-logs/testlog.json <<'PY'
import json, sys
passed = failed = 0
with open(sys.argv[1]) as log:
    for line in log:
        result = json.loads(line)["result"]
        if result in ("OK", "EXPECTEDFAIL"):
            passed += 1
        elif result != "SKIP":
            failed += 1
print(f"{passed} passed, {failed} failed")
PY
exit $status
