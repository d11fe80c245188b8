#!/usr/bin/env bash
# Builds and runs the benchmarks: prints a table of ratios and writes
# build-bench/bench.json. Pass --quick for a short run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ ! -f build-bench/build.ninja ]; then
  meson setup build-bench -Dbenchmarks=enabled -Dtests=disabled -Dbuildtype=release
fi
meson compile -C build-bench
cd build-bench
exec ./tests/bench/stubkit-bench --user-server ./examples/user_server --json bench.json "$@"
