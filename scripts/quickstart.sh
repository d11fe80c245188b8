#!/usr/bin/env bash
# README command 1: install dependencies, build, run the quickstart against
# an embedded UserService.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Only the quickstart and what it needs: the tests are scripts/test.sh's.
STUBKIT_TARGETS=examples/quickstart bash scripts/build.sh
exec ./build/examples/quickstart "$@"
