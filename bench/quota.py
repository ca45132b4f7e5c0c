"""The quota scenario of `bench/run.py`: `--upstream-rate-limit` alone and
shared by a fleet on Redis, what reached the upstream, Redis killed."""

import statistics
import threading
import time

from common import free_port, load, metric_sum, sh, start_service
from economy import ECONOMY_UPSTREAM_MS
from fleet import (FLEET_CALLERS, FLEET_REPLICAS, fleet_flags, fleet_key, start_redis, start_replicas)


# The quota: the fleet's configured limits and the callers pressing on them.
QUOTA_LIMITS = [20, 40, 80]


QUOTA_CALLERS = 24


def upstream_rate(services, seconds):
    """Upstream calls per second the services made together over `seconds`
    (from their own metrics), after a second's warm-up."""
    time.sleep(1)
    before = sum(metric_sum(m, "cognito_facade_upstream_requests_total") for _, _, m in services)
    started = time.monotonic()
    time.sleep(seconds)
    after = sum(metric_sum(m, "cognito_facade_upstream_requests_total") for _, _, m in services)
    return (after - before) / (time.monotonic() - started)


def quota_run(upstream_port, flags, seconds, redis_port=None, kill=None):
    """FLEET_REPLICAS services with `flags` pressed by QUOTA_CALLERS callers
    (fresh tokens, each obeying RetryInfo) far beyond any limit: the fleet's
    upstream rate, and
    the answers that were not OK by gRPC code. With `kill` (a process), it
    is killed after the warm-up and the rate measured without it."""
    services = []
    try:
        if redis_port:
            # A fresh store: the last run's replicas would still count in the
            # fleet's size for the 5 s their announcements last.
            sh("redis-cli", "-p", str(redis_port), "FLUSHALL")
        start_replicas(services, upstream_port, flags)
        time.sleep(2)  # connected to Redis, and announced to each other
        results = [None] * FLEET_REPLICAS

        def one(i, port):
            # Past the warm-up, the kill and the measured window.
            results[i] = load("facade", f"http://127.0.0.1:{port}",
                              QUOTA_CALLERS // FLEET_REPLICAS, seconds + 4,
                              "--obey-retry-info", "--token-prefix", f"r{i}x")

        threads = [threading.Thread(target=one, args=(i, port))
                   for i, (_, port, _) in enumerate(services)]
        for thread in threads:
            thread.start()
        if kill:
            time.sleep(1)
            kill.kill()
            kill.wait()
        rate = upstream_rate(services, seconds)
        for thread in threads:
            thread.join()
        codes = {}
        for result in results:
            for code, n in result.get("error_codes", {}).items():
                codes[code] = codes.get(code, 0) + n
    finally:
        for proc, _, _ in services:
            proc.terminate()
            proc.wait(timeout=10)
    return {"rate": rate, "codes": codes}


def quota(upstream_port, workdir, smoke):
    """Configured against measured fleet rates, and what the limiter adds
    per upstream call (CPU and latency), side by side."""
    seconds = 2 if smoke else 5
    limits = [40] if smoke else QUOTA_LIMITS
    rows = []
    for limit in limits:
        redis, redis_port = start_redis(workdir)
        try:
            flags = [*fleet_flags(redis_port, fleet_key(workdir)),
                     "--upstream-rate-limit", str(limit)]
            rows.append({"label": f"fleet on Redis, limit {limit}/s", "limit": limit,
                         **quota_run(upstream_port, flags, seconds, redis_port)})
            if limit == 40:
                rows.append({"label": f"fleet, Redis killed under load, limit {limit}/s",
                             "limit": limit,
                             **quota_run(upstream_port, flags, seconds, redis_port, kill=redis)})
        finally:
            redis.kill()
            redis.wait(timeout=10)
    rows.append({"label": "alone (no Redis), limit 40/s per replica", "limit": 40,
                 **quota_run(upstream_port, ["--upstream-rate-limit", "40"], seconds)})

    # The limiter's cost per upstream call, limit set far above the load:
    # alone (in process) and on the fleet (one more Redis script per
    # attempt), interleaved round by round; CPU at 64 callers, p50 at one.
    redis, redis_port = start_redis(workdir)
    shared = fleet_flags(redis_port, fleet_key(workdir))
    never = ["--upstream-rate-limit", "1000000"]
    variants = [("alone", []), ("alone, limited", never),
                ("fleet", shared), ("fleet, limited", [*shared, *never])]
    cpu, p50 = {}, {}
    try:
        for _ in range(1 if smoke else 5):
            for name, flags in variants:
                port = free_port()
                proc = start_service(port, upstream_port, *flags)
                try:
                    time.sleep(0.5)
                    result = load("facade", f"http://127.0.0.1:{port}", FLEET_CALLERS,
                                  1 if smoke else 3, cpu_of={"service": [proc.pid]})
                    one = load("facade", f"http://127.0.0.1:{port}", 1, 1 if smoke else 3)
                    if result["errors"] or one["errors"]:
                        raise RuntimeError(f"{name}: calls failed: {result['error_codes']}")
                    cpu.setdefault(name, []).append(result["cpu_us"]["service"])
                    p50.setdefault(name, []).append(one["p50_us"])
                finally:
                    proc.terminate()
                    proc.wait(timeout=10)
    finally:
        redis.kill()
        redis.wait(timeout=10)
    return {"rows": rows,
            "cpu_us": {name: statistics.median(v) for name, v in cpu.items()},
            "p50_us": {name: statistics.median(v) for name, v in p50.items()}}


def quota_report(figures, smoke):
    rows, cpu, p50 = figures["rows"], figures["cpu_us"], figures["p50_us"]
    lines = ["", "## The quota", "",
             f"{FLEET_REPLICAS} replicas of the service with `--upstream-rate-limit`, "
             f"{QUOTA_CALLERS} callers in all (fresh tokens, so nothing is shared or cached) "
             f"asking far more than the limit and waiting as a refusal's `RetryInfo` says (at "
             f"most a second), as a good client does, against the stand-in answering in "
             f"{ECONOMY_UPSTREAM_MS} ms; the fleet's upstream calls per second from the services' "
             f"own metrics over {2 if smoke else 5} s after a second's warm-up (with Redis "
             "killed: killed a second into the load, measured from a second after that).", "",
             "| variant | configured | measured | measured / configured | answers not OK |",
             "|---|---|---|---|---|"]
    for row in rows:
        fleet_limit = row["limit"] * (FLEET_REPLICAS if row["label"].startswith("alone") else 1)
        codes = ", ".join(f"{code} {n}" for code, n in sorted(row["codes"].items())) or "none"
        lines.append(f"| {row['label']} | {fleet_limit}/s | {row['rate']:.1f}/s | "
                     f"{row['rate'] / fleet_limit:.2f} | {codes} |")
    lines += ["", "Alone, each replica keeps the whole limit (the configured column is then "
              f"{FLEET_REPLICAS} × 40): start-up says so. Answers not OK are the calls over the "
              "limit (`RESOURCE_EXHAUSTED`, `UPSTREAM_RATE_LIMITED`).", "",
              "What the limiter adds per upstream call, with a limit far above the load "
              "(medians of interleaved runs; every call a miss, so one upstream call each):", "",
              "| figure | without a limit | with | difference |", "|---|---|---|---|"]
    for where in ("alone", "fleet"):
        limited = f"{where}, limited"
        lines.append(f"| CPU per call at {FLEET_CALLERS} callers, {where} | {cpu[where]:.1f} µs | "
                     f"{cpu[limited]:.1f} µs | {cpu[limited] - cpu[where]:+.1f} µs |")
        lines.append(f"| p50 at one caller, {where} | {p50[where]:.0f} µs | {p50[limited]:.0f} µs "
                     f"| {p50[limited] - p50[where]:+.0f} µs |")
    lines += ["", "On the fleet the limiter is one more Redis script per attempt (a round trip "
              "on loopback); alone, a mutex and a few floating-point operations. CPU figures "
              "move by ±10 µs run to run on this machine."]
    return lines
