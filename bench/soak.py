#!/usr/bin/env python3
"""The soak: a steady 2,000 calls/s for 60 s, then SIGTERM in the middle of load.

    python3 bench/soak.py            # full run (about 2 minutes), writes RELIABILITY.md
    python3 bench/soak.py --smoke    # seconds-long run for CI, writes under target/

Starts the Cognito stand-in (the `cognito-standin` example, answering after a
few milliseconds), the release service against it and the load generator
(bench/loadgen.rs) in open-loop mode. Everything binds 127.0.0.1 and every
load is bounded in time. Exits 1 if a promise does not hold:
- zero failed calls at the steady rate, which is actually delivered;
- RSS at the end within 5 MiB of RSS after warm-up;
- nothing in flight afterwards;
- on SIGTERM: health NOT_SERVING within 1 s, exit 0 within drain + grace, and
  no status other than OK, UNAVAILABLE and tonic's CANCELLED (what the README
  documents for shutdown) seen by the load.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import run
from run import LOADGEN, ROOT, SERVICE, STANDIN, free_port, metric_sum, rss_kb, wait_port

RATE = 2000
CONCURRENCY = 64
UPSTREAM_DELAY = "5ms"
RSS_DRIFT_LIMIT_KB = 5 * 1024
DRAIN = 2.0
GRACE = 10.0


def loadgen(port, seconds, rate=RATE):
    return [str(LOADGEN), "--mode", "facade", "--target", f"http://127.0.0.1:{port}",
            "--concurrency", str(CONCURRENCY), "--seconds", str(seconds), "--rate", str(rate)]


def last_json(text):
    return json.loads(text.strip().splitlines()[-1])


def serving(port):
    """0 SERVING, 1 not (the binary's own healthcheck)."""
    return subprocess.run([str(SERVICE), "healthcheck", "--addr", f"127.0.0.1:{port}",
                           "--timeout", "1s"], capture_output=True).returncode


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="seconds-long run for CI")
    smoke = parser.parse_args().smoke
    warmup, soak_seconds = (2, 4) if smoke else (10, 60)
    report = ROOT / "target" / "reliability-smoke.md" if smoke else ROOT / "RELIABILITY.md"

    subprocess.run(["cargo", "build", "--locked", "--release", "--bin", "cognito-facade",
                    "--example", "loadgen", "--example", "cognito-standin"], check=True, cwd=ROOT)
    upstream_port, port, metrics_port = free_port(), free_port(), free_port()
    standin = subprocess.Popen([str(STANDIN), f"127.0.0.1:{upstream_port}", UPSTREAM_DELAY],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    service = None
    try:
        wait_port(upstream_port)
        args = run.service_args(port, upstream_port, "--shutdown-grace", f"{GRACE}s",
                                metrics_port=metrics_port, drain=f"{DRAIN}s")
        service = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port)

        warm = last_json(run.sh(*loadgen(port, warmup)))
        rss_warm = rss_kb(service.pid)
        with run.PeakRss(service.pid) as peak:
            steady = last_json(run.sh(*loadgen(port, soak_seconds)))
        rss_end = rss_kb(service.pid)
        time.sleep(0.2)
        in_flight = metric_sum(metrics_port, "cognito_facade_rpc_in_flight")

        # SIGTERM in the middle of the same load.
        load = subprocess.Popen(loadgen(port, 6), stdout=subprocess.PIPE, text=True)
        time.sleep(2.5)
        signalled = time.monotonic()
        service.terminate()
        flipped = None
        while time.monotonic() - signalled < 1.5:
            if serving(port) != 0:
                flipped = time.monotonic() - signalled
                break
        try:
            code = service.wait(timeout=DRAIN + GRACE + 5)
        except subprocess.TimeoutExpired:
            code = None
        exited = time.monotonic() - signalled
        during = last_json(load.communicate(timeout=60)[0])
    finally:
        for proc in (service, standin):
            if proc and proc.poll() is None:
                proc.kill()
                proc.wait()

    drift = rss_end - rss_warm
    delivered = steady["requests"] / soak_seconds
    checks = [
        (f"zero failed calls over {soak_seconds} s", f"{steady['errors']} failed of "
         f"{steady['requests'] + steady['errors']}", steady["errors"] == 0),
        (f"the rate is delivered ({RATE}/s)", f"{delivered:.0f}/s", delivered >= RATE * 0.97),
        ("RSS at the end within 5 MiB of RSS after warm-up",
         f"{rss_warm / 1024:.1f} → {rss_end / 1024:.1f} MiB ({drift / 1024:+.1f} MiB; peak "
         f"{peak.peak / 1024:.1f} MiB)", abs(drift) <= RSS_DRIFT_LIMIT_KB),
        ("nothing in flight afterwards", f"{in_flight}", in_flight == 0),
        ("SIGTERM: health NOT_SERVING within 1 s",
         "never" if flipped is None else f"{flipped * 1000:.0f} ms", flipped is not None and flipped <= 1),
        (f"SIGTERM: exit 0 within drain + grace ({DRAIN + GRACE:.0f} s)",
         f"exit {code} after {exited:.1f} s", code == 0 and exited <= DRAIN + GRACE),
        # tonic's client (the load generator's) says CANCELLED for a call it
        # had queued on a closing connection; others say UNAVAILABLE.
        ("SIGTERM: only OK and UNAVAILABLE (or tonic's CANCELLED) under load",
         f"{during['requests']} OK, failed by code: {during['error_codes'] or 'none'}",
         set(during["error_codes"]) <= {"Unavailable", "Cancelled"}),
    ]
    lines = ["# Reliability", "",
             "Generated by `python3 bench/soak.py`" + (" --smoke" if smoke else "") +
             "; do not edit by hand.", "",
             f"- {run.cpu_model()}, {os.cpu_count()} CPUs; cognito-facade {run.cargo_version()}, "
             f"release build; date {time.strftime('%Y-%m-%d')}",
             f"- load: {RATE} calls/s (open loop) from {CONCURRENCY} callers over 4 HTTP/2 connections, "
             f"distinct tokens; stand-in answers after {UPSTREAM_DELAY}; warm-up {warmup} s, "
             f"then {soak_seconds} s measured (p50 {steady['p50_us']} µs, p99 {steady['p99_us']} µs)",
             f"- shutdown: SIGTERM 2.5 s into a 6 s run at the same rate, `--drain-delay {DRAIN:.0f}s "
             f"--shutdown-grace {GRACE:.0f}s`", "",
             "| promise | measured | verdict |", "|---|---|---|"]
    for promise, measured, ok in checks:
        lines.append(f"| {promise} | {measured} | {'held' if ok else '**broken**'} |")
    report.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {report.relative_to(ROOT)}; warm-up: {warm['requests']} calls, {warm['errors']} failed")
    return 0 if all(ok for _, _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
