"""The callers scenario of `bench/run.py`: a quiet caller beside a flooding
one under `--upstream-rate-limit`, with fairness (two identities, from a
trusted `x-forwarded-client-cert`) and without it (both under one
identity, as every caller was before callers were told apart).

The helpers (`load`, `start_service`, `free_port`) are `bench/run.py`'s,
passed in as `h`, so this file imports nothing of it."""

import json
import subprocess

LIMIT = 20
QUIET_RATE = 4
FLOODERS = 32
FLOOD = "URI=spiffe://cluster.local/ns/batch/sa/reindex"
QUIET = "URI=spiffe://cluster.local/ns/payments/sa/api"


def fairness(h, upstream_port, smoke):
    """For each of `fair` and `one identity`: the quiet caller's success
    rate, p50 and p99, and what reached the upstream, while the flood runs."""
    seconds = 3 if smoke else 10
    figures = []
    for name, quiet_identity in (("fair", QUIET), ("one identity", FLOOD)):
        port = h.free_port()
        service = h.start_service(port, upstream_port, "--upstream-rate-limit", str(LIMIT),
                                  "--trust-forwarded-client-cert", "true")
        target = f"http://127.0.0.1:{port}"
        try:
            flood = subprocess.Popen([str(h.LOADGEN), "--mode", "facade", "--target", target,
                                      "--concurrency", str(FLOODERS),
                                      "--seconds", str(seconds + 1), "--no-warmup",
                                      "--token-prefix", "flood.", "--xfcc", FLOOD],
                                     stdout=subprocess.PIPE, text=True)
            quiet = h.load("facade", target, 1, seconds, "--rate", str(QUIET_RATE),
                           "--token-prefix", "quiet.", "--xfcc", quiet_identity)
            flooded = json.loads(flood.communicate()[0].strip().splitlines()[-1])
            if flood.returncode != 0:
                raise RuntimeError("the flooding load generator failed")
        finally:
            service.terminate()
            service.wait(timeout=10)
        total = quiet["requests"] + quiet["errors"]
        figures.append({"name": name, "quiet": quiet, "flood": flooded,
                        "quiet_ok": quiet["requests"] / total if total else 0.0})
        print(json.dumps(figures[-1]), flush=True)
    return figures


def report(figures, smoke):
    lines = ["", "## Callers: a quiet one beside a flood", "",
             f"`--upstream-rate-limit {LIMIT}`, a flooding caller ({FLOODERS} callers back to back, "
             f"a fresh token each) and a quiet one at {QUIET_RATE} calls a second (a fifth of the "
             "limit), against the nginx stand-in; the identities come from a trusted "
             "`x-forwarded-client-cert`. *Fair*: two identities. *One identity*: both callers "
             "under the flood's identity, as before callers were told apart."
             + (" Smoke run: 3 s each." if smoke else " 10 s each."), "",
             "| run | quiet calls answered | quiet p50 | quiet p99 | quiet refused | "
             "flood answered | flood refused |", "|---|---|---|---|---|---|---|"]
    for f in figures:
        quiet, flood = f["quiet"], f["flood"]
        lines.append(f"| {f['name']} | {f['quiet_ok']:.0%} | {quiet['p50_us']:,} µs | "
                     f"{quiet['p99_us']:,} µs | {quiet['errors']} | {flood['requests']:,} | "
                     f"{flood['errors']:,} |")
    return lines
