#!/usr/bin/env bash
# Builds abseil, protobuf and gRPC from Debian 12's own source packages (the
# versions the normal build links) with -fsanitize=thread, into a prefix, so
# that ThreadSanitizer sees gRPC's own synchronisation and can check the
# async code (docs/reliability.md, "ThreadSanitizer with an instrumented gRPC").
#
#   bash scripts/build_tsan_deps.sh [PREFIX]    # default /opt/stubkit-tsan
#
# Needs the Debian source mirror (a deb-src entry is added when missing) and
# about 45 minutes on 2 cores; ccache makes a rebuild quick. Not part of CI:
# `bash scripts/test.sh --tsan-grpc` uses the prefix once it exists.
set -euo pipefail
prefix=${1:-/opt/stubkit-tsan}
work=${STUBKIT_TSAN_WORK:-/var/tmp/stubkit-tsan-src}
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo

step() { printf '[tsan-deps %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

if ! apt-cache showsrc grpc 2>/dev/null | grep -q '^Package: grpc'; then
  step "adding a deb-src entry for Debian's source packages"
  sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources |
    $sudo tee /etc/apt/sources.list.d/stubkit-deb-src.sources >/dev/null
  $sudo apt-get update -qq
fi
$sudo apt-get install -y -qq dpkg-dev cmake ninja-build ccache libc-ares-dev libre2-dev libssl-dev zlib1g-dev >/dev/null

mkdir -p "$work"
cd "$work"
for pkg in abseil protobuf grpc; do
  if ! ls -d "$pkg"-*/ >/dev/null 2>&1; then
    step "fetching and unpacking Debian's $pkg source"
    apt-get source -qq "$pkg" >/dev/null
  fi
done
absl_src=$(ls -d abseil-*/ | head -1)
protobuf_src=$(ls -d protobuf-*/ | head -1)
grpc_src=$(ls -d grpc-*/ | head -1)

flags="-fsanitize=thread -O1 -g1 -fno-omit-frame-pointer"
common=(-G Ninja -DCMAKE_BUILD_TYPE=None -DCMAKE_INSTALL_PREFIX="$prefix" -DCMAKE_INSTALL_LIBDIR=lib
  -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags"
  -DCMAKE_EXE_LINKER_FLAGS=-fsanitize=thread -DCMAKE_SHARED_LINKER_FLAGS=-fsanitize=thread
  -DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache
  -DCMAKE_INSTALL_RPATH="$prefix/lib" -DBUILD_SHARED_LIBS=ON -DBUILD_TESTING=OFF)
$sudo mkdir -p "$prefix"
[ -w "$prefix" ] || $sudo chown "$(id -u):$(id -g)" "$prefix"

# Configures and builds one package; its install target unless targets are
# given (the caller then installs them).
build() { # name source-dir [cmake-args...] [-- targets...]
  local name=$1 src=$2 args=() targets=(install)
  shift 2
  while [ $# -gt 0 ] && [ "$1" != -- ]; do args+=("$1"); shift; done
  [ $# -gt 0 ] && { shift; targets=("$@"); }
  step "building $name (${src%/}): ${targets[*]}"
  cmake -S "$src" -B "build-$name" "${common[@]}" "${args[@]}" >"build-$name.log" 2>&1 ||
    { tail -30 "build-$name.log"; exit 1; }
  ninja -C "build-$name" "${targets[@]}" >>"build-$name.log" 2>&1 || { tail -30 "build-$name.log"; exit 1; }
}

[ -f "$prefix/lib/pkgconfig/absl_base.pc" ] ||
  build abseil "$absl_src" -DCMAKE_CXX_STANDARD=17 -DABSL_PROPAGATE_CXX_STD=ON
[ -f "$prefix/lib/pkgconfig/protobuf.pc" ] ||
  build protobuf "$protobuf_src" -Dprotobuf_BUILD_TESTS=OFF -Dprotobuf_BUILD_SHARED_LIBS=ON \
  -Dprotobuf_WITH_ZLIB=ON
build grpc "$grpc_src" -DCMAKE_CXX_STANDARD=17 -DgRPC_BUILD_TESTS=OFF -DgRPC_INSTALL=ON \
  -DgRPC_ABSL_PROVIDER=package -DgRPC_CARES_PROVIDER=package -DgRPC_PROTOBUF_PROVIDER=package \
  -DgRPC_RE2_PROVIDER=package -DgRPC_SSL_PROVIDER=package -DgRPC_ZLIB_PROVIDER=package \
  -DgRPC_BACKWARDS_COMPATIBILITY_MODE=OFF -DgRPC_BUILD_GRPC_CPP_PLUGIN=ON \
  -DgRPC_BUILD_GRPC_CSHARP_PLUGIN=OFF -DgRPC_BUILD_GRPC_NODE_PLUGIN=OFF \
  -DgRPC_BUILD_GRPC_OBJECTIVE_C_PLUGIN=OFF -DgRPC_BUILD_GRPC_PHP_PLUGIN=OFF \
  -DgRPC_BUILD_GRPC_PYTHON_PLUGIN=OFF -DgRPC_BUILD_GRPC_RUBY_PLUGIN=OFF \
  -- grpc++ grpc++_reflection
# Only what stubkit links (half of gRPC's install target is the *_unsecure
# copies of the core): the headers, those libraries and their pkg-config files.
step "installing grpc++ and grpc++_reflection"
cp -r "$grpc_src"include/. "$prefix/include/"
cp -P build-grpc/lib{gpr,grpc,grpc++,grpc++_reflection,address_sorting,upb}.so* "$prefix/lib/"
cp build-grpc/libs/opt/pkgconfig/{gpr,grpc,grpc++}.pc "$prefix/lib/pkgconfig/"

step "done: $prefix (use: bash scripts/test.sh --tsan-grpc)"
