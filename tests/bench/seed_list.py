#!/usr/bin/python3
"""B6 helper: times the reference document's Python client (tests/interop/
seed_client.py, unmodified UserClient) listing every user of a server.

Usage: seed_list.py PROTO_DIR SEED_DIR TARGET ROUNDS WORK_US
Prints a JSON list of seconds per round. WORK_US busy-waits that many
microseconds per user after the listing (the reference client loads all
users first, then the caller works on them).
"""
import json
import os
import subprocess
import sys
import tempfile
import time

proto_dir, seed_dir, target, rounds, work_us = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
gen = tempfile.mkdtemp()
subprocess.run(["protoc", f"-I{proto_dir}/myservice/v1", f"--python_out={gen}", f"--grpc_out={gen}",
                "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin", "user.proto"], check=True)
sys.path[:0] = [gen, seed_dir]
from seed_client import UserClient  # noqa: E402


def busy(us):
    end = time.perf_counter() + us / 1e6
    while time.perf_counter() < end:
        pass


client = UserClient(target)
client.list_all_users()  # warm-up: connect
times = []
for _ in range(rounds):
    start = time.perf_counter()
    users = client.list_all_users()
    if work_us > 0:
        for _user in users:
            busy(work_us)
    times.append(time.perf_counter() - start)
print(json.dumps(times))
