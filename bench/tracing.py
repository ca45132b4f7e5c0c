"""The tracing scenario of `bench/run.py`: the cost of trace context and of
exporting spans, side by side with tracing off."""

import statistics

from common import free_port, load, metric_sum, start_service, verdict


def service_run(label, nginx_port, flags, env, seconds, *load_args):
    """A fresh service with `flags` and `env`, loaded at concurrency 64 with
    `load_args`: the load generator's result, with the service's CPU per
    call and the trace spans it dropped. Fails if any call failed."""
    port, metrics_port = free_port(), free_port()
    proc = start_service(port, nginx_port, *flags, metrics_port=metrics_port, env=env)
    try:
        result = load("facade", f"http://127.0.0.1:{port}", 64, seconds, *load_args,
                      cpu_of={"service": [proc.pid]})
        result["dropped"] = metric_sum(metrics_port, "cognito_facade_trace_spans_dropped_total")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    if result["errors"]:
        raise RuntimeError(f"{label}: calls failed: {result['error_codes']}")
    return result


def tracing_cost(nginx_port, seconds, repeats):
    """Service CPU per call with span export off (no OpenTelemetry
    environment: the shipped default) and on (OTLP http/protobuf to nginx,
    which answers every export; every call a root span, so all sampled),
    runs interleaved at concurrency 64."""
    variants = {"export off (default)": {},
                "export on, 100% sampled": {
                    "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{nginx_port}",
                    "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                    "OTEL_BSP_SCHEDULE_DELAY": "200"}}
    runs = {label: [] for label in variants}
    for _ in range(repeats):
        for label, env in variants.items():
            runs[label].append(service_run(label, nginx_port, [], env, seconds))
    return runs


def tracing_report(runs, smoke):
    def median(label, key):
        return statistics.median(x["cpu_us"]["service"] if key == "cpu" else x[key] for x in runs[label])

    off, on = median("export off (default)", "cpu"), median("export on, 100% sampled", "cpu")
    lines = ["", "## Tracing", "",
             f"Service CPU per call at concurrency 64, medians of {len(runs['export off (default)'])} "
             f"interleaved runs of {0.5 if smoke else 5} s; with export on, every call is a root span "
             "(sampled) with a server and a client span, exported over OTLP http/protobuf to nginx.", "",
             "| variant | service CPU µs per call | calls/s | spans dropped |", "|---|---|---|---|"]
    for label in runs:
        lines.append(f"| {label} | {median(label, 'cpu'):.1f} | {median(label, 'rps'):.0f} | "
                     f"{median(label, 'dropped'):.0f} |")
    lines += ["", "| target | measured | verdict |", "|---|---|---|",
              f"| what export adds per call, 100% sampled: ≤ 15 µs | {on - off:.1f} µs | "
              f"{verdict(on - off <= 15)} |"]
    return lines
