"""The outage scenario of `bench/run.py`: `--stale-if-error` through a
Cognito outage across a fleet, and what a kept answer costs."""

import json
import statistics
import subprocess
import time

from common import (STANDIN, free_port, load, metric_sum, rss_kb, start_service, wait_port)
from fleet import (FLEET_REPLICAS, fleet_flags, fleet_key, loads_side_by_side, start_redis, start_replicas)


# A Cognito outage: this many users, all seen before Cognito goes away, and
# how long it stays away (a full run; the smoke run is shorter).
OUTAGE_USERS = 200


OUTAGE_SECONDS = 30


OUTAGE_CALLERS = 48


OUTAGE_VARIANTS = [("off", []), ("on, `--stale-if-error 10m`", ["--stale-if-error", "10m"])]


def outage(workdir, smoke):
    """The share of calls answered while Cognito refuses every connection,
    for OUTAGE_USERS users all seen before it went away: FLEET_REPLICAS
    replicas on Redis, with --stale-if-error off and on."""
    seconds = 3 if smoke else OUTAGE_SECONDS
    users = workdir / "outage-users.txt"
    users.write_text("".join(f"bench.outage.{i}\n" for i in range(OUTAGE_USERS)))
    rows = []
    for label, flags in OUTAGE_VARIANTS:
        upstream_port = free_port()
        cognito = subprocess.Popen([str(STANDIN), f"127.0.0.1:{upstream_port}"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(upstream_port)
        redis, redis_port = start_redis(workdir)
        services = []
        try:
            start_replicas(services, upstream_port,
                           [*fleet_flags(redis_port, fleet_key(workdir)), *flags])
            time.sleep(0.5)  # each connects to Redis in the background
            seen = loads_side_by_side(services, OUTAGE_CALLERS, 1, "--tokens-file", str(users))
            if any(r["errors"] for r in seen):
                raise RuntimeError(f"outage ({label}): calls failed before the outage")
            kept = len(subprocess.run(
                ["redis-cli", "-p", str(redis_port), "--scan", "--pattern", "*:k"],
                capture_output=True, text=True, check=True).stdout.split())
            cognito.kill()  # every connection to Cognito now refused
            cognito.wait(timeout=10)
            during = loads_side_by_side(services, OUTAGE_CALLERS, seconds,
                                        "--tokens-file", str(users))
            answered = sum(r["requests"] for r in during)
            failed = sum(r["errors"] for r in during)
            codes = {}
            for r in during:
                for code, n in r["error_codes"].items():
                    codes[code] = codes.get(code, 0) + n
            stale = sum(metric_sum(m, "cognito_facade_stale_answers_total") for _, _, m in services)
            rows.append({"label": label, "kept": kept, "answered": answered, "failed": failed,
                         "codes": codes, "stale": stale,
                         "p50_us": statistics.median([r["p50_us"] for r in during]),
                         "p99_us": max(r["p99_us"] for r in during)})
            print(json.dumps(rows[-1]), flush=True)
        finally:
            for proc, _, _ in services:
                proc.terminate()
                proc.wait(timeout=10)
            for proc in (cognito, redis):
                proc.kill()
                proc.wait(timeout=10)
    return {"rows": rows, "seconds": seconds, "memory": kept_memory(smoke)}


def kept_memory(smoke):
    """What a kept answer costs a replica: its resident memory grown per
    call, fresh tokens each kept (--stale-if-error) or not, side by side."""
    upstream_port = free_port()
    cognito = subprocess.Popen([str(STANDIN), f"127.0.0.1:{upstream_port}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(upstream_port)
    grown = {}
    try:
        for label, flags in OUTAGE_VARIANTS:
            port, metrics_port = free_port(), free_port()
            proc = start_service(port, upstream_port, *flags, "--cache-max-entries", "1000000",
                                 metrics_port=metrics_port)
            try:
                load("facade", f"http://127.0.0.1:{port}", 16, 0.5)

                def now():
                    return (rss_kb(proc.pid),
                            metric_sum(metrics_port, "cognito_facade_rpc_requests_total"),
                            metric_sum(metrics_port, "cognito_facade_kept_answers"))
                before = now()
                load("facade", f"http://127.0.0.1:{port}", 16, 1 if smoke else 4,
                     "--token-prefix", "kept.")
                after = now()
                grown[label] = {"calls": after[1] - before[1], "kept": after[2] - before[2],
                                "bytes": (after[0] - before[0]) * 1024}
            finally:
                proc.terminate()
                proc.wait(timeout=10)
    finally:
        cognito.kill()
        cognito.wait(timeout=10)
    return grown


def outage_report(figures, smoke):
    rows, memory = figures["rows"], figures["memory"]
    lines = ["", "## A Cognito outage", "",
             f"{FLEET_REPLICAS} replicas of the service on one Redis (shipped defaults: no "
             f"cache), {OUTAGE_CALLERS} callers in all over {OUTAGE_USERS} users, each user "
             "seen in the second before Cognito goes away (the stand-in killed: every "
             f"connection refused); then {figures['seconds']} s of the same calls while it "
             "stays away.", "",
             "| `--stale-if-error` | kept in Redis | calls during the outage | answered | "
             "failed | p50 answered | p99 answered |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        total = row["answered"] + row["failed"]
        share = row["answered"] / total if total else 0.0
        codes = ", ".join(f"{code} {n}" for code, n in sorted(row["codes"].items())) or "none"
        latency = ((f"{row['p50_us'] / 1000:.1f} ms", f"{row['p99_us'] / 1000:.1f} ms")
                   if row["answered"] else ("–", "–"))
        lines.append(f"| {row['label']} | {row['kept']} | {total} | **{share:.1%}** | "
                     f"{row['failed']} ({codes}) | {latency[0]} | {latency[1]} |")
    off, on = (memory[label] for label, _ in OUTAGE_VARIANTS)
    # What the calls alone grow the process by, taken off.
    alone = off["bytes"] / max(off["calls"], 1) * on["calls"]
    cost = (on["bytes"] - alone) / max(on["kept"], 1)
    stale = sum(row["stale"] for row in rows)
    lines += ["", "During the outage every call still asks Cognito first (with the SDK's "
              "retries, refused at once), then the kept answer stands in, marked `stale` "
              f"({stale:.0f} stale answers counted by the services, warm-up included): its "
              "latency is that of the failed attempts.", "",
              "What a kept answer costs a replica: its resident memory grown over calls "
              "with fresh tokens, with the setting on less what the same calls grow it by "
              f"with it off, per answer kept ({on['calls']:.0f} calls kept {on['kept']:.0f} "
              f"more answers; the process grew {on['bytes'] / 2**20:.1f} MiB on, "
              f"{off['bytes'] / 2**20:.1f} MiB over {off['calls']:.0f} calls off): "
              f"**{cost:.0f} bytes per kept answer**. In Redis a kept answer is one key of "
              "about 210 bytes (`MEMORY USAGE`, checked by `tests/api/stale.rs`)."]
    return lines
