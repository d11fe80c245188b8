"""What the Python peer tests share: a user_server process, and checks that
print as they go and are counted at the end."""
import signal
import subprocess
import time

failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


def start_server(user_server, *flags):
    """Starts user_server on a free port; returns the process and its address."""
    proc = subprocess.Popen([user_server, "--port", "0", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    proc.metrics_url = None
    if line.startswith("metrics on "):  # --metrics-port: the URL comes first
        proc.metrics_url = line[len("metrics on "):]
        line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"user_server did not start: {line!r} {proc.stderr.read()}")
    return proc, line[len("listening on "):]


def stop_server(proc):
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = "hung"
    rest = proc.stdout.read()
    return rc, time.monotonic() - start, rest


def run(*cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)
