"""The fleet scenario of `bench/run.py`: replicas on Redis, a fleet hit's
latency, a follower's lag, CPU per call on a miss and with Redis dead, and
with `--fleet-baseline` the same for an older build."""

import json
import os
import shutil
import statistics
import subprocess
import threading
import time

from common import (LOADGEN, SERVICE, free_port, load, metric_sum, sh, start_service, verdict, wait_port)
from economy import ECONOMY_UPSTREAM_MS


# The fleet on Redis: three replicas of the service, one redis-server.
FLEET_REPLICAS = 3


FLEET_USERS = 200


FLEET_CALLERS = 64


def start_redis(workdir):
    """A redis-server (Debian's package) on a free loopback port."""
    if not shutil.which("redis-server"):
        raise RuntimeError("redis-server is needed (Debian's redis-server package)")
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def fleet_key(workdir):
    path = workdir / "fleet.key"
    path.write_bytes(os.urandom(32))
    path.chmod(0o600)
    return path


def fleet_flags(redis_port, key):
    return ["--redis-url", f"redis://127.0.0.1:{redis_port}", "--fleet-key-file", str(key)]


def start_replicas(services, upstream_port, flags):
    """Starts FLEET_REPLICAS services with `flags`, each appended to
    `services` as (process, port, metrics port) as it starts, so the
    caller's cleanup stops those that did."""
    for _ in range(FLEET_REPLICAS):
        port, metrics_port = free_port(), free_port()
        services.append((start_service(port, upstream_port, *flags, metrics_port=metrics_port),
                         port, metrics_port))


def loads_side_by_side(services, callers, seconds, *extra):
    """`callers` callers spread over `services` ((process, port, metrics
    port) each), a load generator run of `seconds` each, side by side:
    their results."""
    results = [None] * len(services)
    share, rest = divmod(callers, len(services))

    def one(i, port):
        results[i] = load("facade", f"http://127.0.0.1:{port}", share + (1 if i < rest else 0),
                          seconds, *extra)

    threads = [threading.Thread(target=one, args=(i, port))
               for i, (_, port, _) in enumerate(services)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def fleet_run(upstream_port, flags, seconds):
    """FLEET_REPLICAS services with `flags`, loaded side by side by
    FLEET_CALLERS callers in all over FLEET_USERS tokens: calls answered and
    upstream calls, from the services' own metrics."""
    services = []
    try:
        start_replicas(services, upstream_port, flags)
        time.sleep(0.5)  # each connects to Redis in the background
        results = loads_side_by_side(services, FLEET_CALLERS, seconds,
                                     "--tokens", str(FLEET_USERS))
        calls = sum(metric_sum(m, "cognito_facade_rpc_requests_total", 'code="OK"')
                    for _, _, m in services)
        upstream = sum(metric_sum(m, "cognito_facade_upstream_requests_total")
                       for _, _, m in services)
        errors = sum(r["errors"] for r in results)
    finally:
        for proc, _, _ in services:
            proc.terminate()
            proc.wait(timeout=10)
    return {"calls": calls, "upstream": upstream, "errors": errors}


def fleet(upstream_port, workdir, smoke, baseline=None):
    """The fleet's figures: upstream calls per 1,000 calls alone and as a
    fleet, what the Redis path adds, and what a dead Redis costs; with a
    `baseline` binary, its hit, lag and CPU figures too, interleaved."""
    seconds = 1 if smoke else 5
    redis, redis_port = start_redis(workdir)
    key = fleet_key(workdir)
    shared = fleet_flags(redis_port, key)
    figures = {"mix": []}
    try:
        for label, flags in [("alone", []), ("alone, `--cache-ttl 30s`", ["--cache-ttl", "30s"]),
                             ("fleet", shared),
                             ("fleet, `--cache-ttl 30s`", [*shared, "--cache-ttl", "30s"])]:
            sh("redis-cli", "-p", str(redis_port), "FLUSHALL")
            figures["mix"].append({"label": label, **fleet_run(upstream_port, flags, seconds)})

        builds = {"after": SERVICE, **({"before": baseline} if baseline else {})}
        hits, follows, cpu = {}, {}, {}
        for _ in range(1 if smoke else 3):
            for build, binary in builds.items():
                hit, follow = fleet_hit_and_follow(upstream_port, shared, seconds, smoke, binary)
                for name, p50 in hit.items():
                    hits.setdefault(build, {}).setdefault(name, []).append(p50)
                follows.setdefault(build, []).append(follow)
        figures["hit_p50_us"] = {build: {name: statistics.median(v) for name, v in by.items()}
                                 for build, by in hits.items()}
        figures["follow"] = {build: {"trials": sum(f["trials"] for f in runs),
                                     "p50_us": statistics.median(f["p50_us"] for f in runs),
                                     "p90_us": statistics.median(f["p90_us"] for f in runs)}
                             for build, runs in follows.items()}

        # CPU per call on a miss (a fresh token per call): alone, with the
        # fleet, and with Redis dead (the breaker open), interleaved round by
        # round (and build by build) so the machine's slow spells hit all
        # alike.
        for _ in range(1 if smoke else 5):
            for build, binary in builds.items():
                for name in ("alone", "fleet", "dead"):
                    cpu.setdefault(build, {}).setdefault(name, []).append(
                        miss_cpu(upstream_port, workdir, shared, key, name, seconds, binary))
        figures["miss_cpu_us"] = {build: {name: statistics.median(v) for name, v in by.items()}
                                  for build, by in cpu.items()}
    finally:
        redis.terminate()
        redis.wait(timeout=10)
    return figures


def fleet_hit_and_follow(upstream_port, shared, seconds, smoke, binary):
    """A fleet hit at one caller, beside a local hit: the replica's own tier
    holds nothing (`--cache-max-entries 0`), so every call reads Redis; and a
    follower's lag behind its leader. One round, on fresh services of
    `binary`."""
    sh("redis-cli", "-p", shared[1].rsplit(":", 1)[1], "FLUSHALL")
    cache = ["--cache-ttl", "10m"]
    writer_port, remote_port, local_port = free_port(), free_port(), free_port()
    procs = [start_service(writer_port, upstream_port, *shared, *cache, binary=binary)]
    try:
        procs.append(start_service(remote_port, upstream_port, *shared, *cache,
                                   "--cache-max-entries", "0", binary=binary))
        procs.append(start_service(local_port, upstream_port, *cache, binary=binary))
        time.sleep(0.5)
        load("facade", f"http://127.0.0.1:{writer_port}", 8, 1, "--tokens", str(FLEET_USERS))
        load("facade", f"http://127.0.0.1:{local_port}", 8, 1, "--tokens", str(FLEET_USERS))
        hit = {}
        for name, port in (("fleet", remote_port), ("local", local_port)):
            result = load("facade", f"http://127.0.0.1:{port}", 1, seconds,
                          "--tokens", str(FLEET_USERS))
            hit[name] = result["p50_us"]
        follow = json.loads(sh(str(LOADGEN), "--mode", "follow",
                               "--target", f"http://127.0.0.1:{writer_port}",
                               "--follower", f"http://127.0.0.1:{remote_port}",
                               "--trials", "20" if smoke else "50").strip().splitlines()[-1])
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
    return hit, follow


def miss_cpu(upstream_port, workdir, shared, key, name, seconds, binary):
    """CPU per call of `binary` on a miss at FLEET_CALLERS callers: alone,
    with the fleet, or with Redis dead."""
    dead = None
    flags = []
    if name == "fleet":
        flags = shared
    elif name == "dead":
        dead, dead_port = start_redis(workdir)
        flags = fleet_flags(dead_port, key)
    port = free_port()
    proc = start_service(port, upstream_port, *flags, binary=binary)
    try:
        time.sleep(0.5)
        if dead:
            dead.kill()
            dead.wait()
        result = load("facade", f"http://127.0.0.1:{port}", FLEET_CALLERS, seconds,
                      cpu_of={"service": [proc.pid]})
        if result["errors"]:
            raise RuntimeError(f"{name}: calls failed: {result['error_codes']}")
        return result["cpu_us"]["service"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def fleet_report(figures, smoke):
    mix, hit, cpu, follow = (figures["mix"], figures["hit_p50_us"]["after"],
                             figures["miss_cpu_us"]["after"], figures["follow"]["after"])
    lines = ["", "## The fleet on Redis", "",
             f"{FLEET_REPLICAS} replicas of the service and one `redis-server` on loopback; "
             f"the realistic mix: {FLEET_CALLERS} callers in all, spread over the replicas, "
             f"over {FLEET_USERS} users' tokens, against the stand-in answering in "
             f"{ECONOMY_UPSTREAM_MS} ms; {1 if smoke else 5} s per variant. Upstream calls from "
             "the services' own metrics.", "",
             "| variant | calls | upstream calls | upstream calls per 1,000 calls | failed |",
             "|---|---|---|---|---|"]
    for row in mix:
        per = row["upstream"] / row["calls"] * 1000 if row["calls"] else float("nan")
        lines.append(f"| {row['label']} | {row['calls']} | {row['upstream']} | {per:.1f} | "
                     f"{row['errors']} |")
    added = cpu["fleet"] - cpu["alone"]
    dead = cpu["dead"] - cpu["alone"]
    lines += ["", "What the Redis path adds (medians of interleaved runs):", "",
              "| figure | measured |", "|---|---|",
              f"| p50 at one caller, a fleet hit (the replica's own tier empty) | "
              f"{hit['fleet']:.0f} µs, against {hit['local']:.0f} µs for a local cache hit "
              f"(+{hit['fleet'] - hit['local']:.0f} µs) |",
              f"| a follower has the answer after the leader's caller (p50 of "
              f"{follow['trials']} flights) | {follow['p50_us'] / 1000:.2f} ms "
              f"(p90 {follow['p90_us'] / 1000:.2f} ms) |",
              f"| CPU per call on a miss at {FLEET_CALLERS} callers | {cpu['fleet']:.1f} µs, "
              f"against {cpu['alone']:.1f} µs alone ({added:+.1f} µs) |",
              f"| CPU per call with Redis dead (the breaker open) | {cpu['dead']:.1f} µs "
              f"({dead:+.1f} µs against alone) |",
              "", "Each CPU figure is the median of interleaved rounds (alone, fleet, dead, "
              "then again); on this machine a single run's CPU per call moves by ±10 µs, so "
              "only differences well beyond that mean anything.",
              "", "| target | measured | verdict |", "|---|---|---|",
              f"| a follower gets the answer within 2 ms (p50) of the leader | "
              f"{follow['p50_us'] / 1000:.2f} ms | {verdict(follow['p50_us'] <= 2000)} |",
              f"| a dead Redis adds ≤ 5 µs CPU per call (breaker open) | {dead:+.1f} µs | "
              f"{verdict(dead <= 5)} |"]
    if "before" in figures["hit_p50_us"]:
        lines += before_and_after(figures)
    return lines


def before_and_after(figures):
    """The fleet's figures of the baseline build and of this one, measured
    interleaved in this run."""
    hit, follow, cpu = figures["hit_p50_us"], figures["follow"], figures["miss_cpu_us"]
    rows = [
        ("a fleet hit's p50 at one caller", hit["before"]["fleet"], hit["after"]["fleet"], "µs"),
        ("a follower's lag behind its leader (p50)", follow["before"]["p50_us"],
         follow["after"]["p50_us"], "µs"),
        ("CPU per call on a miss, fleet", cpu["before"]["fleet"], cpu["after"]["fleet"], "µs"),
        ("CPU per call on a miss, alone", cpu["before"]["alone"], cpu["after"]["alone"], "µs"),
        ("CPU per call with Redis dead", cpu["before"]["dead"], cpu["after"]["dead"], "µs"),
    ]
    lines = ["", f"Before and after this version's fleet (`--fleet-baseline`: "
             f"{figures['baseline']}), the two builds interleaved round by round in this run:",
             "", "| figure | before | after | difference |", "|---|---|---|---|"]
    for label, before, after, unit in rows:
        lines.append(f"| {label} | {before:.0f} {unit} | {after:.0f} {unit} | "
                     f"{after - before:+.0f} {unit} |")
    return lines
