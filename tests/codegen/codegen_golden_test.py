#!/usr/bin/env python3
"""protoc-gen-stubkit's output for the golden protos, byte for byte.

Usage: codegen_golden_test.py PROTOC PLUGIN GOLDEN_DIR PROTO... [--update]

Runs protoc with the plugin on each PROTO (relative to GOLDEN_DIR) and
compares the two headers it writes with GOLDEN_DIR/expected/. With
--update, rewrites the expected files instead (after a deliberate change
of the generator: review the diff before committing it).
"""
import difflib
import pathlib
import subprocess
import sys
import tempfile

args = [a for a in sys.argv[1:] if a != "--update"]
update = "--update" in sys.argv
protoc, plugin, golden = args[0], args[1], pathlib.Path(args[2])
protos = args[3:]
expected_root = golden / "expected"
failures = 0
with tempfile.TemporaryDirectory() as tmp:
    for proto in protos:
        run = subprocess.run([protoc, f"--proto_path={golden}", f"--stubkit_out={tmp}",
                              f"--plugin=protoc-gen-stubkit={plugin}", str(golden / proto)],
                             capture_output=True, text=True)
        if run.returncode != 0:
            print(f"FAIL {proto}: protoc exited {run.returncode}:\n{run.stderr}")
            failures += 1
            continue
        stem = proto[: -len(".proto")]
        for suffix in (".stubkit.h", ".stubkit_mock.h"):
            got = (pathlib.Path(tmp) / (stem + suffix)).read_text()
            want_path = expected_root / (stem + suffix)
            if update:
                want_path.parent.mkdir(parents=True, exist_ok=True)
                want_path.write_text(got)
                print(f"updated {want_path}")
                continue
            want = want_path.read_text() if want_path.exists() else ""
            if got == want:
                print(f"ok {stem + suffix}")
                continue
            failures += 1
            print(f"FAIL {stem + suffix} differs from {want_path}:")
            sys.stdout.writelines(difflib.unified_diff(want.splitlines(True), got.splitlines(True),
                                                       "expected", "generated", n=2))
print(f"{failures} golden file(s) differ" if failures else "every golden file matches")
sys.exit(1 if failures else 0)
