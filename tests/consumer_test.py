#!/usr/bin/env python3
"""Builds tests/consumer/ as its own meson project with stubkit under
subprojects/ (a symlink to this source tree), runs its app, and checks that
none of stubkit's own tests, examples or benchmarks were built.

Usage: consumer_test.py SOURCE_ROOT WORK_DIR
"""
import os
import pathlib
import shutil
import subprocess
import sys

root, work = pathlib.Path(sys.argv[1]).resolve(), pathlib.Path(sys.argv[2])
if work.exists():
    shutil.rmtree(work)
project = work / "consumer"
shutil.copytree(root / "tests" / "consumer", project)
(project / "subprojects").mkdir()
os.symlink(root, project / "subprojects" / "stubkit")
build = project / "build"


def run(*cmd):
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run(cmd, check=True)


run("meson", "setup", build, project)
run("meson", "compile", "-C", build)
run(build / "app")
built = [p.name for p in (build / "subprojects" / "stubkit").rglob("*") if p.is_file() and os.access(p, os.X_OK)]
unwanted = [n for n in built if n in ("stubkit_tests", "quickstart", "user_server", "stubkit-bench", "errors")]
if unwanted:
    sys.exit(f"stubkit built its own programs as a subproject: {unwanted}")
print("consumer: built and ran with dependency('stubkit'); no stubkit tests or examples were built")
