"""The token-verification scenario of `bench/run.py`: verified and refused
tokens locally, the memo of verified tokens, a first sight's cost."""

import statistics

from common import (BENCH_POOL, free_port, load, metric_sum, start_service, verdict)
from tracing import service_run


def verification(nginx_port, tokens_dir, seconds, repeats, first_sight_seconds):
    """What local verification costs and saves: the latency of a local
    refusal at concurrency 1, the service CPU per valid call with and without
    verification (runs interleaved, medians), and upstream calls per 1,000
    calls of a realistic mix with verification off and on."""
    pool = ["--user-pool-id", BENCH_POOL]
    out = {}
    # 1. A local refusal (forged tokens) at concurrency 1.
    port, metrics_port = free_port(), free_port()
    proc = start_service(port, nginx_port, *pool, metrics_port=metrics_port)
    try:
        warm = load("facade", f"http://127.0.0.1:{port}", 1, 0.5,
                    "--tokens-file", str(tokens_dir / "valid.txt"))
        before = metric_sum(metrics_port, "cognito_facade_upstream_requests_total")
        refused = load("facade", f"http://127.0.0.1:{port}", 1, seconds,
                       "--tokens-file", str(tokens_dir / "refused.txt"), "--expect", "Unauthenticated",
                       cpu_of={"service": [proc.pid]})
        after = metric_sum(metrics_port, "cognito_facade_upstream_requests_total")
        refusals = metric_sum(metrics_port, "cognito_facade_token_refusals_total")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    if warm["errors"]:
        raise RuntimeError(f"valid tokens failed: {warm['error_codes']}")
    out["refusal"] = {"load": refused, "upstream": after - before, "refusals": refusals}

    # 2. Service CPU per valid call: opaque mode against pools with
    # verification, runs interleaved. Tokens seen before (after the warm-up,
    # every call's token is one the service verified before), and each
    # token's first sight: a fresh service, no warm-up, a run short enough
    # that the callers reach few tokens twice.
    variants = {"opaque (no pools)": ([], []),
                "pools, verification on": (pool, []),
                "opaque (no pools), first sight": ([], ["--no-warmup"]),
                "pools, verification on, first sight": (pool, ["--no-warmup"])}
    cpu = {label: [] for label in variants}
    for _ in range(repeats):
        for label, (flags, extra) in variants.items():
            first_sight = "--no-warmup" in extra
            cpu[label].append(service_run(
                label, nginx_port, flags, {}, first_sight_seconds if first_sight else seconds,
                "--tokens-file", str(tokens_dir / "valid.txt"), *extra))
    out["cpu"] = cpu

    # 3. The realistic mix, verification off and on; single flight on in both.
    mix = {}
    for label, flags in (("verification off (`--verify-tokens=false`)", pool + ["--verify-tokens=false"]),
                         ("verification on (default with pools)", pool)):
        port, metrics_port = free_port(), free_port()
        proc = start_service(port, nginx_port, *flags, metrics_port=metrics_port)
        try:
            result = load("facade", f"http://127.0.0.1:{port}", 64, seconds,
                          "--tokens-file", str(tokens_dir / "mix.txt"))
            calls = metric_sum(metrics_port, "cognito_facade_rpc_requests_total")
            upstream = metric_sum(metrics_port, "cognito_facade_upstream_requests_total")
            refusals = metric_sum(metrics_port, "cognito_facade_token_refusals_total")
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        mix[label] = {"calls": calls, "upstream": upstream, "refusals": refusals,
                      "p50_us": result["p50_us"], "rps": result["rps"]}
    out["mix"] = mix
    return out


def verification_report(verified, smoke):
    """The "Token verification" section."""
    refusal = verified["refusal"]
    r = refusal["load"]
    cpu = verified["cpu"]

    def median_cpu(label):
        return statistics.median(x["cpu_us"]["service"] for x in cpu[label])

    opaque, checked = median_cpu("opaque (no pools)"), median_cpu("pools, verification on")
    added = checked - opaque
    opaque_first = median_cpu("opaque (no pools), first sight")
    checked_first = median_cpu("pools, verification on, first sight")
    added_first = checked_first - opaque_first
    first_calls = statistics.median(x["requests"] for x in cpu["pools, verification on, first sight"])
    lines = ["", "## Token verification", "",
             f"With `--user-pool-id {BENCH_POOL}`: tokens minted by `loadgen --mode mint` (RS256, "
             "2048-bit key, Cognito's claims), the pool's JWKS served by the nginx stand-in. "
             f"{0.5 if smoke else 5} s per run.", "",
             "| figure | measured | target | verdict |", "|---|---|---|---|",
             f"| a local refusal (forged token) at concurrency 1: p50 / p99 | {r['p50_us']} / {r['p99_us']} µs "
             f"({r['requests']} calls, {refusal['refusals']} refusals counted) | well under 1 ms | "
             f"{verdict(r['p99_us'] < 1000)} |",
             f"| upstream calls made during those refusals | {refusal['upstream']} | 0 | "
             f"{verdict(refusal['upstream'] == 0)} |",
             f"| service CPU per valid call, concurrency 64: opaque mode / pools with verification "
             f"(medians of {len(cpu['opaque (no pools)'])} interleaved runs) | {opaque:.1f} / {checked:.1f} µs | | |",
             f"| what verification adds to a valid call (its token verified before, the common case) | "
             f"{added:.1f} µs | ≤ 15 µs | {verdict(added <= 15)} |",
             f"| the same at a token's first sight (a fresh service, no warm-up, ~{first_calls:.0f} calls "
             "walking the minted tokens, so nearly each call's token is new to it): opaque / verified | "
             f"{opaque_first:.1f} / {checked_first:.1f} µs: **+{added_first:.1f} µs** | ≤ 15 µs | "
             f"{verdict(added_first <= 15)} |",
             "", "A realistic mix: 64 callers; 85% valid tokens of 200 users, 10% expired, 5% forged or "
             "of another pool; single flight on (the default) in both. nginx answers every call it gets "
             "with a success, as Cognito would not for the expired and forged ones: what matters here is "
             "how many calls reach it.", "",
             "| variant | calls | upstream calls | local refusals | upstream calls per 1,000 calls | p50 µs |",
             "|---|---|---|---|---|---|"]
    for label, m in verified["mix"].items():
        per_1000 = 1000 * m["upstream"] / m["calls"] if m["calls"] else 0
        lines.append(f"| {label} | {m['calls']} | {m['upstream']} | {m['refusals']} | {per_1000:.0f} | "
                     f"{m['p50_us']} |")
    return lines
