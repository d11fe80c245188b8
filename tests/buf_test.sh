#!/usr/bin/env bash
# buf lint, and buf breaking against the previous commit (or against main
# when run on another branch), for proto/. buf comes from npm
# (@bufbuild/buf), installed by scripts/setup.sh into .tools/; without it
# the test is skipped (exit 77).
set -euo pipefail
cd "$1"
buf=.tools/node_modules/.bin/buf
if [ ! -x "$buf" ]; then
  echo "buf is not installed (scripts/setup.sh installs it with npm): skipped"
  exit 77
fi
"$buf" lint
echo "buf lint: clean"
if git rev-parse -q --verify HEAD~1 >/dev/null; then
  against=HEAD~1
  if git rev-parse -q --verify main >/dev/null && [ "$(git rev-parse --abbrev-ref HEAD)" != main ]; then
    against=main
  fi
  "$buf" breaking proto --against ".git#ref=$against,subdir=proto"
  echo "buf breaking against $against: no breaking change"
fi
