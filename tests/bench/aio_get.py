#!/usr/bin/python3
"""B11 helper: a Python client with Debian's grpc.aio making CALLS GetUser
calls, WINDOW at a time (WINDOW workers, each calling in turn), on one channel.

Usage: aio_get.py PROTO_DIR TARGET ROUNDS CALLS WINDOW USER_ID
Prints a JSON list of seconds per round (after one warm-up round), with the
client's own CPU seconds per round appended last.
"""
import asyncio
import json
import subprocess
import sys
import tempfile
import time

proto_dir, target = sys.argv[1], sys.argv[2]
rounds, calls, window, user_id = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
gen = tempfile.mkdtemp()
subprocess.run(["protoc", f"-I{proto_dir}/myservice/v1", f"--python_out={gen}", f"--grpc_out={gen}",
                "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin", "user.proto"], check=True)
sys.path[:0] = [gen]
import grpc  # noqa: E402
import user_pb2  # noqa: E402
import user_pb2_grpc  # noqa: E402


async def one_round(stub):
    remaining = [calls]

    async def worker():
        while remaining[0] > 0:
            remaining[0] -= 1
            await stub.GetUser(user_pb2.GetUserRequest(id=user_id), timeout=5)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(window)))
    return time.perf_counter() - start


async def main():
    async with grpc.aio.insecure_channel(target) as channel:
        stub = user_pb2_grpc.UserServiceStub(channel)
        await one_round(stub)  # warm-up: connect
        cpu = time.process_time()
        times = [await one_round(stub) for _ in range(rounds)]
        print(json.dumps(times + [(time.process_time() - cpu) / rounds]))


asyncio.run(main())
