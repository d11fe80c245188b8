#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (in ./build-fuzz) and fuzzes each
# for a while from its checked-in corpus; new inputs go to the build dir.
# Ends with one line "N passed, N failed".
#
#   bash scripts/fuzz.sh           # 20 s per target
#   bash scripts/fuzz.sh 300       # 5 minutes per target
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-20}"
bash scripts/setup.sh --fuzz
dir=build-fuzz
if [ ! -f "$dir/build.ninja" ]; then
  CXX=clang++-14 CC=clang-14 meson setup "$dir" -Dfuzzing=enabled -Db_lundef=false -Dexamples=disabled \
    -Dfuzz_seconds="$seconds"
else
  meson configure "$dir" -Dfuzz_seconds="$seconds"
fi
targets=$(sed -n "s/^  '\([a-z_]*\)': files.*/tests\/fuzz\/\1_fuzz/p" tests/fuzz/meson.build)
# Only the fuzzers (and what they need), not the whole suite a second time.
meson compile -C "$dir" $targets
status=0
meson test -C "$dir" --suite fuzz-run --no-rebuild --print-errorlogs --verbose || status=$?
python3 scripts/count_tests.py "$dir/meson-logs/testlog.json"
exit $status
