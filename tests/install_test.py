#!/usr/bin/env python3
"""Installs stubkit into a temporary prefix (meson install), then builds
programs against the installed copy with pkg-config and with CMake's
find_package(stubkit): the SDK alone, with the embedded server, and a
program that brings its own google.rpc messages (stubkit-core,
stubkit::core). Every program runs.

Usage: install_test.py SOURCE_ROOT WORK_DIR
"""
import os
import pathlib
import shutil
import subprocess
import sys

root, work = pathlib.Path(sys.argv[1]).resolve(), pathlib.Path(sys.argv[2]).resolve()
if work.exists():
    shutil.rmtree(work)
work.mkdir(parents=True)
prefix = work / "prefix"
app = root / "tests" / "consumer" / "app.cpp"  # uses the embedded server
sdk_app = root / "tests" / "consumer" / "sdk_only.cpp"  # the SDK alone
metrics_app = root / "tests" / "consumer" / "metrics_app.cpp"  # with Prometheus metrics


def run(*cmd, **kw):
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run(list(map(str, cmd)), check=True, **kw)


run("meson", "setup", work / "build", root, f"--prefix={prefix}", "-Dtests=disabled", "-Dexamples=disabled")
run("meson", "install", "-C", work / "build", "--quiet")
libdir = next(prefix.rglob("pkgconfig")).parent
for expected in ("include/stubkit/stubkit.hpp", "include/myservice/v1/user.grpc.pb.h", "bin/protoc-gen-stubkit",
                 "include/myservice/v1/user.stubkit.h", "include/stubkit/client.hpp",
                 "include/stubkit-google-rpc/google/rpc/status.pb.h",
                 "share/stubkit/proto/myservice/v1/user.proto", "share/stubkit/proto/google/rpc/status.proto"):
    if not (prefix / expected).exists():
        sys.exit(f"not installed: {expected}")
if (prefix / "include" / "google" / "rpc").exists():
    sys.exit("google/rpc headers installed beside the program's own include path: they would shadow its copy")

# A program with its own google.rpc: generated from its own copy of the
# .proto files, compiled with it.
own = work / "own-rpc"
(own / "googleapis" / "google" / "rpc").mkdir(parents=True)
for proto in ("status.proto", "error_details.proto"):
    shutil.copy(root / "proto" / "google" / "rpc" / proto, own / "googleapis" / "google" / "rpc" / proto)
(own / "gen").mkdir()
run("protoc", f"--proto_path={own / 'googleapis'}", f"--cpp_out={own / 'gen'}",
    own / "googleapis" / "google" / "rpc" / "status.proto", own / "googleapis" / "google" / "rpc" / "error_details.proto")
own_sources = [own / "gen" / "google" / "rpc" / "status.pb.cc", own / "gen" / "google" / "rpc" / "error_details.pb.cc"]
own_app = root / "tests" / "consumer_own_rpc" / "app.cpp"

# pkg-config: the SDK alone must not bring gRPC's reflection library; the
# embedded server's package adds it.
env = dict(os.environ, PKG_CONFIG_PATH=str(libdir / "pkgconfig"))


def pkg_flags(package):
    return subprocess.run(["pkg-config", "--cflags", "--libs", package], env=env, check=True,
                          capture_output=True, text=True).stdout.split()


if "-lgrpc++_reflection" in pkg_flags("stubkit"):
    sys.exit("pkg-config stubkit hands out grpc++_reflection, which only stubkit-testing needs")
run("c++", "-std=c++17", sdk_app, "-o", work / "sdk-pkgconfig", *pkg_flags("stubkit"), "-pthread")
run(work / "sdk-pkgconfig")
run("c++", "-std=c++17", app, "-o", work / "app-pkgconfig", *pkg_flags("stubkit-testing"), "-pthread")
run(work / "app-pkgconfig")
if any("stubkit-google-rpc" in flag or "stubkit_google_rpc" in flag for flag in pkg_flags("stubkit-core")):
    sys.exit("pkg-config stubkit-core hands out stubkit's google.rpc")
run("c++", "-std=c++17", own_app, *own_sources, f"-I{own / 'gen'}", "-o", work / "own-pkgconfig",
    *pkg_flags("stubkit-core"), "-lgrpc++_reflection", *pkg_flags("libcrypto"), "-pthread")
run(work / "own-pkgconfig")
# Metrics: only where prometheus-cpp is installed (stubkit-metrics exists then).
have_metrics = subprocess.run(["pkg-config", "--exists", "prometheus-cpp-pull"]).returncode == 0
if have_metrics:
    run("c++", "-std=c++17", metrics_app, "-o", work / "metrics-pkgconfig", *pkg_flags("stubkit-metrics"),
        "-pthread")
    run(work / "metrics-pkgconfig")

# CMake: stubkit::stubkit for the SDK, stubkit::testing with the embedded server.
cmake_project = work / "cmake-project"
cmake_project.mkdir()
shutil.copy(app, cmake_project / "app.cpp")
shutil.copy(sdk_app, cmake_project / "sdk_only.cpp")
shutil.copy(own_app, cmake_project / "own_rpc.cpp")
shutil.copy(metrics_app, cmake_project / "metrics_app.cpp")
shutil.copy(root / "tests" / "consumer" / "inventory_app.cpp", cmake_project / "inventory_app.cpp")
shutil.copytree(root / "tests" / "consumer" / "protos", cmake_project / "protos")
(cmake_project / "CMakeLists.txt").write_text(
    "cmake_minimum_required(VERSION 3.16)\n"
    "project(stubkit_cmake_consumer CXX)\n"
    "find_package(stubkit 0.1 REQUIRED)\n"
    "add_executable(sdk_only sdk_only.cpp)\n"
    "target_link_libraries(sdk_only PRIVATE stubkit::stubkit)\n"
    "add_executable(app app.cpp)\n"
    "target_link_libraries(app PRIVATE stubkit::testing)\n"
    f"add_executable(own_rpc own_rpc.cpp {' '.join(map(str, own_sources))})\n"
    f"target_include_directories(own_rpc PRIVATE {own / 'gen'})\n"
    "target_link_libraries(own_rpc PRIVATE stubkit::core grpc++_reflection crypto)\n"
    # A service of the program's own, generated with the installed plugin.
    "find_package(trompeloeil REQUIRED)\n"
    "add_executable(inventory_app inventory_app.cpp)\n"
    "stubkit_generate(inventory_app IMPORT_DIRS protos PROTOS protos/inventory/v1/inventory.proto)\n"
    "target_link_libraries(inventory_app PRIVATE stubkit::stubkit trompeloeil::trompeloeil)\n"
    + ("add_executable(metrics_app metrics_app.cpp)\n"
       "target_link_libraries(metrics_app PRIVATE stubkit::metrics)\n" if have_metrics else ""))
# Ninja, which the build already needs: Debian's cmake does not pull in
# make, and a minimal machine has none.
run("cmake", "-G", "Ninja", "-S", cmake_project, "-B", work / "cmake-build", f"-DCMAKE_PREFIX_PATH={prefix}")
run("cmake", "--build", work / "cmake-build")
if "grpc++_reflection" in (work / "cmake-build" / "build.ninja").read_text().split("build sdk_only:")[1].split("\nbuild ")[0]:
    sys.exit("stubkit::stubkit links grpc++_reflection, which only stubkit::testing needs")
run(work / "cmake-build" / "sdk_only")
run(work / "cmake-build" / "app")
run(work / "cmake-build" / "own_rpc")
run(work / "cmake-build" / "inventory_app")
if have_metrics:
    run(work / "cmake-build" / "metrics_app")
print("install: the installed stubkit builds and runs with pkg-config and with CMake: the SDK alone, with "
      "the embedded server, beside the program's own google.rpc, with Prometheus metrics, and with a service "
      "of its own generated by stubkit_generate()")
