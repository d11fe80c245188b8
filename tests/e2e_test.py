#!/usr/bin/python3
"""End-to-end: user_server as a real process, the quickstart and the reference
document's Python client against it over TCP.

Usage: e2e_test.py USER_SERVER QUICKSTART PROTO_DIR
Runs with Debian's /usr/bin/python3 (python3-grpcio). Exits non-zero on failure.
"""
import os
import subprocess
import sys
import tempfile
import time

import grpc

from peers import check, failures, run, start_server, stop_server

USER_SERVER, QUICKSTART, PROTO_DIR = sys.argv[1:4]
HERE = os.path.dirname(os.path.abspath(__file__))
# Bad flags: a usage message and exit status 2.
for bad in (["--port", "70000"], ["--nope", "1"], ["--port"], ["--heartbeat", "soon"],
            ["--tls-cert", "/nonexistent.pem"], ["--tls-cert", __file__], ["--fault-metadata", "--tls-key", __file__],
            ["--tail-latency", "1.5:200ms"], ["--tail-latency", "0.1"], ["--tail-latency", "x:1s"],
            ["--tail-latency", "0.1:soon"], ["--tail-latency", "5%:2h"], ["--tail-latency", "5%:1s:-3"],
            ["--tail-latency", "0.05:0.5ms"], ["--max-concurrent-streams", "0"],
            ["--max-concurrent-streams", "many"]):
    r = run(USER_SERVER, *bad)
    check(r.returncode == 2 and "usage:" in r.stderr, f"user_server {' '.join(bad)} exits 2 with usage")

# The quickstart against a running user_server.
proc, target = start_server(USER_SERVER, "--heartbeat", "200ms")
r = run(QUICKSTART, "--target", target)
print(r.stdout)
check(r.returncode == 0 and "quickstart: done" in r.stdout, "quickstart --target succeeds")
check("get nobody: not found" in r.stdout, "quickstart shows a missing user as not found")
check("watch: updated ada" in r.stdout, "quickstart sees a WatchUsers change event over TCP")
first_create = [l for l in r.stdout.splitlines() if l.startswith("create ada:")]
r = run(QUICKSTART, "--target", target)
again_create = [l for l in r.stdout.splitlines() if l.startswith("create ada:")]
check(r.returncode == 0 and first_create and first_create == again_create,
      "a rerun's CreateUser with the same request_id returns the first result")

# The reference document's Python client, with stubs generated from our proto
# compiled alone (module user_pb2), unmodified.
with tempfile.TemporaryDirectory() as gen:
    r = run("protoc", f"-I{PROTO_DIR}/myservice/v1", f"--python_out={gen}", f"--grpc_out={gen}",
            "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin", "user.proto")
    check(r.returncode == 0, "Python stubs generate from user.proto alone" + r.stderr)
    env = dict(os.environ, PYTHONPATH=gen)
    r = run("/usr/bin/python3", os.path.join(HERE, "interop", "seed_client.py"), target, "250", env=env)
    print(r.stdout + r.stderr)
    check(r.returncode == 0 and "listed 253 users" in r.stdout,
          "the seed's Python client creates, gets and lists all users from user_server")

rc, took, rest = stop_server(proc)
check(rc == 0, f"user_server exits 0 on SIGTERM (got {rc})")
check(took < 10, f"user_server shuts down promptly ({took:.2f}s)")
check(rest == "", "user_server prints only the 'listening on' line on stdout")

# A token-protected server: calls need the token.
proc, target = start_server(USER_SERVER, "--token", "t0ken", "--preload", "3")
r = run(QUICKSTART, "--target", target)
check(r.returncode == 1 and "UNAUTHENTICATED" in r.stdout, "quickstart without the token is UNAUTHENTICATED")
check("t0ken" not in r.stdout + r.stderr, "the token never appears in output")
r = run(QUICKSTART, "--target", target, "--token", "t0ken")
check(r.returncode == 0, "quickstart with the token succeeds")
check("list: 6 users" in r.stdout, "preloaded users are listed")
stop_server(proc)

# A port already in use is a clear error, not a silently shared port.
proc, target = start_server(USER_SERVER)
r = run(USER_SERVER, "--port", target.rsplit(":", 1)[1])
check(r.returncode == 1 and "cannot start" in r.stderr, "user_server on a taken port fails clearly")
stop_server(proc)

# A percentage is read as one: 150% is refused as a fraction above 1.
r = run(USER_SERVER, "--tail-latency", "150%:1s")
check(r.returncode == 2 and "fraction must be from 0 to 1" in r.stderr, "--tail-latency 150%:1s is refused as above 1")
for good in ("0.05:200ms", "5%:200ms:7"):
    proc, target = start_server(USER_SERVER, "--tail-latency", good)
    rc, _, _ = stop_server(proc)
    check(rc == 0, f"user_server --tail-latency {good} starts and stops")
proc, target = start_server(USER_SERVER, "--max-concurrent-streams", "100")
rc, _, _ = stop_server(proc)
check(rc == 0, "user_server --max-concurrent-streams 100 starts and stops")

# --tail-latency: every call (F = 100%) waits 300 ms more; one that gives up
# sooner ends with DEADLINE_EXCEEDED. Raw bytes: an empty GetUserRequest.
proc, target = start_server(USER_SERVER, "--tail-latency", "100%:300ms")
with grpc.insecure_channel(target) as channel:
    get_user = channel.unary_unary("/myservice.v1.UserService/GetUser")
    start = time.monotonic()
    try:
        get_user(b"", timeout=10)
        code = grpc.StatusCode.OK
    except grpc.RpcError as e:
        code = e.code()
    took = time.monotonic() - start
    check(code == grpc.StatusCode.INVALID_ARGUMENT and took >= 0.3,
          f"--tail-latency 100%:300ms delays a call by 300 ms before it is handled ({code}, {took:.2f}s)")
    try:
        get_user(b"", timeout=0.1)
        code = grpc.StatusCode.OK
    except grpc.RpcError as e:
        code = e.code()
    check(code == grpc.StatusCode.DEADLINE_EXCEEDED, f"a caller giving up before the delay ends gets DEADLINE_EXCEEDED ({code})")
stop_server(proc)
# No call is delayed at 0%, however long the delay.
proc, target = start_server(USER_SERVER, "--tail-latency", "0%:10s")
with grpc.insecure_channel(target) as channel:
    try:
        channel.unary_unary("/myservice.v1.UserService/GetUser")(b"", timeout=5)
        code = grpc.StatusCode.OK
    except grpc.RpcError as e:
        code = e.code()
    check(code == grpc.StatusCode.INVALID_ARGUMENT, f"--tail-latency 0%:10s delays nothing ({code})")
stop_server(proc)

print(f"{len(failures)} failed")
sys.exit(1 if failures else 0)
