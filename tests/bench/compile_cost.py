#!/usr/bin/env python3
"""B9: compile cost of including stubkit vs only the generated stub header.

Takes the compile command of a stubkit translation unit from
compile_commands.json, compiles two one-line files with it (one including
stubkit/stubkit.hpp, one including myservice/v1/user.grpc.pb.h), alternating,
and prints a Markdown row and a JSON object.

Usage: compile_cost.py BUILD_DIR [ROUNDS] [HEADER] [JSON]
HEADER defaults to stubkit/stubkit.hpp; "generated-client" compares a TU
calling GetUser through the generated UserServiceClient with one calling
the raw stub, "generated-client-4" the same with four unary methods. With JSON (stubkit-bench's output
file) the row is appended to that file's array.
"""
import json
import pathlib
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

build = pathlib.Path(sys.argv[1]).resolve()
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
header_under_test = sys.argv[3] if len(sys.argv) > 3 else "stubkit/stubkit.hpp"
commands = json.loads((build / "compile_commands.json").read_text())
entry = next(c for c in commands if c["file"].endswith("examples/errors.cpp"))
args = shlex.split(entry["command"])
args = [a for a in args if a != "ccache"]
# Drop dependency-file flags (-MD, -MQ x, -MF x): they name the original object.
clean, skip = [], False
for a in args:
    if skip:
        skip = False
    elif a in ("-MQ", "-MF"):
        skip = True
    elif a != "-MD":
        clean.append(a)
args = clean
src_index = args.index("-c") + 1
out_index = args.index("-o") + 1

with tempfile.TemporaryDirectory() as tmp:
    files = {}
    if header_under_test == "generated-client":
        # Both TUs make one GetUser call: through the generated client, and
        # through the raw stub (the baseline).
        sources = {
            "stubkit": '#include "myservice/v1/user.stubkit.h"\n'
                       'bool get(std::shared_ptr<grpc::ChannelInterface> c) {\n'
                       '  myservice::v1::UserServiceClient client(c);\n'
                       '  return client.get_user(myservice::v1::GetUserRequest()).ok();\n}\n',
            "generated": '#include "myservice/v1/user.grpc.pb.h"\n'
                         'bool get(std::shared_ptr<grpc::ChannelInterface> c) {\n'
                         '  auto stub = myservice::v1::UserService::NewStub(c);\n'
                         '  grpc::ClientContext ctx;\n  myservice::v1::User user;\n'
                         '  return stub->GetUser(&ctx, myservice::v1::GetUserRequest(), &user).ok();\n}\n',
        }
    elif header_under_test == "generated-client-4":
        # Four unary methods of one service called in one TU: what each
        # further method costs once the first is compiled.
        calls = [("create_user", "CreateUser", "CreateUserRequest", "CreateUserResponse"),
                 ("get_user", "GetUser", "GetUserRequest", "User"),
                 ("update_user", "UpdateUser", "UpdateUserRequest", "User"),
                 ("delete_user", "DeleteUser", "DeleteUserRequest", "google::protobuf::Empty")]
        ns = "myservice::v1::"
        sources = {
            "stubkit": '#include "myservice/v1/user.stubkit.h"\n'
                       'int get(std::shared_ptr<grpc::ChannelInterface> c) {\n'
                       f'  {ns}UserServiceClient client(c);\n  int ok = 0;\n' +
                       "".join(f"  ok += client.{m}({ns}{req}()).ok();\n" for m, _, req, _ in calls) +
                       '  return ok;\n}\n',
            "generated": '#include "myservice/v1/user.grpc.pb.h"\n'
                         'int get(std::shared_ptr<grpc::ChannelInterface> c) {\n'
                         f'  auto stub = {ns}UserService::NewStub(c);\n  int ok = 0;\n' +
                         "".join(f"  {{\n    grpc::ClientContext ctx;\n    {resp if '::' in resp else ns + resp} r;\n"
                                 f"    ok += stub->{rpc}(&ctx, {ns}{req}(), &r).ok();\n  }}\n"
                                 for _, rpc, req, resp in calls) +
                         '  return ok;\n}\n',
        }
    else:
        sources = {name: f'#include "myservice/v1/user.grpc.pb.h"\n#include "{header}"\nint main() {{ return 0; }}\n'
                   for name, header in (("stubkit", header_under_test), ("generated", "myservice/v1/user.grpc.pb.h"))}
    for name, text in sources.items():
        path = pathlib.Path(tmp) / f"{name}.cpp"
        path.write_text(text)
        files[name] = path
    times = {"stubkit": [], "generated": []}
    for r in range(rounds):
        order = ["stubkit", "generated"] if r % 2 == 0 else ["generated", "stubkit"]
        for name in order:
            cmd = list(args)
            cmd[src_index] = str(files[name])
            cmd[out_index] = str(pathlib.Path(tmp) / f"{name}.o")
            start = time.monotonic()
            subprocess.run(cmd, cwd=entry["directory"], check=True)
            times[name].append(time.monotonic() - start)

ours, base = statistics.median(times["stubkit"]), statistics.median(times["generated"])
ratio = ours / base
ratios = [a / b for a, b in zip(times["stubkit"], times["generated"])]
what = {
    "generated-client": "compile a TU calling GetUser through the generated UserServiceClient vs the raw stub",
    "generated-client-4": "compile a TU calling 4 unary methods through the generated UserServiceClient vs the raw stub",
}.get(header_under_test, f"compile a TU including {header_under_test} (+ user.grpc.pb.h) vs only user.grpc.pb.h")
print(f"| B9 | {what} | {ours * 1000:.0f} ms | "
      f"{base * 1000:.0f} ms | {ratio:.3f} ({min(ratios):.3f}-{max(ratios):.3f}) | <= 1.3 | {'yes' if ratio <= 1.3 else 'NO'} |")
row = {"id": "B9", "what": what,
       "stubkit": ours * 1000, "baseline": base * 1000, "unit": "ms", "ratio": ratio,
       "ratio_low": min(ratios), "ratio_high": max(ratios), "goal": "<= 1.3", "met": ratio <= 1.3}
if len(sys.argv) > 4:
    out = pathlib.Path(sys.argv[4])
    rows = json.loads(out.read_text()) if out.exists() else []
    rows.append(row)
    out.write_text(json.dumps(rows, indent=2) + "\n")
else:
    print(json.dumps(row))
