#!/usr/bin/env bash
# Installs what stubkit needs to build and test on Debian 12, from Debian's
# own packages. Does nothing when everything is already installed.
#
#   bash scripts/setup.sh          # build and test
#   bash scripts/setup.sh --fuzz   # also clang and libFuzzer (scripts/fuzz.sh)
set -euo pipefail

packages=(
  g++ pkg-config cmake meson ninja-build ccache openssl
  libgrpc++-dev protobuf-compiler protobuf-compiler-grpc libprotobuf-dev libabsl-dev grpc-proto
  libssl-dev                        # HMAC-SHA256 page tokens of the embedded UserService
  prometheus-cpp-dev                # stubkit/metrics.hpp and user_server --metrics-port (optional for users)
  libasio-dev                       # stubkit/asio.hpp: co_await with asio::use_awaitable (optional for users)
  libprotoc-dev                     # protoc-gen-stubkit, the generator of typed clients (optional for users)
  doctest-dev libtrompeloeil-cpp-dev
  python3-grpcio python3-protobuf   # the reference Python client, run as a real peer in tests
)
if [ "${1:-}" = "--fuzz" ]; then
  packages+=(clang-14 libclang-rt-14-dev)  # -fsanitize=fuzzer
fi

# buf (lint and breaking-change checks of proto/) comes from npm; without
# network or npm the buf test is skipped, nothing else depends on it.
install_buf() {
  if [ ! -x .tools/node_modules/.bin/buf ] && command -v npm >/dev/null 2>&1; then
    timeout 300 npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@1.75.0 >/dev/null 2>&1 ||
      echo "setup: could not install buf with npm; the buf test will be skipped"
  fi
}

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
cd "$(dirname "$0")/.."
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#packages[@]} packages already installed"
  install_buf
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "setup: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
install_buf
