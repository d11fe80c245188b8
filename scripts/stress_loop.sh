#!/usr/bin/env bash
# Runs the suites that touch the retry interceptor and channels again and
# again while every CPU is busy, and counts failures and aborts: a crash or
# a flake seen once in such a loop is a bug to find, not noise.
#
#   bash scripts/stress_loop.sh [RUNS] [BUILD_DIR]    # defaults: 100 runs, ./build
#
# One run is: the retry_interceptor, retry_native, stream, server, observe, trace,
# metrics and hedging suites of stubkit_tests (stream and server: Chat sessions, the
# stubkit-fault header; metrics only when built with prometheus-cpp),
# retry_stress on an embedded server (4 threads, 1000 calls) and
# retry_stress against a user_server process (1 thread, 500 calls); the
# async, async_paginate and async_stream suites and async_stress (2000
# calls, then 300 listings, then 200 streams, in flight; 500 calls, 300
# listings and 200 streams against a user_server process) when built (they
# need C++20); the generated clients' codegen suite; every
# 4th run also the channel suite (the slowest, some 5 s). Two runs go
# side by side, and one busy loop per core competes with them. Logs of every
# failed step are kept in BUILD_DIR/stress-loop/. Ends with one line
# "stress loop: N runs, N steps, N failed, N aborted".
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-100}
build=${2:-build}
case "$runs" in '' | *[!0-9]*) echo "stress_loop: RUNS must be a number, not '$runs'" >&2; exit 2 ;; esac
for program in "$build/tests/stubkit_tests" "$build/tests/retry_stress" "$build/examples/user_server"; do
  if [ ! -x "$program" ]; then
    echo "stress_loop: $program is missing; build first (bash scripts/build.sh)" >&2
    exit 2
  fi
done
logs="$build/stress-loop"
rm -rf "$logs" && mkdir -p "$logs"
export STUBKIT_USER_SERVER="$PWD/$build/examples/user_server"

hogs=()
for _ in $(seq "$(nproc)"); do
  (while :; do :; done) &
  hogs+=($!)
done
trap 'kill "${hogs[@]}" 2>/dev/null' EXIT

# One run; prints one line per step: "<run> <step> <exit status>".
one_run() {
  local run=$1 step status
  local -a steps=()
  if ((run % 4 == 1)); then steps+=("channel:$build/tests/stubkit_tests --test-suite=channel --no-version"); fi
  steps+=(
    "retry_interceptor:$build/tests/stubkit_tests --test-suite=retry_interceptor --no-version"
    "retry_native:$build/tests/stubkit_tests --test-suite=retry_native --no-version"
    "stream:$build/tests/stubkit_tests --test-suite=stream --no-version"
    "server:$build/tests/stubkit_tests --test-suite=server --no-version"
    "observe:$build/tests/stubkit_tests --test-suite=observe --no-version"
    "trace:$build/tests/stubkit_tests --test-suite=trace --no-version"
    "metrics:$build/tests/stubkit_tests --test-suite=metrics --no-version"
    "hedging:$build/tests/stubkit_tests --test-suite=hedging --no-version"
    "stress:$build/tests/retry_stress --calls 1000 --threads 4 --seed $run"
    "stress_process:$build/tests/retry_stress --calls 500 --threads 1 --seed $run --user-server $STUBKIT_USER_SERVER"
  )
  if [ -x "$build/tests/codegen/codegen_tests" ]; then
    steps+=("codegen:$build/tests/codegen/codegen_tests --no-version")
  fi
  if [ -x "$build/tests/async_tests" ]; then
    steps+=(
      "async:$build/tests/async_tests --no-version"
      "async_stress:$build/tests/async_stress --calls 2000 --seed $run"
      "async_stress_process:$build/tests/async_stress --calls 500 --seed $run --user-server $STUBKIT_USER_SERVER"
    )
  fi
  for entry in "${steps[@]}"; do
    step=${entry%%:*}
    timeout 300 ${entry#*:} >"$logs/$run-$step.log" 2>&1
    status=$?
    if [ $status -eq 0 ]; then rm -f "$logs/$run-$step.log"; fi
    echo "$run $step $status"
  done
}

start=$(date +%s)
results="$logs/results.txt"
: >"$results"
for ((run = 1; run <= runs; run += 2)); do
  one_run "$run" >>"$results" &
  pids=($!)
  if ((run + 1 <= runs)); then
    one_run $((run + 1)) >>"$results" &
    pids+=($!)
  fi
  wait "${pids[@]}"
  if ((run % 20 == 19 || run + 1 >= runs)); then
    echo "stress loop: $((run + 1 > runs ? runs : run + 1)) of $runs runs, $(awk '$3 != 0' "$results" | wc -l) failed steps so far, $(($(date +%s) - start)) s"
  fi
done

failed=$(awk '$3 != 0' "$results" | wc -l)
# 134 = SIGABRT, 139 = SIGSEGV (128 + signal); timeout gives 124.
aborted=$(awk '$3 >= 128' "$results" | wc -l)
awk '$3 != 0 { print "  failed: run " $1 ", " $2 ", exit status " $3 }' "$results"
echo "stress loop: $runs runs, $(wc -l <"$results") steps, $failed failed, $aborted aborted ($(($(date +%s) - start)) s, $(nproc) busy loops beside them; logs in $logs)"
[ "$failed" -eq 0 ]
