"""The economy scenario of `bench/run.py`: single flight and the cache
against a slow upstream, Cognito calls saved."""


from common import free_port, load, metric_sum, start_service


# The upstream-call economy mix: this many callers, each call with one of
# this many tokens, against a stand-in that answers in this many milliseconds.
ECONOMY_CALLERS = 64


ECONOMY_TOKENS = 20


ECONOMY_UPSTREAM_MS = 20


# Single flight and the cache, each against the same mix.
ECONOMY_VARIANTS = [
    ("neither (`--coalesce=false`)", ["--coalesce=false"]),
    ("single flight (default)", []),
    ("single flight + `--cache-ttl 30s`", ["--cache-ttl", "30s"]),
]


def economy(upstream_port, tokens, callers, seconds):
    """Upstream calls per variant for `callers` callers hammering `tokens`
    distinct tokens, counted by the service's own metrics."""
    rows = []
    for label, flags in ECONOMY_VARIANTS:
        port, metrics_port = free_port(), free_port()
        proc = start_service(port, upstream_port, *flags, metrics_port=metrics_port)
        try:
            result = load("facade", f"http://127.0.0.1:{port}", callers, seconds,
                          "--tokens", str(tokens))
            calls = metric_sum(metrics_port, "cognito_facade_rpc_requests_total", 'code="OK"')
            upstream = metric_sum(metrics_port, "cognito_facade_upstream_requests_total")
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        rows.append({"label": label, "calls": calls, "upstream": upstream,
                     "errors": result["errors"], "p50_us": result["p50_us"]})
    return rows
