#!/usr/bin/env bash
# README command 2: install dependencies, build, run every test. Ends with one
# line "N passed, N failed" and fails when any test failed.
#
#   bash scripts/test.sh              # the normal build, in ./build
#   bash scripts/test.sh --sanitize   # AddressSanitizer + UndefinedBehaviorSanitizer, in ./build-asan
#   bash scripts/test.sh --tsan       # ThreadSanitizer on the tests it can check here, in ./build-tsan
#   bash scripts/test.sh --tsan-grpc  # ThreadSanitizer on every test, against the instrumented
#                                     # gRPC of scripts/build_tsan_deps.sh, in ./build-tsan-grpc
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "${1:-}" = "--tsan" ]; then
  # ThreadSanitizer on the tests that are clean against Debian's
  # uninstrumented gRPC (docs/reliability.md says why the others are not).
  shift
  dir=build-tsan
  if [ ! -f "$dir/build.ninja" ]; then
    meson setup "$dir" -Db_sanitize=thread -Db_lundef=false -Dbuildtype=debug
  fi
  export TSAN_OPTIONS="ignore_noninstrumented_modules=1 report_signal_unsafe=0 suppressions=$PWD/tests/tsan.supp"
  set -- status retry retry_native deadline journal page_token paginate_e2e paginate_generic other_cases e2e \
    chaos_soak chaos_soak_by_key fuzz_replay_status_details fuzz_replay_page_token \
    example_quickstart example_errors example_pagination example_deadlines "$@"
elif [ "${1:-}" = "--tsan-grpc" ]; then
  # ThreadSanitizer with abseil, protobuf and gRPC instrumented too: it sees
  # gRPC's own locks and hand-offs, so every test can be checked, the async
  # ones included; tests/tsan-grpc.supp names three reports of abseil's and
  # gRPC's own (docs/reliability.md).
  shift
  prefix=${STUBKIT_TSAN_PREFIX:-/opt/stubkit-tsan}
  if [ ! -f "$prefix/lib/pkgconfig/grpc++.pc" ]; then
    echo "test.sh: no instrumented gRPC in $prefix; build it first: bash scripts/build_tsan_deps.sh" >&2
    exit 2
  fi
  dir=build-tsan-grpc
  export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
  if [ ! -f "$dir/build.ninja" ]; then
    meson setup "$dir" -Db_sanitize=thread -Db_lundef=false -Dbuildtype=debugoptimized \
      -Dcpp_link_args="-Wl,-rpath,$prefix/lib"
  fi
  export TSAN_OPTIONS="report_signal_unsafe=0 second_deadlock_stack=1 suppressions=$PWD/tests/tsan-grpc.supp"
  # Packaging tests build separate, unsanitized projects: the normal run
  # covers them. TSan runs the rest 5-15 times slower.
  set -- --no-suite packaging --timeout-multiplier 6 "$@"
elif [ "${1:-}" = "--sanitize" ]; then
  shift
  dir=build-asan
  if [ ! -f "$dir/build.ninja" ]; then
    meson setup "$dir" -Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=debug
  fi
  export ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
  # Packaging tests build separate, unsanitized projects: the normal run covers them.
  set -- --no-suite packaging "$@"
else
  dir=build
  bash scripts/build.sh
  # The benchmark program is built (not run) so it cannot rot unnoticed.
  meson configure "$dir" -Dbenchmarks=enabled
fi
meson compile -C "$dir"
status=0
meson test -C "$dir" --print-errorlogs "$@" || status=$?
python3 scripts/count_tests.py "$dir/meson-logs/testlog.json"
exit $status
