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
./tests/bench/stubkit-bench --user-server ./examples/user_server --proto-dir ../proto --seed-dir ../tests/interop \
  --json bench.json "$@"
# B9, compile cost: the umbrella header, one concern header, and one and
# four calls through the generated client.
rounds=5
case " $* " in *" --quick "*) rounds=2 ;; esac
for header in stubkit/stubkit.hpp stubkit/paginate.hpp generated-client generated-client-4; do
  python3 ../tests/bench/compile_cost.py . "$rounds" "$header" bench.json
done
