#!/usr/bin/env bash
# Installs what stubkit needs to build and test on Debian 12, from Debian's
# own packages. Does nothing when everything is already installed.
set -euo pipefail

packages=(
  g++ pkg-config cmake meson ninja-build ccache openssl
  libgrpc++-dev protobuf-compiler protobuf-compiler-grpc libprotobuf-dev libabsl-dev grpc-proto
  doctest-dev libtrompeloeil-cpp-dev
  python3-grpcio python3-protobuf   # the reference Python client, run as a real peer in tests
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#packages[@]} packages already installed"
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "setup: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
