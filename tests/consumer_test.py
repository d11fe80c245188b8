#!/usr/bin/env python3
"""Builds a consumer project as its own meson project with stubkit under
subprojects/ (a symlink to this source tree), runs its app, and checks that
none of stubkit's own tests, examples or benchmarks were built.

  consumer: dependency('stubkit') and dependency('stubkit-testing').
  consumer_own_rpc: a program that compiles its own google/rpc protos (a
    copy, as from a googleapis checkout) with stubkit built with
    -Dgoogle_rpc=external: stubkit builds no google.rpc code of its own,
    and stubkit's errors and server use the program's messages.

Usage: consumer_test.py SOURCE_ROOT WORK_DIR PROJECT
"""
import os
import pathlib
import shutil
import subprocess
import sys

root, work, name = pathlib.Path(sys.argv[1]).resolve(), pathlib.Path(sys.argv[2]), sys.argv[3]
if work.exists():
    shutil.rmtree(work)
project = work / name
shutil.copytree(root / "tests" / name, project)
(project / "subprojects").mkdir()
os.symlink(root, project / "subprojects" / "stubkit")
if name == "consumer_own_rpc":
    for proto in ("status.proto", "error_details.proto"):
        shutil.copy(root / "proto" / "google" / "rpc" / proto, project / "googleapis" / "google" / "rpc" / proto)
build = project / "build"


def run(*cmd):
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run(cmd, check=True)


run("meson", "setup", build, project)
run("meson", "compile", "-C", build)
run(build / "app")
if name == "consumer":
    run(build / "inventory_app")  # its own proto, through stubkit's meson helper
built = [p.name for p in (build / "subprojects" / "stubkit").rglob("*") if p.is_file() and os.access(p, os.X_OK)]
unwanted = [n for n in built if n in ("stubkit_tests", "quickstart", "user_server", "stubkit-bench", "errors")]
if unwanted:
    sys.exit(f"stubkit built its own programs as a subproject: {unwanted}")
if name == "consumer_own_rpc":
    # One copy of each message: no library, no header of stubkit's own.
    ours = [str(p) for p in (build / "subprojects" / "stubkit").rglob("*")
            if "google_rpc" in p.name or (p.parent.name == "rpc" and p.name.endswith(".pb.h"))]
    if ours:
        sys.exit(f"-Dgoogle_rpc=external still built stubkit's google.rpc: {ours}")
print(f"{name}: built and ran with stubkit as a subproject; no stubkit tests or examples were built")
