#!/usr/bin/python3
"""Server reflection, as tools use it: every service user_server serves
(health and reflection included) is listed and fully described, and buf curl
calls them through reflection alone.

Usage: reflection_test.py USER_SERVER SOURCE_ROOT
Runs with Debian's /usr/bin/python3 (python3-grpcio); the reflection client's
stubs are generated from grpc-proto's reflection.proto. The buf curl part is
skipped when buf (installed by scripts/setup.sh) is missing. Exits non-zero
on failure.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

from peers import check, failures, start_server, stop_server

USER_SERVER, SOURCE_ROOT = sys.argv[1:3]
REFLECTION_PROTO = "/usr/share/grpc-proto/grpc/reflection/v1alpha/reflection.proto"
EXPECTED = {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection", "myservice.v1.UserService"}


def describe_all(target, gen):
    """Lists the services over reflection and resolves each one's full
    descriptor (its file and every file it imports) into a fresh pool."""
    sys.path.insert(0, gen)
    import grpc
    from google.protobuf import descriptor_pb2, descriptor_pool
    import reflection_pb2
    import reflection_pb2_grpc

    channel = grpc.insecure_channel(target)
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    def ask(**request):
        responses = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(**request)]),
                                                   timeout=10))
        assert len(responses) == 1, responses
        return responses[0]

    listed = {s.name for s in ask(list_services="").list_services_response.service}
    check(EXPECTED <= listed, f"reflection lists {sorted(EXPECTED)} (got {sorted(listed)})")

    pool = descriptor_pool.DescriptorPool()
    added = set()

    def add(serialized_files):
        protos = [descriptor_pb2.FileDescriptorProto.FromString(b) for b in serialized_files]
        by_name = {p.name: p for p in protos}

        def add_one(proto):
            if proto.name in added:
                return
            for dependency in proto.dependency:
                if dependency in by_name:
                    add_one(by_name[dependency])
                elif dependency not in added:
                    response = ask(file_by_filename=dependency)
                    if response.HasField("error_response"):
                        check(False, f"reflection has {dependency}: {response.error_response.error_message}")
                        return
                    add(response.file_descriptor_response.file_descriptor_proto)
            pool.Add(proto)
            added.add(proto.name)

        for proto in protos:
            add_one(proto)

    for service in sorted(listed):
        response = ask(file_containing_symbol=service)
        if response.HasField("error_response"):
            check(False, f"reflection describes {service}: {response.error_response.error_message}")
            continue
        add(response.file_descriptor_response.file_descriptor_proto)
        try:
            descriptor = pool.FindServiceByName(service)
            types = [(m.input_type.full_name, m.output_type.full_name) for m in descriptor.methods]
            check(bool(types), f"reflection describes {service} fully: {len(types)} methods, "
                  "every request and response type resolved")
        except KeyError as error:
            check(False, f"reflection describes {service}: {error}")
    channel.close()


def buf_curl(buf, target):
    base = ["--protocol", "grpc", "--http2-prior-knowledge"]
    r = subprocess.run([buf, "curl", *base, "--list-methods", f"http://{target}"],
                       capture_output=True, text=True, timeout=60)
    methods = set(r.stdout.split())
    wanted = {"grpc.health.v1.Health/Check", "grpc.health.v1.Health/Watch", "myservice.v1.UserService/ListUsers",
              "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"}
    check(r.returncode == 0 and wanted <= methods, f"buf curl --list-methods lists every service's methods {r.stderr}")

    r = subprocess.run([buf, "curl", *base, "-d", '{"service": "myservice.v1.UserService"}',
                        f"http://{target}/grpc.health.v1.Health/Check"], capture_output=True, text=True, timeout=60)
    answer = json.loads(r.stdout) if r.returncode == 0 else {}
    check(answer.get("status") == "SERVING", f"buf curl calls grpc.health.v1.Health/Check: {r.stdout}{r.stderr}")

    r = subprocess.run([buf, "curl", *base, "-d", '{"page_size": 2}',
                        f"http://{target}/myservice.v1.UserService/ListUsers"], capture_output=True, text=True,
                       timeout=60)
    answer = json.loads(r.stdout) if r.returncode == 0 else {}
    check(len(answer.get("users", [])) == 2 and answer.get("nextPageToken"),
          f"buf curl calls myservice.v1.UserService/ListUsers: {r.stdout[:200]}{r.stderr}")


def main():
    proc, target = start_server(USER_SERVER, "--preload", "5")
    try:
        with tempfile.TemporaryDirectory() as gen:
            # Compiled as a top-level module: a generated "grpc" package
            # would hide grpcio's.
            shutil.copy(REFLECTION_PROTO, gen)
            r = subprocess.run(["protoc", f"-I{gen}", f"--python_out={gen}", f"--grpc_out={gen}",
                                "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin", "reflection.proto"],
                               capture_output=True, text=True, cwd=gen)
            check(r.returncode == 0, "reflection client stubs generate from grpc-proto" + r.stderr)
            describe_all(target, gen)
        buf = os.path.join(SOURCE_ROOT, ".tools", "node_modules", ".bin", "buf")
        if os.access(buf, os.X_OK):
            buf_curl(buf, target)
        else:
            print("skip buf curl: buf is not installed (scripts/setup.sh installs it with npm)")
    finally:
        stop_server(proc)
    if failures:
        print(f"{len(failures)} failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
