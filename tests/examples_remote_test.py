#!/usr/bin/env python3
"""Every example against user_server processes, as a user would run it:
  --target (and --token) against servers started with the flags each
  example's --help names; faults through --fault-metadata;
  without --fault-metadata the fault examples still succeed and say why
  nothing failed; quickstart over TLS with --tls-ca.

Usage: examples_remote_test.py USER_SERVER EXAMPLE...
"""
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

from peers import check, failures, start_server, stop_server

user_server = sys.argv[1]
examples = {os.path.basename(path): path for path in sys.argv[2:]}


def example(name, *args, env=None):
    return subprocess.run([examples[name], *args], capture_output=True, text=True, timeout=90,
                          env=None if env is None else {**os.environ, **env})


def ok(name, r, *expected):
    missing = [e for e in expected if e not in r.stdout]
    check(r.returncode == 0 and not missing,
          f"{name}: exit {r.returncode}" + (f", missing {missing}" if missing else ""))
    if r.returncode != 0 or missing:
        print(f"--- {' '.join(r.args)}\n{r.stdout}{r.stderr}---", flush=True)


servers = []


def server(*flags):
    proc, address = start_server(user_server, *flags)
    servers.append(proc)
    return address


try:
    # One server for the examples that need users, faults and a token.
    main = server("--preload", "250", "--fault-metadata", "--token", "t0ken", "--server-id", "main")
    remote = ["--target", main, "--token", "t0ken"]
    ok("quickstart", example("quickstart", *remote), "using the UserService at " + main, "quickstart: done")
    ok("retries", example("retries", *remote), "ok after 3 attempts", "CreateUser without request_id: UNAVAILABLE",
       "first attempt fails: ok")
    ok("errors", example("errors", *remote), "server asks to retry after 1.500s", "caught NotFoundError")
    ok("deadlines", example("deadlines", *remote), "2 s deadline, fast back end: OK", "Insufficient time",
       "1 s deadline, 5 s back end: code 4")
    ok("streaming", example("streaming", *remote), "resumable watch: 5 events over 3 connections",
       "bulk: created 2", "bob got: alice: hello, bob")
    ok("codegen", example("codegen", *remote), "create_user ada: ok after 2 attempts",
       "method /myservice.v1.UserService/GetUser: NO_SIDE_EFFECTS", "get_user_async: NOT_FOUND", "codegen: done")
    ok("observability", example("observability", *remote), "event=retry source=channel",
       "event=give_up source=call", "reason=\"status NOT_FOUND is not retryable\"",
       "event=page source=paginate", "counted: 2 calls, 3 attempts, 1 retries, 1 give-ups, 3 pages")
    # Logs without code: STUBKIT_LOG=rpc, one logfmt line per event on stderr.
    r = example("quickstart", *remote, env={"STUBKIT_LOG": "rpc"})
    logged = [line for line in r.stderr.splitlines() if " event=call.end " in line]
    check(r.returncode == 0 and logged and all(line.startswith("ts=") and " code=" in line for line in logged),
          f"quickstart with STUBKIT_LOG=rpc: {len(logged)} call.end lines on stderr")
    r = example("quickstart", *remote)
    check(r.returncode == 0 and "event=" not in r.stderr, "quickstart without STUBKIT_LOG: no event lines")
    # Traces without code: STUBKIT_TRACE=w3c, a trace id on every line.
    r = example("quickstart", *remote, env={"STUBKIT_LOG": "rpc", "STUBKIT_TRACE": "w3c"})
    logged = [line for line in r.stderr.splitlines() if " event=" in line]
    traced = [line for line in logged if re.search(r" trace_id=[0-9a-f]{32}( |$)", line)]
    check(r.returncode == 0 and logged and traced == logged,
          f"quickstart with STUBKIT_TRACE=w3c: {len(traced)} of {len(logged)} lines carry a trace id")

    # Metrics: the example's calls, counted by user_server --metrics-port and
    # scraped over HTTP.
    if "metrics" in examples:
        address = server("--preload", "30", "--fault-metadata", "--metrics-port", "0")
        url = servers[-1].metrics_url
        r = example("metrics", "--target", address)
        ok("metrics", r, "client, after 7 GetUser", 'grpc_status="UNAVAILABLE",stubkit_source="channel"} 1')
        get_user = 'grpc_server_call_duration_seconds_count{grpc_method="myservice.v1.UserService/GetUser",'
        expected = {get_user + 'grpc_status="OK"}': "5", get_user + 'grpc_status="NOT_FOUND"}': "2",
                    get_user + 'grpc_status="UNAVAILABLE"}': "1", "stubkit_server_users": "30",
                    "stubkit_server_watchers": "0"}
        # A call's server side ends a moment after the client has its answer.
        for _ in range(50):
            scraped = urllib.request.urlopen(url, timeout=10).read().decode()
            samples = dict(line.rsplit(" ", 1) for line in scraped.splitlines() if line and not line.startswith("#"))
            wrong = {k: samples.get(k) for k, v in expected.items() if samples.get(k) != v}
            if not wrong:
                break
            time.sleep(0.1)
        check(not wrong, f"user_server --metrics-port counted the example's calls (wrong: {wrong})")
    # The same examples a second time on the same server: new ids, same outcome.
    ok("streaming, run again", example("streaming", *remote), "bulk: created 2")
    ok("quickstart, run again", example("quickstart", *remote), "quickstart: done")
    r = example("quickstart", "--target", main)
    check(r.returncode == 1 and "UNAUTHENTICATED" in r.stdout, "quickstart without the token: UNAUTHENTICATED, exit 1")

    # Three backends behind one ipv4: target.
    backends = [server("--preload", "1", "--server-id", f"b{i}") for i in range(3)]
    r = example("channels", "--target", "ipv4:" + ",".join(backends))
    ok("channels", r, "30 calls: 0 failed; answered by")
    # round_robin spreads over the backends that are connected by then; each
    # answer names one of ours.
    answers = r.stdout.split("answered by")[-1].split()  # e.g. b0 x7 b1 x18 b2 x5
    backends_seen, counts = answers[0::2], answers[1::2]
    check(set(backends_seen) <= {"b0", "b1", "b2"} and sum(int(c[1:]) for c in counts) == 30,
          f"channels: 30 answers, each from one of the three backends ({' '.join(answers)})")

    # A server that does not honour stubkit-fault: nothing fails, and the
    # examples say so instead of pretending.
    plain = server("--preload", "250")
    ok("pagination", example("pagination", "--target", plain), "listed 250 users",
       "bounded listing stopped at 50 users", "resumed and listed the remaining 50 users",
       "list_all_users returned 250 users")
    r = example("retries", "--target", plain)
    ok("retries, no fault metadata", r, "ok after 1 attempts", "the server injected no fault")
    ok("errors, no fault metadata", example("errors", "--target", plain), "the server injected no fault")
    ok("deadlines, no fault metadata", example("deadlines", "--target", plain), "the server injected no latency")
    ok("streaming, no fault metadata", example("streaming", "--target", plain), "over 1 connections")

    # TLS: a CA, a server certificate for 127.0.0.1 signed by it.
    with tempfile.TemporaryDirectory() as d:
        def openssl(*args):
            subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
                "-keyout", "ca.key", "-out", "ca.pem")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key",
                "-out", "server.csr")
        with open(os.path.join(d, "san.ext"), "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost")
        openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "1", "-extfile", "san.ext", "-out", "server.pem")
        tls = server("--preload", "1", "--tls-cert", os.path.join(d, "server.pem"), "--tls-key",
                     os.path.join(d, "server.key"), "--token", "t0ken")
        ca = ["--tls-ca", os.path.join(d, "ca.pem")]
        ok("quickstart over TLS", example("quickstart", "--target", tls, "--token", "t0ken", *ca), "quickstart: done")
        ok("quickstart over TLS, server name", example("quickstart", "--target", tls, "--token", "t0ken", *ca,
                                                       "--tls-server-name", "localhost"), "quickstart: done")
        r = example("quickstart", "--target", tls)
        check(r.returncode == 1 and "UNAVAILABLE" in r.stdout, "quickstart in plaintext to a TLS server: exit 1")
        r = example("quickstart", "--tls-ca", os.path.join(d, "missing.pem"), "--target", tls)
        check(r.returncode == 2 and "cannot read" in r.stderr, "an unreadable --tls-ca: exit 2")
finally:
    for proc in servers:
        rc, _, _ = stop_server(proc)
        check(rc == 0, f"user_server stopped cleanly (exit {rc})")

print(f"{len(failures)} failed")
sys.exit(1 if failures else 0)
