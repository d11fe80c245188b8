"""Runs a libFuzzer target for a while from the checked-in corpus, keeping
new inputs in a scratch directory (the source tree is never written), and
prints the executions and coverage it reached.

    run_fuzz.py BINARY SECONDS CORPUS_DIR SCRATCH_DIR
"""
import pathlib
import re
import shutil
import subprocess
import sys


def main() -> int:
    binary, seconds, corpus, scratch = sys.argv[1], sys.argv[2], sys.argv[3], pathlib.Path(sys.argv[4])
    shutil.rmtree(scratch, ignore_errors=True)
    (scratch / "new").mkdir(parents=True)
    run = subprocess.run(
        [binary, f"-max_total_time={seconds}", "-print_final_stats=1", "-max_len=4096",
         f"-artifact_prefix={scratch}/", str(scratch / "new"), corpus],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    log = run.stdout
    (scratch / "fuzz.log").write_text(log)
    executions = re.findall(r"stat::number_of_executed_units: (\d+)", log)
    coverage = re.findall(r"cov: (\d+)", log)
    name = pathlib.Path(binary).name
    print(f"{name}: {executions[-1] if executions else '?'} inputs in {seconds} s, "
          f"coverage {coverage[-1] if coverage else '?'} edges, exit {run.returncode}")
    if run.returncode != 0:
        print(log[-4000:])
        crashes = sorted(scratch.glob("crash-*")) + sorted(scratch.glob("timeout-*")) + sorted(scratch.glob("leak-*"))
        for c in crashes:
            print(f"reproducer: {c}")
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
