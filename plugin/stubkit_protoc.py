#!/usr/bin/env python3
"""Runs protoc for the meson helper `stubkit_protoc` with every import root
and input file made absolute: meson hands a generator its input relative to
the build directory, and protoc matches an input to a --proto_path only by
an exact prefix of the same spelling.

Usage: stubkit_protoc.py PROTOC [protoc arguments]...
"""
import os
import sys

protoc = sys.argv[1]
args = []
for arg in sys.argv[2:]:
    if arg.startswith("--proto_path="):
        arg = "--proto_path=" + os.path.abspath(arg[len("--proto_path="):])
    elif arg.startswith("-I") and len(arg) > 2:
        arg = "--proto_path=" + os.path.abspath(arg[2:])
    elif arg.endswith(".proto") and not arg.startswith("-"):
        arg = os.path.abspath(arg)
    args.append(arg)
os.execv(protoc, [protoc] + args)
