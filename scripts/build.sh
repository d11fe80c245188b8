#!/usr/bin/env bash
# Configures (once) and builds stubkit in ./build. Extra arguments go to
# `meson setup` on the first run. STUBKIT_TARGETS (e.g.
# "examples/quickstart") builds only those targets and what they need.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f build/build.ninja ]; then
  meson setup build "$@"
fi
# shellcheck disable=SC2086  # a list of targets
meson compile -C build ${STUBKIT_TARGETS:-}
