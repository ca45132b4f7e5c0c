#!/usr/bin/env python3
"""A/B runs: two or more builds or settings of the service, side by side in one session.

    python3 bench/ab.py --variant A 'target/ab/a/cognito-facade' \\
                        --variant B 'TOKIO_WORKER_THREADS=1 target/ab/b/cognito-facade --coalesce=false'

Each variant is `NAME 'words'`: leading `KEY=VALUE` words are its
environment, then the service binary, then extra flags. The variants run
interleaved, `--pairs` rounds of each, every run on a fresh service against
the nginx stand-in of `bench/common.py`, loaded by the load generator (distinct
token per call) at each `--concurrency`. With `--memory`, each round also
holds `--inflight` calls against a stand-in that answers in 1 s and samples
the service's peak RSS. With `--instructions CALLS`, no timed load at all:
each variant runs under valgrind (cachegrind) for CALLS calls and for
CALLS/5, and the difference gives the user-space instructions per call, a
figure the machine's slow spells do not move (the kernel's share of a call
is not in it).

Prints one markdown table per level: the median of each figure by variant,
and the median (and range) of each variant's round-by-round differences
from the first: paired differences, because this machine has slow spells
that last several runs and would otherwise swamp a few microseconds. These are the figures of
`bench/PROFILE.md`; build each variant's binary first, e.g. by copying
`target/release/cognito-facade` aside before and after a change.
"""

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import instructions  # noqa: E402  (bench/instructions.py: valgrind's count)
import common  # noqa: E402  (the benchmark's shared helpers)


def parse_variant(name, words):
    words = shlex.split(words)
    env = {}
    while words and "=" in words[0] and not words[0].startswith(("-", "/", ".")):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    if not words:
        raise SystemExit(f"variant {name}: no binary")
    binary = Path(words.pop(0)).resolve()
    if not os.access(binary, os.X_OK):
        raise SystemExit(f"variant {name}: {binary} is not an executable")
    return {"name": name, "env": env, "binary": binary, "flags": words}


def one_run(variant, nginx_port, concurrency, seconds):
    port = common.free_port()
    proc = common.start_service(port, nginx_port, *variant["flags"], env=variant["env"],
                             binary=variant["binary"])
    try:
        result = common.load("facade", f"http://127.0.0.1:{port}", concurrency, seconds,
                          cpu_of={"service": [proc.pid]})
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    if result["errors"]:
        raise RuntimeError(f"{variant['name']}: calls failed: {result['error_codes']}")
    return {"rps": result["rps"], "p50_us": result["p50_us"], "p99_us": result["p99_us"],
            "service_cpu_us": result["cpu_us"]["service"]}


def memory_run(variant, slow_port, inflight, seconds):
    port = common.free_port()
    proc = common.start_service(port, slow_port, "--max-concurrent-requests", str(2 * inflight),
                             *variant["flags"], env=variant["env"], binary=variant["binary"])
    try:
        time.sleep(0.3)
        idle = common.rss_kb(proc.pid)
        with common.PeakRss(proc.pid) as peak:
            result = common.load("facade", f"http://127.0.0.1:{port}", inflight, seconds)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    if result["errors"]:
        raise RuntimeError(f"{variant['name']}: calls failed: {result['error_codes']}")
    return {"idle_mib": idle / 1024, "peak_mib": peak.peak / 1024}


def table(title, variants, runs, keys):
    """Medians by variant; for every variant after the first, the median of
    its round-by-round differences from the first variant and their range.
    A round's runs follow one another within seconds, so a slow spell of
    the machine (they come and go here) moves both sides of a difference."""
    lines = [f"### {title}", "",
             "| variant | " + " | ".join(keys) + " | runs |",
             "|---|" + "---|" * (len(keys) + 1)]
    base = runs[variants[0]["name"]]
    for v in variants:
        samples = runs[v["name"]]
        cells = []
        for k in keys:
            cell = f"{statistics.median(s[k] for s in samples):.1f}"
            if samples is not base:
                diffs = [s[k] - b[k] for s, b in zip(samples, base)]
                cell += (f" (Δ {statistics.median(diffs):+.1f}, "
                         f"{min(diffs):+.1f}…{max(diffs):+.1f})")
            cells.append(cell)
        lines.append(f"| {v['name']} | " + " | ".join(cells) + f" | {len(samples)} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "WORDS"),
                        required=True)
    parser.add_argument("--pairs", type=int, default=3, help="rounds of each variant")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--concurrency", type=int, action="append",
                        help="load levels (default: 64 and 1)")
    parser.add_argument("--memory", action="store_true",
                        help="also peak RSS with --inflight calls held 1 s upstream")
    parser.add_argument("--inflight", type=int, default=1000)
    parser.add_argument("--instructions", type=int, metavar="CALLS",
                        help="instead of timed load: user-space instructions per call, "
                             "from valgrind runs of CALLS and CALLS/5 calls")
    args = parser.parse_args()
    if len(args.variant) < 2:
        raise SystemExit("give at least two variants")
    variants = [parse_variant(name, words) for name, words in args.variant]
    levels = args.concurrency or [64, 1]

    common.ensure_nginx()
    if args.instructions:
        common.ensure_h2load()
        instructions.ensure_valgrind()
    workdir = common.ROOT / "target" / "bench"
    (workdir / "ab-jwks").mkdir(parents=True, exist_ok=True)
    procs = []
    runs = {(c, v["name"]): [] for c in levels for v in variants}
    memory = {v["name"]: [] for v in variants}
    try:
        nginx_port = common.free_port()
        procs.append(common.start_nginx(workdir, nginx_port, workdir / "ab-jwks"))
        if args.memory:
            slow_port = common.free_port()
            procs.append(subprocess.Popen([str(common.STANDIN), f"127.0.0.1:{slow_port}", "1s"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            common.wait_port(slow_port)
        body = workdir / "ab-call.bin"
        token = b"bench.ab.token"
        body.write_bytes(common.facade_request(token))
        counted = {v["name"]: [] for v in variants}
        for round_ in range(args.pairs):
            # Alternate the order so neither variant always runs first.
            order = variants if round_ % 2 == 0 else list(reversed(variants))
            if args.instructions:
                many = args.instructions
                for v in order:
                    per_call = instructions.per_call(common, v["binary"], v["flags"], v["env"],
                                                     nginx_port, many, body)
                    counted[v["name"]].append({"instructions": per_call})
                    print(json.dumps({"round": round_, "variant": v["name"],
                                      "instructions_per_call": per_call}), flush=True)
                continue
            for c in levels:
                for v in order:
                    result = one_run(v, nginx_port, c, args.seconds)
                    runs[(c, v["name"])].append(result)
                    print(json.dumps({"round": round_, "concurrency": c, "variant": v["name"],
                                      **result}), flush=True)
            if args.memory:
                for v in order:
                    result = memory_run(v, slow_port, args.inflight, 3)
                    memory[v["name"]].append(result)
                    print(json.dumps({"round": round_, "memory": v["name"], **result}), flush=True)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)

    print()
    for v in variants:
        env = " ".join(f"{k}={val}" for k, val in v["env"].items())
        print(f"- **{v['name']}**: `{' '.join(filter(None, [env, str(v['binary']), *v['flags']]))}`")
    print()
    if args.instructions:
        print(table(f"user-space instructions per call (valgrind), medians of {args.pairs} "
                    f"rounds of {args.instructions} − {args.instructions // 5} calls",
                    variants, counted, ["instructions"]))
        return
    for c in levels:
        print(table(f"concurrency {c}, medians of {args.pairs} interleaved runs of "
                    f"{args.seconds:g} s (difference from {variants[0]['name']})",
                    variants, {v["name"]: runs[(c, v["name"])] for v in variants},
                    ["rps", "p50_us", "p99_us", "service_cpu_us"]))
        print()
    if args.memory:
        print(table(f"{args.inflight} calls in flight (upstream waits 1 s), MiB",
                    variants, memory, ["idle_mib", "peak_mib"]))


if __name__ == "__main__":
    main()
