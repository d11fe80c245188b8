#!/usr/bin/env bash
# README command 1: install dependencies, build, run the quickstart against
# an embedded UserService.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
exec ./build/examples/quickstart "$@"
