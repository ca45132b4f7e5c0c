"""The throughput scenario of `bench/run.py`: the facade against the gRPC
floor (tonic's health Check) and the SDK floor, the lean path's h2load
figure, the targets rebased on this machine, and the plot."""


from common import (facade_request, free_port, grpc_frame, load, metric_sum, sh, start_service, verdict)


def h2load(port, path, body_file, seconds, connections=16, streams=4):
    """h2load (a lean HTTP/2 load generator in C) posting `body_file` as a
    gRPC call to `path`: calls per second over `seconds` after a 1 s warm-up."""
    out = sh("h2load", "-c", str(connections), "-m", str(streams), "-D", str(seconds),
             "--warm-up-time", "1", "-H", "content-type: application/grpc", "-H", "te: trailers",
             "-d", str(body_file), f"http://127.0.0.1:{port}{path}")
    rps = float(out.split(" req/s")[0].rsplit(",", 1)[1].strip())
    done = out.split("requests: ", 1)[1].split(",")
    failed = sum(int(part.split()[0]) for part in done if "failed" in part or "errored" in part)
    return {"rps": rps, "failed": failed}


def lean_throughput(nginx_port, workdir, seconds):
    """The throughput ratio with h2load as the load generator: the gRPC floor
    (health Check) and the facade (GetUserAuthFactors), both by h2load at 16
    connections x 4 streams, and the SDK floor from the load generator's SDK
    mode at 64. h2load sends one body to every call: with single flight on,
    64 identical calls in flight would share a handful of upstream calls and
    flatter the facade, so here `--coalesce=false` makes every call its own
    upstream call, as distinct tokens do in the load generator's runs."""
    health_body, facade_body = workdir / "health.bin", workdir / "facade.bin"
    health_body.write_bytes(grpc_frame(b""))
    token = b"bench.h2load.token"
    facade_body.write_bytes(facade_request(token))
    port, metrics_port = free_port(), free_port()
    proc = start_service(port, nginx_port, "--coalesce=false", metrics_port=metrics_port)
    try:
        floor = h2load(port, "/grpc.health.v1.Health/Check", health_body, seconds)
        facade = h2load(port, "/cognito.idp.v1.IdentityProviderService/GetUserAuthFactors",
                        facade_body, seconds)
        ok = metric_sum(metrics_port, "cognito_facade_rpc_requests_total", 'code="OK"')
        upstream = metric_sum(metrics_port, "cognito_facade_upstream_requests_total")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    sdk = load("sdk", f"http://127.0.0.1:{nginx_port}", 64, seconds)
    predicted = 1 / (1 / floor["rps"] + 1 / sdk["rps"])
    return {"floor": floor, "facade": facade, "sdk": sdk, "ok": ok, "upstream": upstream,
            "ratio": facade["rps"] / predicted}


def svg_plot(rows, path):
    """Throughput and p99 against concurrency, as a dependency-free SVG."""
    levels = [r["concurrency"] for r in rows]
    series = {"gRPC floor": "health", "SDK floor": "sdk", "facade": "facade"}
    colours = {"gRPC floor": "#1b9e77", "SDK floor": "#7570b3", "facade": "#d95f02"}
    w, h, pad = 420, 260, 50

    def panel(x0, title, key, unit):
        top = max(max(r[s][key] for r in rows) for s in series.values()) or 1
        parts = [f'<text x="{x0 + w / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>',
                 f'<line x1="{x0 + pad}" y1="{h - pad}" x2="{x0 + w - 10}" y2="{h - pad}" stroke="black"/>',
                 f'<line x1="{x0 + pad}" y1="30" x2="{x0 + pad}" y2="{h - pad}" stroke="black"/>',
                 f'<text x="{x0 + 5}" y="35" font-size="10">{top:.0f} {unit}</text>']
        n = len(levels)
        xs = [x0 + pad + (w - pad - 20) * (i / max(n - 1, 1)) for i in range(n)]
        for i, c in enumerate(levels):
            parts.append(f'<text x="{xs[i]}" y="{h - pad + 15}" text-anchor="middle" font-size="10">{c}</text>')
        parts.append(f'<text x="{x0 + w / 2}" y="{h - 12}" text-anchor="middle" font-size="11">concurrency</text>')
        for label, key_ in series.items():
            pts = " ".join(f"{xs[i]:.1f},{(h - pad) - (h - pad - 30) * rows[i][key_][key] / top:.1f}"
                           for i in range(n))
            parts.append(f'<polyline fill="none" stroke="{colours[label]}" stroke-width="2" points="{pts}"/>')
        return parts

    parts = panel(0, "throughput (calls/s)", "rps", "/s") + panel(w + 20, "p99 latency (µs)", "p99_us", "µs")
    for i, label in enumerate(series):
        parts.append(f'<rect x="{60 + i * 120}" y="{h + 5}" width="12" height="12" fill="{colours[label]}"/>')
        parts.append(f'<text x="{76 + i * 120}" y="{h + 15}" font-size="11">{label}</text>')
    path.write_text(f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * w + 20}" height="{h + 25}" '
                    f'font-family="sans-serif">' + "".join(parts) + "</svg>\n")


def rebased_targets(rows, memory, lean):
    """What the facade itself adds to its two legs (issue 14): each row with
    its inputs, target and verdict."""
    by = {r["concurrency"]: r for r in rows}

    def added_cpu(c):
        r = by.get(c)
        if not r:
            return None
        f = r["facade"].get("cpu_us", {}).get("service", 0)
        g = r["health"].get("cpu_us", {}).get("service", 0)
        s = r["sdk"].get("cpu_us", {}).get("loadgen", 0)
        return f, g, s, f - (g + s)

    lines = ["## Targets (re-based: what the facade adds)", "",
             "The targets of issue 14: what the facade adds to its two legs (the gRPC floor's server "
             "work and the SDK floor's client work), with shipped defaults (info logs, metrics, single "
             "flight on), no user pools, no trace export. CPU from `/proc` over each measured window. "
             "The load generator, and so the SDK floor, runs the service's allocator and runtime "
             "settings (mimalloc, tokio's LIFO slot off): the same client under the same runtime. "
             "The p50 target is over the SDK floor alone, so the gRPC floor's own round trip (the row "
             "after it) counts against it.", "",
             "| target | inputs | measured | target | verdict |", "|---|---|---|---|---|"]
    for c, target in ((64, 15), (1, 40)):
        got = added_cpu(c)
        if got:
            f, g, s, added = got
            lines.append(f"| CPU the facade adds per call at concurrency {c} | service {f:.0f} − (gRPC-floor "
                         f"server {g:.0f} + SDK-floor client {s:.0f}) µs | {added:.0f} µs | ≤ {target} µs | "
                         f"{verdict(added <= target)} |")
    if 1 in by:
        f, s = by[1]["facade"]["p50_us"], by[1]["sdk"]["p50_us"]
        g = by[1]["health"]["p50_us"]
        lines.append(f"| p50 at concurrency 1, facade minus SDK floor, default worker count | {f} − {s} µs | "
                     f"{f - s} µs | ≤ 100 µs | {verdict(f - s <= 100)} |")
        lines.append(f"| p50 at concurrency 1 over both floors: facade minus SDK floor minus gRPC floor | "
                     f"{f} − {s} − {g} µs | {f - s - g} µs | reported | |")
    held, sdk = memory["service_peak_kb"] / 1024, memory["sdk_peak_kb"] / 1024
    lines.append(f"| memory with {memory['inflight']} calls in flight: service peak minus SDK-alone peak | "
                 f"{held:.1f} − {sdk:.1f} MiB | {held - sdk:.1f} MiB | ≤ 4 MiB | {verdict(held - sdk <= 4)} |")
    if 64 in by:
        lines.append(f"| throughput against the floors, `bench/loadgen.rs` at 64 | facade / predicted | "
                     f"{by[64]['ratio']:.2f} | reported | |")
    fl, fa, sd = lean["floor"], lean["facade"], lean["sdk"]
    lines.append(f"| throughput against the floors, h2load (16 connections × 4 streams) | facade {fa['rps']:.0f} "
                 f"/s against 1 / (1/{fl['rps']:.0f} + 1/{sd['rps']:.0f}) | {lean['ratio']:.2f} | ≥ 0.9 | "
                 f"{verdict(lean['ratio'] >= 0.9)} |")
    lines += ["", f"h2load's facade run: {lean['ok']} calls answered OK, {lean['upstream']} upstream calls, "
              f"{fa['failed'] + fl['failed']} failed at the HTTP level (`--coalesce=false`: h2load sends one "
              "body to every call, which single flight would otherwise share). The two load generators "
              "differ because each is a third process on the same two cores: `bench/loadgen.rs` (tonic, "
              "with its own per-call work) takes a share of the CPU the service would otherwise use, "
              "h2load (C, no per-call allocation) takes less; the SDK floor is the load generator's SDK "
              "mode in both."]
    return lines
