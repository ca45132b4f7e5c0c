"""The callers scenario of `bench/run.py`: a quiet caller beside a flooding
one under `--upstream-rate-limit`, with fairness (two identities, from a
trusted `x-forwarded-client-cert`) and without it (both under one
identity, as every caller was before callers were told apart).

The helpers (`load`, `start_service`, `free_port`) are `bench/common.py`'s,
passed in as `h`."""

import json
import os
import statistics
import subprocess

import instructions

LIMIT = 20
QUIET_RATE = 4
FLOODERS = 32
FLOOD = "URI=spiffe://cluster.local/ns/batch/sa/reindex"
QUIET = "URI=spiffe://cluster.local/ns/payments/sa/api"
NAMED = "spiffe://cluster.local/ns/payments/sa/api=2"
NEVER = ["--upstream-rate-limit", "1000000"]
TIMED_CALLERS = 64


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


def uncontended(h, upstream_port, smoke, baseline=None):
    """What callers add to a call that never waits for a turn: user-space
    instructions per call (valgrind), the limit set far above the load, of
    this build for an anonymous caller and for a named one (a trusted
    `x-forwarded-client-cert`, weighted), and with `baseline` (a build
    before callers were told apart) of that build too, interleaved round by
    round; and this build's user CPU per call at 64 callers (where the
    runtime is busy, not parking between calls), which turns
    instructions into microseconds."""
    instructions.ensure_valgrind()
    calls, rounds = (250, 1) if smoke else (2000, 5)
    body = h.ROOT / "target" / "bench" / "callers-call.bin"
    body.write_bytes(h.facade_request(b"bench.callers.token"))
    named = ["--trust-forwarded-client-cert", "true", "--caller-weight", NAMED]
    variants = [("this build, anonymous", h.SERVICE, NEVER, ()),
                ("this build, a named caller", h.SERVICE, [*NEVER, *named],
                 (f"x-forwarded-client-cert: {QUIET}",))]
    if baseline:
        variants.insert(0, ("before callers", baseline, NEVER, ()))
    counted = {name: [] for name, *_ in variants}
    for round_ in range(rounds):
        for name, binary, flags, headers in (variants if round_ % 2 == 0 else variants[::-1]):
            counted[name].append(instructions.per_call(h, binary, flags, {}, upstream_port,
                                                       calls, body, headers))
            print(json.dumps({"uncontended": name, "instructions": counted[name][-1]}),
                  flush=True)
    port = h.free_port()
    service = h.start_service(port, upstream_port, *NEVER)
    try:
        h.load("facade", f"http://127.0.0.1:{port}", TIMED_CALLERS, 0.5)
        before = user_seconds(service.pid)
        timed = h.load("facade", f"http://127.0.0.1:{port}", TIMED_CALLERS, 1 if smoke else 5,
                       "--no-warmup")
        user_us = (user_seconds(service.pid) - before) / (timed["requests"] + timed["errors"]) * 1e6
    finally:
        service.terminate()
        service.wait(timeout=10)
    first = variants[0][0]
    # Paired, round by round: the runtime's timers move a round's count by
    # a few thousand, for every variant of the round alike.
    over = {name: sorted(b - a for a, b in zip(counted[first], v)) for name, v in counted.items()}
    return {"instructions": {name: statistics.median(v) for name, v in counted.items()},
            "over": over, "calls": calls, "rounds": rounds, "user_us": user_us}


def user_seconds(pid):
    """A process's user CPU time so far."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[11]) / os.sysconf("SC_CLK_TCK")


def uncontended_report(figures, smoke):
    counted, user_us = figures["instructions"], figures["user_us"]
    anonymous = counted["this build, anonymous"]
    ns = user_us * 1000 / anonymous
    lines = ["", "### The uncontended path", "",
             "What telling callers apart adds to a call that never waits for a turn: "
             "`--upstream-rate-limit 1000000`, one call at a time, every call a miss through "
             "to the stand-in; user-space instructions per call counted by valgrind (medians "
             f"of {figures['rounds']} interleaved rounds of {figures['calls']} − "
             f"{figures['calls'] // 5} calls), turned into time at this build's own "
             f"{ns:.2f} ns an instruction ({user_us:.1f} µs of user CPU a call at "
             f"{TIMED_CALLERS} callers, timed: an upper bound, since it holds the runtime's "
             "own spinning too). The goal is at most 2 µs over the build before callers."
             + (" Smoke run: figures are not meaningful." if smoke else ""), "",
             "| variant | instructions a call | over the first (range) | as CPU |",
             "|---|---|---|---|"]
    for name, value in counted.items():
        over = figures["over"][name]
        median = statistics.median(over)
        lines.append(f"| {name} | {value:,.0f} | {median:+,.0f} ({over[0]:+,.0f}…{over[-1]:+,.0f}) "
                     f"| {median * ns / 1000:+.2f} µs |")
    lines += ["", "Over the first: the median of the round-by-round differences. A named "
              "caller's call also carries the `x-forwarded-client-cert` header, which hyper "
              "decodes and the facade parses: part of its figure is the header's own."]
    return lines
