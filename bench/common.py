"""The benchmark's shared helpers: paths, ports, the nginx stand-in, the
service's flags, the load generator, CPU and RSS of a process, the report's
small pieces. Every scenario module (and `ab.py`, `idle_rss.py`, `soak.py`)
builds on these; this module imports none of them."""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent


RELEASE = ROOT / "target" / "release"


SERVICE = RELEASE / "cognito-facade"


LOADGEN = RELEASE / "examples" / "loadgen"


STANDIN = RELEASE / "examples" / "cognito-standin"


PROFILE = ROOT / "bench" / "PROFILE.md"


BODY = ('{"Username":"bench-user","PreferredMfaSetting":"SOFTWARE_TOKEN_MFA",'
        '"UserMFASettingList":["SOFTWARE_TOKEN_MFA"],'
        '"ConfiguredUserAuthFactors":["PASSWORD","WEB_AUTHN"]}')


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(*args, **kw):
    return subprocess.run(args, check=True, text=True, capture_output=True, **kw).stdout


def ensure_nginx():
    if shutil.which("nginx") or os.path.exists("/usr/sbin/nginx"):
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "nginx-light"], check=True, env=env)


def ensure_h2load():
    if shutil.which("h2load"):
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "install", "-y", "-qq", "nghttp2-client"], check=True, env=env)


def grpc_frame(message):
    """A gRPC length-prefixed message, uncompressed."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def facade_request(token):
    """A GetUserAuthFactors call's body for h2load: the gRPC frame of the
    request message with `access_token` (field 1, under 128 bytes) set."""
    assert len(token) < 128
    return grpc_frame(b"\x0a" + bytes([len(token)]) + token)


def start_nginx(workdir, port, jwks_dir):
    """nginx as Cognito: a fixed GetUserAuthFactors answer for every POST,
    and `jwks_dir/jwks.json` for every pool's JWKS."""
    prefix = workdir / "nginx"
    (prefix / "logs").mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
error_log {prefix}/logs/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 60s;
  client_body_temp_path {prefix}/body;
  server {{
    listen 127.0.0.1:{port} reuseport;
    location ~ /\.well-known/jwks\.json$ {{
      default_type application/json;
      root {jwks_dir};
      try_files /jwks.json =404;
    }}
    location = /v1/traces {{
      default_type application/x-protobuf;
      return 200 '';
    }}
    location / {{
      default_type application/x-amz-json-1.1;
      add_header x-amzn-RequestId 00000000-0000-4000-8000-000000000000 always;
      return 200 '{BODY}';
    }}
  }}
}}
""")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(prefix)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc


def wait_port(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listening on {port}")


def service_args(port, upstream_port, *extra, metrics_port=0, drain="0s", binary=SERVICE):
    """The service as deployed: default flags, metrics recorded and served
    (on `metrics_port`, any free one by default, unless `extra` sets
    `--metrics-addr`), loopback only; no drain delay unless asked, so runs
    end promptly. `binary`: another build of the service (`bench/ab.py`)."""
    metrics = ([] if any(flag.startswith("--metrics-addr") for flag in extra)
               else ["--metrics-addr", f"127.0.0.1:{metrics_port}"])
    return [str(binary), "--region", "us-east-1",
            "--cognito-endpoint", f"http://127.0.0.1:{upstream_port}",
            "--listen-addr", f"127.0.0.1:{port}", *metrics, "--drain-delay", drain, *extra]


def start_service(port, upstream_port, *extra, metrics_port=0, env=None, binary=SERVICE):
    proc = subprocess.Popen(service_args(port, upstream_port, *extra, metrics_port=metrics_port,
                                         binary=binary),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, **(env or {})))
    wait_port(port)
    return proc


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class PeakRss:
    """Samples a process's RSS every 20 ms while a load runs."""

    def __init__(self, pid):
        self.pid, self.peak, self.running = pid, 0, True
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def sample(self):
        while self.running:
            self.peak = max(self.peak, rss_kb(self.pid))
            time.sleep(0.02)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """A process's user + system CPU time so far (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def children(pid):
    """The pids whose parent is `pid` (nginx's workers)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return found


def load(mode, target, concurrency, seconds, *extra, cpu_of=None, peak_rss=False):
    """One load generator run. The result carries `cpu_us` (µs of CPU per
    call over the measured window) for the load generator (`loadgen`) and for
    each process in `cpu_of` ({name: [pids]}), and with `peak_rss` the load
    generator's own peak RSS in `peak_rss_kb`."""
    procs = dict(cpu_of or {})
    proc = subprocess.Popen([str(LOADGEN), "--mode", mode, "--target", target,
                             "--concurrency", str(concurrency), "--seconds", str(seconds), *extra],
                            stdout=subprocess.PIPE, text=True)
    procs["loadgen"] = [proc.pid]
    edges, last = [], ""
    with PeakRss(proc.pid) if peak_rss else contextlib.nullcontext() as peak:
        for line in proc.stdout:
            if line.strip() in ("measuring", "measured"):
                edges.append({name: sum(cpu_seconds(p) for p in pids) for name, pids in procs.items()})
            last = line
    if proc.wait() != 0:
        raise RuntimeError(f"the load generator failed ({mode}, {concurrency})")
    result = json.loads(last)
    if len(edges) == 2 and result["requests"]:
        result["cpu_us"] = {name: (edges[1][name] - edges[0][name]) / result["requests"] * 1e6
                            for name in procs}
    if peak:
        result["peak_rss_kb"] = peak.peak
    return result


def metric_sum(metrics_port, name, label=""):
    """Sums a counter's samples on the service's /metrics page, optionally
    only those whose labels contain `label`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as page:
        text = page.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {") and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


# The pool of the verification figures (tokens minted by `loadgen --mode mint`).
BENCH_POOL = "us-east-1_BenchPool"


def verdict(ok):
    return "met" if ok else "**missed**"


def demoted(markdown_lines):
    """Markdown with every heading one level deeper (code blocks untouched),
    to sit under a heading of its own."""
    out, in_code = [], False
    for line in markdown_lines:
        if line.startswith("```"):
            in_code = not in_code
        out.append("#" + line if line.startswith("#") and not in_code else line)
    return out


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def nginx_version():
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    out = subprocess.run([nginx, "-v"], capture_output=True, text=True)
    return (out.stderr or out.stdout).strip()


def cargo_version():
    for line in (ROOT / "Cargo.toml").read_text().splitlines():
        if line.startswith("version"):
            return line.split('"')[1]
    return "?"
