#!/usr/bin/env python3
"""The benchmark: gRPC floor, SDK floor and the facade, side by side in one run.

    python3 bench/run.py             # full run, writes BENCHMARKS.md and bench/throughput.svg
    python3 bench/run.py --smoke     # seconds-long run for CI, writes under target/
    python3 bench/run.py --fleet-baseline OLD_BINARY   # the fleet's figures before and after
    python3 bench/run.py --callers-baseline OLD_BINARY # callers' uncontended cost, against it

With --fleet-baseline, the fleet's own figures (a fleet hit's p50, a
follower's lag, CPU per call on a miss and with Redis dead) are measured for
that build of the service too, interleaved with this one, round by round,
and reported side by side (build it from an older commit first, e.g. with
`git worktree add` and `cargo build --release` in its own target directory).
With --callers-baseline, the uncontended path's instructions per call are
counted for that build too (bench/callers.py).

Starts nginx (Debian's nginx-light, installed if missing) as a fast Cognito
stand-in answering a fixed awsJson1.1 body, the release service against it,
and the load generator (bench/loadgen.rs). Everything binds 127.0.0.1 and
every load is bounded in time. Ratios measured in the same run are the
result; absolute numbers drift with the machine.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import callers  # noqa: E402  (bench/callers.py: the callers scenario)
import common
from common import (BENCH_POOL, LOADGEN, PROFILE, PeakRss, ROOT, STANDIN, cargo_version, children, cpu_model, demoted, ensure_h2load, ensure_nginx, free_port, load, nginx_version, service_args, sh, start_nginx, start_service, verdict, wait_port)
from bodies import unfinished_bodies, unfinished_report
from economy import (ECONOMY_CALLERS, ECONOMY_TOKENS, ECONOMY_UPSTREAM_MS, economy)
from fleet import fleet, fleet_report
from mesh import envoy_cost, envoy_report
from outage import outage, outage_report
from quota import quota, quota_report
from throughput import lean_throughput, rebased_targets, svg_plot
from tokens import verification, verification_report
from tracing import tracing_cost, tracing_report


def only_mesh(workdir, smoke):
    nginx_port = free_port()
    (workdir / "only-jwks").mkdir(exist_ok=True)
    nginx = start_nginx(workdir, nginx_port, workdir / "only-jwks")
    try:
        return envoy_report(envoy_cost(nginx_port, workdir, smoke), smoke)
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)


# The scenarios `--only` runs alone, by name.
ONLY = {"mesh": only_mesh}


def only(name, workdir, smoke):
    """One scenario alone: its report on stdout and under target/ and, for a
    full run, in place of its section of BENCHMARKS.md (the rest of the
    report stays as the last full run wrote it)."""
    lines = ONLY[name](workdir, smoke)
    text = "\n".join(lines) + "\n"
    (ROOT / "target" / f"bench-{name}.md").write_text(text)
    print(text)
    if not smoke:
        replace_section(ROOT / "BENCHMARKS.md", lines)
    return 0


def replace_section(path, lines):
    """`lines` (which open with a blank line and their `## ` heading) in
    place of the section of `path` with the same heading."""
    heading = next(line for line in lines if line.startswith("## "))
    text = path.read_text()
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    new = "\n".join(lines) + "\n"
    path.write_text(text[:start] + new + (text[end:] if end >= 0 else ""))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="seconds-long run for CI")
    parser.add_argument("--fleet-baseline", metavar="BINARY", type=Path,
                        help="another build of the service whose fleet figures are measured "
                             "beside this one's")
    parser.add_argument("--callers-baseline", metavar="BINARY", type=Path,
                        help="a build from before callers were told apart, whose instructions "
                             "per call are counted beside this one's")
    parser.add_argument("--only", choices=sorted(ONLY),
                        help="run one scenario: its report on stdout and in target/bench-<name>.md "
                             "and, unless --smoke, in place of its own section of BENCHMARKS.md "
                             "(the rest, the machine and the date stay as the last full run wrote)")
    args = parser.parse_args()
    smoke = args.smoke
    levels = [1, 16] if smoke else [1, 16, 64, 256, 1024]
    seconds = 0.5 if smoke else 8
    report = ROOT / "target" / "bench-smoke.md" if smoke else ROOT / "BENCHMARKS.md"
    plot = ROOT / "target" / "bench-smoke.svg" if smoke else ROOT / "bench" / "throughput.svg"
    workdir = ROOT / "target" / "bench"
    workdir.mkdir(parents=True, exist_ok=True)

    ensure_nginx()
    ensure_h2load()
    subprocess.run(["cargo", "build", "--locked", "--release", "--bin", "cognito-facade",
                    "--example", "loadgen", "--example", "cognito-standin",
                    "--example", "authz-floor"], check=True, cwd=ROOT)
    if args.only:
        return only(args.only, workdir, smoke)

    tokens_dir = workdir / "tokens"
    sh(str(LOADGEN), "--mode", "mint", "--target", str(tokens_dir), "--pool", BENCH_POOL,
       "--valid", "256" if smoke else "4096")

    procs = []
    try:
        nginx_port = free_port()
        nginx = start_nginx(workdir, nginx_port, tokens_dir)
        procs.append(nginx)
        stand_in = {"stand-in": children(nginx.pid) or [nginx.pid]}

        # Start-up and idle memory: the median of a few starts.
        starts = []
        for _ in range(1 if smoke else 5):
            port = free_port()
            out = sh(str(LOADGEN), "--mode", "startup", "--target", f"http://127.0.0.1:{port}",
                     "--", *service_args(port, nginx_port))
            starts.append(json.loads(out.strip().splitlines()[-1]))
        serving_ms = statistics.median(s["serving_ms"] for s in starts)
        idle_rss_kb = statistics.median(s["idle_rss_kb"] for s in starts)

        port = free_port()
        service = start_service(port, nginx_port)
        procs.append(service)
        target = f"http://127.0.0.1:{port}"
        rows = []
        for c in levels:
            row = {"concurrency": c}
            row["health"] = load("health", target, c, seconds, cpu_of={"service": [service.pid]})
            row["sdk"] = load("sdk", f"http://127.0.0.1:{nginx_port}", c, seconds, cpu_of=stand_in)
            with PeakRss(service.pid) as peak:
                row["facade"] = load("facade", target, c, seconds,
                                     cpu_of={"service": [service.pid], **stand_in})
            row["peak_rss_kb"] = peak.peak
            rows.append(row)
            print(json.dumps(row), flush=True)

        # Memory with many calls held in flight by a slow upstream.
        inflight = 200 if smoke else 1000
        slow_port = free_port()
        procs.append(subprocess.Popen([str(STANDIN), f"127.0.0.1:{slow_port}", "1s"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(slow_port)
        held_port = free_port()
        held = start_service(held_port, slow_port, "--max-concurrent-requests", "2000")
        procs.append(held)
        with PeakRss(held.pid) as held_peak:
            held_load = load("facade", f"http://127.0.0.1:{held_port}", inflight, 1 if smoke else 3)
        # The same calls straight through the AWS SDK (the load generator's
        # SDK mode): what the SDK alone holds per call in flight.
        sdk_one = load("sdk", f"http://127.0.0.1:{slow_port}", 1, 1, peak_rss=True)
        sdk_held = load("sdk", f"http://127.0.0.1:{slow_port}", inflight, 1 if smoke else 3,
                        peak_rss=True)
        if sdk_one["errors"] or sdk_held["errors"]:
            raise RuntimeError(f"calls failed in the SDK's memory run: {sdk_held['error_codes']}")

        # Upstream-call economy against a stand-in with Cognito-like latency.
        cognito_like_port = free_port()
        procs.append(subprocess.Popen([str(STANDIN), f"127.0.0.1:{cognito_like_port}",
                                       f"{ECONOMY_UPSTREAM_MS}ms"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(cognito_like_port)
        savings = economy(cognito_like_port, ECONOMY_TOKENS, ECONOMY_CALLERS, 1 if smoke else 5)
        fleet_figures = fleet(cognito_like_port, workdir, smoke, args.fleet_baseline)
        fleet_figures["baseline"] = args.fleet_baseline
        quota_figures = quota(cognito_like_port, workdir, smoke)
        outage_figures = outage(workdir, smoke)
        envoy_figures = envoy_cost(nginx_port, workdir, smoke)
        bodies_figures = unfinished_bodies(nginx_port, smoke)
        callers_figures = callers.fairness(common, nginx_port, smoke)
        uncontended = callers.uncontended(common, nginx_port, smoke,
                                          args.callers_baseline)

        verified = verification(nginx_port, tokens_dir, 0.5 if smoke else 5, 1 if smoke else 3,
                                0.02 if smoke else 0.4)
        traced = tracing_cost(nginx_port, 0.5 if smoke else 5, 1 if smoke else 3)
        lean = lean_throughput(nginx_port, workdir, 1 if smoke else 8)
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()

    svg_plot(rows, plot)
    memory = {"inflight": inflight, "service_idle_kb": idle_rss_kb,
              "service_peak_kb": held_peak.peak, "service_load": held_load,
              "sdk_one_kb": sdk_one["peak_rss_kb"], "sdk_peak_kb": sdk_held["peak_rss_kb"]}
    write_report(report, plot, rows, serving_ms, memory, savings, verified, traced, lean, smoke,
                 fleet_report(fleet_figures, smoke) + quota_report(quota_figures, smoke)
                 + outage_report(outage_figures, smoke) + envoy_report(envoy_figures, smoke)
                 + unfinished_report(bodies_figures, smoke)
                 + callers.report(callers_figures, smoke)
                 + callers.uncontended_report(uncontended, smoke))
    print(f"wrote {report.relative_to(ROOT)} and {plot.relative_to(ROOT)}")


def write_report(path, plot, rows, serving_ms, memory, savings, verified, traced, lean, smoke,
                 fleet_lines):
    def mib(kb):
        return kb / 1024

    inflight, idle_rss_kb = memory["inflight"], memory["service_idle_kb"]
    held_rss_kb, held_load = memory["service_peak_kb"], memory["service_load"]

    lines = ["# Benchmarks", "",
             "Generated by `python3 bench/run.py`" + (" --smoke" if smoke else "") + "; do not edit by hand "
             "(the profiling notes at the end come from `bench/PROFILE.md`).", "",
             "## Machine", "",
             f"- {os.cpu_count()} CPUs, {platform.machine()}, Linux {platform.release()}",
             f"- {cpu_model()}",
             f"- {sh('rustc', '--version').strip()}; {nginx_version()}",
             f"- cognito-facade {cargo_version()}, release build; date {time.strftime('%Y-%m-%d')}",
             "", "## Throughput and latency", "",
             "Each level runs the three targets one after another for "
             f"{0.5 if smoke else 8} s each (after a warm-up). The facade's calls all carry distinct tokens, "
             "so single flight cannot help it. *Predicted* is 1 / (1/gRPC floor + 1/SDK floor): the "
             "throughput if the facade added nothing to its two legs.", "",
             "| concurrency | gRPC floor RPS | SDK floor RPS | facade RPS | facade / predicted | "
             "p50 µs (gRPC / SDK / facade) | p99 µs (gRPC / SDK / facade) | facade errors | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        g, s, f = r["health"], r["sdk"], r["facade"]
        predicted = 1 / (1 / g["rps"] + 1 / s["rps"]) if g["rps"] and s["rps"] else 0
        ratio = f["rps"] / predicted if predicted else 0
        r["ratio"] = ratio
        lines.append(f"| {r['concurrency']} | {g['rps']:.0f} | {s['rps']:.0f} | {f['rps']:.0f} | {ratio:.2f} | "
                     f"{g['p50_us']} / {s['p50_us']} / {f['p50_us']} | {g['p99_us']} / {s['p99_us']} / {f['p99_us']} | "
                     f"{f['errors']} | {mib(r['peak_rss_kb']):.1f} |")
    lines += ["", f"![throughput and p99 against concurrency]({os.path.relpath(plot, path.parent)})", "",
              "### CPU per call", "",
              "Microseconds of CPU (user + system, from `/proc`) per call over each measured window, by "
              "process. The floors' total is what the facade's run would cost if it added nothing: "
              "its service does the gRPC floor's server work and the SDK floor's client work.", "",
              "| concurrency | gRPC floor: service / load gen | SDK floor: load gen / stand-in | floors' total | "
              "facade: service / load gen / stand-in | facade total | facade / floors |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        g, s, f = (r[k].get("cpu_us", {}) for k in ("health", "sdk", "facade"))
        floors = sum(g.values()) + sum(s.values())
        total = sum(f.values())
        lines.append(f"| {r['concurrency']} | {g.get('service', 0):.0f} / {g.get('loadgen', 0):.0f} | "
                     f"{s.get('loadgen', 0):.0f} / {s.get('stand-in', 0):.0f} | {floors:.0f} | "
                     f"{f.get('service', 0):.0f} / {f.get('loadgen', 0):.0f} / {f.get('stand-in', 0):.0f} | "
                     f"{total:.0f} | {total / floors if floors else 0:.2f} |")

    def per_call(peak_kb, base_kb):
        return (peak_kb - base_kb) / inflight

    lines += ["", "### Memory with calls in flight", "",
              f"{inflight} calls held in flight by a stand-in that waits 1 s, through the service and "
              "straight through the AWS SDK (the load generator's SDK mode, same client settings), "
              "peak RSS sampled every 20 ms.", "",
              "| process | before | peak | KiB per call in flight |", "|---|---|---|---|",
              f"| the service (before: idle after start) | {mib(idle_rss_kb):.1f} MiB | "
              f"{mib(held_rss_kb):.1f} MiB | {per_call(held_rss_kb, idle_rss_kb):.0f} |",
              f"| the AWS SDK alone (before: one call in flight) | {mib(memory['sdk_one_kb']):.1f} MiB | "
              f"{mib(memory['sdk_peak_kb']):.1f} MiB | "
              f"{per_call(memory['sdk_peak_kb'], memory['sdk_one_kb']):.0f} |",
              ""]
    lines += rebased_targets(rows, memory, lean)
    lines += ["", "## Targets (issue 5, whole box)", "",
              "The first targets, against the whole box's throughput and the service's own RSS; kept "
              "beside the re-based ones above.", "",
              "| target | measured | verdict |", "|---|---|---|"]

    for r in rows:
        if r["concurrency"] in (64, 256):
            lines.append(f"| facade RPS ≥ 0.85 × predicted at {r['concurrency']} | {r['ratio']:.2f} × | "
                         f"{verdict(r['ratio'] >= 0.85)} |")
    one = next(r for r in rows if r["concurrency"] == 1)
    overhead = one["facade"]["p50_us"] - one["sdk"]["p50_us"]
    lines += [f"| facade p50 − SDK-floor p50 ≤ 100 µs at concurrency 1 | {overhead} µs | {verdict(overhead <= 100)} |",
              f"| peak RSS ≤ 30 MiB with {inflight} calls in flight (upstream waits 1 s) | "
              f"{mib(held_rss_kb):.1f} MiB ({held_load['requests']} calls, {held_load['errors']} errors; "
              f"the AWS SDK alone: {mib(memory['sdk_peak_kb']):.1f} MiB) | "
              f"{verdict(mib(held_rss_kb) <= 30)} |",
              f"| idle RSS ≤ 15 MiB after start | {mib(idle_rss_kb):.1f} MiB | {verdict(mib(idle_rss_kb) <= 15)} |",
              f"| process start to SERVING ≤ 100 ms | {serving_ms:.1f} ms | {verdict(serving_ms <= 100)} |",
              "", "## Upstream-call economy", "",
              f"{ECONOMY_CALLERS} callers, each call carrying one of {ECONOMY_TOKENS} tokens, against a "
              f"stand-in that answers in {ECONOMY_UPSTREAM_MS} ms (Cognito-like), "
              f"{1 if smoke else 5} s per variant. Calls and upstream calls are the service's own "
              "counters (`cognito_facade_rpc_requests_total{code=\"OK\"}`, "
              "`cognito_facade_upstream_requests_total`).", "",
              "| variant | calls answered | upstream calls | saved | facade errors | p50 µs |",
              "|---|---|---|---|---|---|"]
    for v in savings:
        saved = 1 - v["upstream"] / v["calls"] if v["calls"] else 0
        lines.append(f"| {v['label']} | {v['calls']} | {v['upstream']} | {saved:.0%} | {v['errors']} | "
                     f"{v['p50_us']} |")
    lines += verification_report(verified, smoke)
    lines += tracing_report(traced, smoke)
    lines += fleet_lines
    lines += ["", "## Profile", "",
              f"Copied from [`bench/PROFILE.md`]({os.path.relpath(PROFILE, path.parent)}), which is kept by "
              "hand: how the facade's own path was profiled, what stood out, what was changed for it "
              "and what is left.", ""]
    lines += demoted(PROFILE.read_text().split("\n", 1)[1].strip("\n").splitlines())
    lines.append("")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
