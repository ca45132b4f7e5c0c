"""User-space instructions per call, counted by valgrind (cachegrind), for
`bench/ab.py --instructions` and the callers scenario of `bench/run.py`.

A figure the machine's slow spells do not move, fine enough to resolve a
microsecond where timed CPU moves by ten (the kernel's share of a call is
not in it). The service runs under valgrind for CALLS calls and for CALLS/5,
one at a time over one HTTP/2 connection (h2load; no two calls in flight,
so single flight has nothing to share), and the difference over the
difference in calls is the cost of one call, start-up and shutdown cancelled.

The helpers (`free_port`, `service_args`, `wait_port`, `sh`) are
`bench/run.py`'s, passed in as `h`."""

import os
import shutil
import subprocess

PATH = "/cognito.idp.v1.IdentityProviderService/GetUserAuthFactors"


def ensure_valgrind():
    if shutil.which("valgrind"):
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "install", "-y", "-qq", "valgrind"], check=True, env=env)


def count(h, binary, flags, env, nginx_port, calls, body, headers=()):
    """Instructions of the whole process (start-up, `calls` calls, shutdown)."""
    port = h.free_port()
    args = h.service_args(port, nginx_port, *flags, binary=binary)
    proc = subprocess.Popen(["valgrind", "--tool=cachegrind", "--cache-sim=no",
                             "--cachegrind-out-file=/dev/null", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, **env))
    try:
        h.wait_port(port, timeout=120)
        extra = [word for header in headers for word in ("-H", header)]
        out = h.sh("h2load", "-n", str(calls), "-c", "1", "-m", "1",
                   "-H", "content-type: application/grpc", "-H", "te: trailers", *extra,
                   "-d", str(body), f"http://127.0.0.1:{port}{PATH}")
    finally:
        proc.terminate()
        err = proc.communicate(timeout=120)[1]
    if f"{calls} succeeded" not in out or "grpc-status" in out:
        raise RuntimeError(f"{binary} {flags}: h2load: {out}")
    refs = [line for line in err.splitlines() if "I   refs:" in line or "I refs:" in line]
    if not refs:
        raise RuntimeError(f"{binary} {flags}: no instruction count from valgrind: {err[-500:]}")
    return int(refs[-1].rsplit(":", 1)[1].replace(",", ""))


def per_call(h, binary, flags, env, nginx_port, calls, body, headers=()):
    """Instructions of one call: runs of `calls` and `calls // 5` calls."""
    few = calls // 5
    return ((count(h, binary, flags, env, nginx_port, calls, body, headers)
             - count(h, binary, flags, env, nginx_port, few, body, headers)) / (calls - few))
