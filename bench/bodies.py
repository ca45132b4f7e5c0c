"""The unfinished-bodies scenario of `bench/run.py`: hostile HTTP/2 clients
holding bodies open, what the service holds and how fast it refuses."""

import json
import subprocess

from common import LOADGEN, PeakRss, free_port, load, rss_kb, start_service


def unfinished_bodies(nginx_port, smoke):
    """The memory probe: the service's RSS while N connections each hold
    1,000 Checks that announce 1 MB and never end (`loadgen --mode hold`),
    and a well-behaved caller's latency meanwhile, N by N."""
    figures = []
    for connections in ([1, 4] if smoke else [1, 4, 16, 32]):
        port = free_port()
        service = start_service(port, nginx_port)
        try:
            target = f"http://127.0.0.1:{port}"
            load("facade", target, 1, 0.2)
            idle = rss_kb(service.pid)
            with PeakRss(service.pid) as peak:
                hold = subprocess.Popen([str(LOADGEN), "--mode", "hold", "--target", target,
                                         "--connections", str(connections),
                                         "--concurrency", "1000", "--seconds", "3"],
                                        stdout=subprocess.PIPE, text=True)
                held = json.loads(hold.stdout.readline())
                good = load("facade", target, 1, 1 if smoke else 2)
                if hold.wait() != 0:
                    raise RuntimeError("the hold load generator failed")
            figures.append({"connections": connections, "idle_kb": idle, "peak_kb": peak.peak,
                            "held": held, "good": good})
            print(json.dumps(figures[-1]), flush=True)
        finally:
            service.terminate()
            service.wait(timeout=10)
    return figures


def unfinished_report(figures, smoke):
    lines = ["", "## Unfinished request bodies", "",
             "Each connection opens 1,000 Checks whose message announces 1 MB, sends what "
             "flow control lets it and never ends them (`loadgen --mode hold`, the `h2` "
             "crate); a well-behaved caller makes calls on a connection of its own meanwhile. "
             "Defaults: `--max-request-bytes-in-flight 40MiB`, "
             "`--max-connection-request-bytes 2MiB`, 256 streams a connection (the calls "
             "the stream limit has no room for wait in the client: left unopened).", "",
             "| connections | calls held | refused | left unopened | idle RSS | peak RSS | added | "
             "good caller p50 | p99 | its errors |", "|---|---|---|---|---|---|---|---|---|---|"]
    for f in figures:
        held, good = f["held"], f["good"]
        refused = held["answered"] + held["reset"]
        lines.append(f"| {f['connections']} | {held['held']:,} | {refused:,} | "
                     f"{held['unopened']:,} | "
                     f"{f['idle_kb'] / 1024:.1f} MiB | {f['peak_kb'] / 1024:.1f} MiB | "
                     f"{(f['peak_kb'] - f['idle_kb']) / 1024:+.1f} MiB | "
                     f"{good['p50_us']:,} µs | {good['p99_us']:,} µs | {good['errors']} |")
    lines += ["", "Before the budgets (the review of issue 40, on main): one connection took the "
              "RSS from 15.8 to 95 MiB, four to 360 MiB, held for as long as they stayed open."]
    return lines
