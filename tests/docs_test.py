#!/usr/bin/env python3
"""Docs stay true to the code: every C++ code block must carry a
`<!-- snippet: FILE -->` marker, and every code block under a
`<!-- snippet: examples/X.cpp -->` marker must appear in that file, line for
line (runs of whitespace aside), in order and contiguous.

Usage: docs_test.py SOURCE_ROOT
"""
import pathlib
import re
import sys

root = pathlib.Path(sys.argv[1])
marker = re.compile(r"<!-- snippet: (\S+) -->\s*\n```cpp\n(.*?)```", re.S)
checked, failures = 0, []
for doc in sorted((root / "docs").glob("*.md")):
    for match in marker.finditer(doc.read_text()):
        source, block = match.group(1), match.group(2)
        path = root / source
        if not path.exists():
            failures.append(f"{doc.name}: {source} does not exist")
            continue
        # Compare tokens, not spacing: a formatter may realign comments.
        want = [" ".join(l.split()) for l in block.splitlines() if l.strip()]
        have = [" ".join(l.split()) for l in path.read_text().splitlines() if l.strip()]
        found = any(have[i:i + len(want)] == want for i in range(len(have) - len(want) + 1))
        checked += 1
        if not found:
            failures.append(f"{doc.name}: a snippet is not in {source}: {want[0]!r} ...")
    # Every C++ block must come from a compiled file.
    for block in re.finditer(r"(<!-- snippet: \S+ -->\s*\n)?```cpp\n", doc.read_text()):
        if not block.group(1):
            failures.append(f"{doc.name}: a cpp block without a snippet marker")
for f in failures:
    print("FAIL", f)
print(f"{checked} snippets checked, {len(failures)} stale")
sys.exit(1 if failures or checked == 0 else 0)
