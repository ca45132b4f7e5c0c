#!/usr/bin/env python3
"""Checks that a release build made with CFLAGS already set in the
environment keeps the idle RSS that BENCHMARKS.md reports.

    python3 bench/idle_rss.py            # CFLAGS=-O2, within 1 MiB

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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cflags", default="-O2")
    parser.add_argument("--tolerance-mib", type=float, default=1.0)
    parser.add_argument("--starts", type=int, default=3)
    args = parser.parse_args()

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
