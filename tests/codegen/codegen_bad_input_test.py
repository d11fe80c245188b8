#!/usr/bin/env python3
"""Protos protoc-gen-stubkit cannot serve get a protoc error naming the file
and the method (or type), never a crash and never a silently partial output.

Usage: codegen_bad_input_test.py PROTOC PLUGIN
"""
import pathlib
import subprocess
import sys
import tempfile

protoc, plugin = sys.argv[1], sys.argv[2]

CASES = [
    # (name, proto text, parameter, words the error must contain)
    ("two methods whose C++ names collide", """
syntax = "proto3";
package bad.v1;
message M { string a = 1; }
service Clash {
  rpc GetUser(M) returns (M);
  rpc Get_User(M) returns (M);
}
""", "", ["bad/v1/input.proto", "bad.v1.Clash", "method Get_User", "get_user", "method GetUser"]),
    ("a method named like another's pages range", """
syntax = "proto3";
package bad.v1;
message ListRequest { int32 page_size = 1; string page_token = 2; }
message ListResponse { repeated string items = 1; string next_page_token = 2; }
service Pages {
  rpc ListItems(ListRequest) returns (ListResponse);
  rpc ListItemsPages(ListRequest) returns (ListResponse);
}
""", "", ["bad/v1/input.proto", "bad.v1.Pages", "method ListItemsPages", "list_items_pages"]),
    ("a generated type that a message of the package already is", """
syntax = "proto3";
package bad.v1;
message ThingClient { string a = 1; }
service Thing { rpc Get(ThingClient) returns (ThingClient); }
""", "", ["bad/v1/input.proto", "bad.v1.Thing", "ThingClient"]),
    ("a service named like another's pool stub", """
syntax = "proto3";
package bad.v1;
message M { string a = 1; }
service Thing { rpc Get(M) returns (M); }
service ThingPoolStub { rpc Get(M) returns (M); }
""", "", ["bad/v1/input.proto", "bad.v1.Thing", "ThingPoolStub", "rename"]),
    ("two services whose generated types collide", """
syntax = "proto3";
package bad.v1;
message M { string a = 1; }
service Glob { rpc Get(M) returns (M); }
service BasicGlob { rpc Get(M) returns (M); }
""", "", ["bad/v1/input.proto", "bad.v1.BasicGlob", "BasicGlobClient", "bad.v1.Glob"]),
    ("a parameter the plugin does not take", """
syntax = "proto3";
package bad.v1;
message M { string a = 1; }
service Fine { rpc Get(M) returns (M); }
""", "lite", ["bad/v1/input.proto", "no parameters", "lite"]),
]

failures = 0
for name, text, parameter, words in CASES:
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp) / "protos"
        (root / "bad" / "v1").mkdir(parents=True)
        (root / "bad" / "v1" / "input.proto").write_text(text)
        out = pathlib.Path(tmp) / "out"
        out.mkdir()
        flag = f"--stubkit_out={parameter + ':' if parameter else ''}{out}"
        run = subprocess.run([protoc, f"--proto_path={root}", flag, f"--plugin=protoc-gen-stubkit={plugin}",
                              str(root / "bad" / "v1" / "input.proto")], capture_output=True, text=True, timeout=60)
        written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
        problems = []
        if run.returncode == 0:
            problems.append("protoc succeeded")
        if run.returncode < 0 or "Segmentation" in run.stderr or "terminate" in run.stderr:
            problems.append(f"the plugin crashed (exit {run.returncode})")
        problems += [f"the error does not say {w!r}" for w in words if w not in run.stderr]
        if written:
            problems.append(f"files were written: {written}")
        if problems:
            failures += 1
            print(f"FAIL {name}: {'; '.join(problems)}\n  stderr: {run.stderr.strip()}")
        else:
            print(f"ok {name}: {run.stderr.strip()}")
print(f"{failures} of {len(CASES)} bad inputs mishandled" if failures else f"all {len(CASES)} bad inputs refused clearly")
sys.exit(1 if failures else 0)
