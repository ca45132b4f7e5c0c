#!/usr/bin/env python3
"""Checks that a release build made with CFLAGS already set in the
environment keeps the idle RSS that BENCHMARKS.md reports.

    python3 bench/idle_rss.py            # CFLAGS=-O2, within 1 MiB
    python3 bench/idle_rss.py --breakdown   # where the idle RSS is, after start and one call

`.cargo/config.toml` forces mimalloc's arena setting into CFLAGS; were it
not forced, a CFLAGS from the environment would replace it and the idle RSS
would grow by about 8 MiB. The build runs with the given CFLAGS, the binary
is started a few times on loopback (no call is made: start-up makes no
network calls), and the median RSS once SERVING is compared with the figure
in BENCHMARKS.md. Exits 1 if it is further away than the tolerance.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (the benchmark's shared helpers)


def documented_idle_mib():
    text = (common.ROOT / "BENCHMARKS.md").read_text()
    match = re.search(r"\| idle RSS [^|]*\| ([0-9.]+) MiB \|", text)
    if not match:
        sys.exit("BENCHMARKS.md reports no idle RSS")
    return float(match.group(1))


def categories(pid, binary):
    """The process's resident KiB by what it is, from /proc/PID/smaps: the
    binary's text (its executable mappings), its read-only data and
    relocations, its writable data, the heap (anonymous memory: glibc's
    heap, mimalloc's arenas, the worker threads' stacks), the main thread's
    stack, shared libraries, and the rest (the vDSO, the vvar page)."""
    found = {}
    category = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and len(parts) >= 5 and ":" in parts[3]:
                perms, path = parts[1], parts[5] if len(parts) > 5 else ""
                if path == str(binary):
                    category = ("binary text" if "x" in perms else
                                "binary writable data" if "w" in perms else
                                "binary read-only data")
                elif path.startswith("[stack"):
                    category = "stacks"
                elif path in ("", "[heap]"):
                    # Thread stacks are anonymous too, and counted here.
                    category = "heap (anonymous)"
                elif path.startswith("/"):
                    category = "shared libraries"
                else:
                    category = "other"
            elif parts[0] == "Rss:" and category:
                found[category] = found.get(category, 0) + int(parts[1])
    return found


def breakdown():
    """The idle RSS after start and after one call, by category."""
    import signal
    import time
    subprocess.run(["cargo", "build", "--locked", "--release", "--bin", "cognito-facade",
                    "--example", "client"], check=True, cwd=common.ROOT)
    closed = common.free_port()
    port = common.free_port()
    proc = subprocess.Popen(common.service_args(port, closed),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        common.wait_port(port)
        time.sleep(0.5)
        after_start = categories(proc.pid, common.SERVICE)
        # One call: refused by the closed upstream, after the whole path ran.
        subprocess.run([str(common.ROOT / "target" / "release" / "examples" / "client"),
                        "--addr", f"127.0.0.1:{port}", "--token", "idle.rss.token",
                        "--timeout", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        after_call = categories(proc.pid, common.SERVICE)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    names = sorted(set(after_start) | set(after_call), key=lambda n: -after_call.get(n, 0))
    print("| resident | after start | after one call |")
    print("|---|---|---|")
    for name in names:
        print(f"| {name} | {after_start.get(name, 0) / 1024:.1f} MiB | "
              f"{after_call.get(name, 0) / 1024:.1f} MiB |")
    print(f"| total | {sum(after_start.values()) / 1024:.1f} MiB | "
          f"{sum(after_call.values()) / 1024:.1f} MiB |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cflags", default="-O2")
    parser.add_argument("--tolerance-mib", type=float, default=1.0)
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--breakdown", action="store_true",
                        help="where the idle RSS is (release build as it is), then exit")
    args = parser.parse_args()
    if args.breakdown:
        return breakdown()

    env = dict(os.environ, CFLAGS=args.cflags)
    subprocess.run(["cargo", "build", "--locked", "--release", "--bin", "cognito-facade",
                    "--example", "loadgen", "--example", "cognito-standin"],
                   check=True, cwd=common.ROOT, env=env)
    closed = common.free_port()  # Cognito's endpoint; never called
    idle_kb = []
    for _ in range(args.starts):
        port = common.free_port()
        out = common.sh(str(common.LOADGEN), "--mode", "startup", "--target", f"http://127.0.0.1:{port}",
                     "--", *common.service_args(port, closed))
        idle_kb.append(json.loads(out.strip().splitlines()[-1])["idle_rss_kb"])
    measured = statistics.median(idle_kb) / 1024
    documented = documented_idle_mib()
    within = abs(measured - documented) <= args.tolerance_mib
    print(f"idle RSS with CFLAGS={args.cflags!r}: {measured:.1f} MiB "
          f"(starts: {', '.join(f'{kb / 1024:.1f}' for kb in idle_kb)}); "
          f"BENCHMARKS.md: {documented:.1f} MiB; tolerance {args.tolerance_mib} MiB: "
          f"{'ok' if within else 'FAILED'}")
    sys.exit(0 if within else 1)


if __name__ == "__main__":
    main()
