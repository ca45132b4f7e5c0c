//! The test harness: the Cognito stand-in (shared with the
//! `cognito-standin` example), `spawn_app()` running the real server on
//! `127.0.0.1:0`, and the binary as a subprocess.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use cognito_facade::{
    app::Application,
    config::{Config, EconomyConfig, UpstreamConfig},
    proto::identity_provider_service_client::IdentityProviderServiceClient,
    proto::{GetUserAuthFactorsRequest, GetUserAuthFactorsResponse},
    server::{ServerConfig, ServerError},
};
use serde_json::Value;
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;

// The example binary uses parts of the stand-in that the tests do not.
#[allow(dead_code)]
#[path = "../../examples/cognito-standin/standin.rs"]
mod standin;
pub(crate) use standin::{
    ADMIN_TARGET, AWS_JSON, Reply, StandIn, TARGET, USERNAME,
    sigv4::{ACCESS_KEY_ID, EXPIRED_SESSION_TOKEN, SECRET_ACCESS_KEY},
};

/// A token that passes validation.
pub(crate) const TOKEN: &str =
    "eyJraWQiOiJrMSJ9.eyJzdWIiOiJ1MSIsInNjb3BlIjoiYWRtaW4ifQ.c2lnbmF0dXJl";

/// The shipped defaults, changed only where tests need it: loopback on an
/// ephemeral port, no metrics listener (tests install a local recorder), the
/// stand-in as Cognito, short timeouts and delays so tests stay fast, and no
/// refusal memory (many tests send one token through several refusals;
/// `tests/api/quota.rs` tests the memory with its shipped default).
pub(crate) fn test_config(endpoint: &str) -> Config {
    let defaults = Config::default();
    Config {
        server: ServerConfig {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            drain_delay: Duration::from_millis(300),
            shutdown_grace: Duration::from_secs(3),
            ..defaults.server
        },
        upstream: UpstreamConfig {
            region: Some("eu-west-1".to_owned()),
            endpoint: Some(endpoint.to_owned()),
            connect_timeout: Duration::from_millis(500),
            call_timeout: Duration::from_secs(3),
            retry_backoff: Duration::from_millis(5),
            ..defaults.upstream
        },
        economy: EconomyConfig {
            cache_max_entries: 100,
            refusal_ttl: None,
            ..defaults.economy
        },
        metrics_addr: None,
        ..defaults
    }
}

/// The real server, running in this process on `127.0.0.1:0`.
#[derive(Debug)]
pub(crate) struct TestApp {
    pub(crate) addr: SocketAddr,
    pub(crate) channel: Channel,
    pub(crate) client: IdentityProviderServiceClient<Channel>,
    pub(crate) stand_in: StandIn,
    shutdown: Option<oneshot::Sender<()>>,
    pub(crate) server: Option<JoinHandle<Result<(), ServerError>>>,
}

impl TestApp {
    /// Sends the shutdown signal (what SIGTERM does in `main`).
    pub(crate) fn shut_down(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits for `run` to return.
    pub(crate) async fn stopped(&mut self) -> Result<(), ServerError> {
        self.server.take().expect("not yet awaited").await.unwrap()
    }
}

/// Starts a stand-in and the server against it, with [`test_config`].
pub(crate) async fn spawn_app() -> TestApp {
    let stand_in = StandIn::start().await;
    let config = test_config(&stand_in.endpoint);
    spawn_app_with(stand_in, config).await
}

/// Builds the application from `config` exactly as the binary does, and
/// runs it until the test calls [`TestApp::shut_down`].
pub(crate) async fn spawn_app_with(stand_in: StandIn, config: Config) -> TestApp {
    let app = Application::build(config).await.unwrap();
    let addr = app.addr();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = rx.await;
    }));
    // The listener is bound already, so connecting cannot race the server.
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    TestApp {
        addr,
        client: IdentityProviderServiceClient::new(channel.clone()),
        channel,
        stand_in,
        shutdown: Some(tx),
        server: Some(server),
    }
}

/// Waits until the stand-in has seen `n` requests, for at most 5 s.
pub(crate) async fn until_received(stand_in: &StandIn, n: usize) {
    for _ in 0..500 {
        if stand_in.received().len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the stand-in never saw {n} requests");
}

/// One call that must fail within `bound`: its status and ErrorInfo.
pub(crate) async fn failed_call(
    app: &mut TestApp,
    bound: Duration,
) -> (tonic::Status, tonic_types::ErrorInfo) {
    let started = Instant::now();
    let status = app
        .client
        .get_user_auth_factors(request(TOKEN))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < bound,
        "answered after {:?}: {status:?}",
        started.elapsed()
    );
    let info = tonic_types::StatusExt::get_details_error_info(&status)
        .expect("every error carries ErrorInfo");
    (status, info)
}

/// Cognito answers normally again, and the next call succeeds.
pub(crate) async fn next_call_succeeds(app: &mut TestApp) {
    app.stand_in.always(Reply::full_success());
    app.client
        .get_user_auth_factors(request(TOKEN))
        .await
        .expect("the next good call succeeds");
}

/// Starts a call with `token` in the background.
pub(crate) fn spawn_call(
    app: &TestApp,
    token: &str,
) -> JoinHandle<Result<tonic::Response<GetUserAuthFactorsResponse>, tonic::Status>> {
    let mut client = app.client.clone();
    let request = request(token);
    tokio::spawn(async move { client.get_user_auth_factors(request).await })
}

/// A request with the token in the field.
pub(crate) fn request(token: &str) -> tonic::Request<GetUserAuthFactorsRequest> {
    tonic::Request::new(GetUserAuthFactorsRequest {
        access_token: token.to_owned(),
    })
}

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_cognito-facade");

/// The binary with an empty environment (no AWS settings, no home directory,
/// so no profile and no credentials) plus `envs`.
pub(crate) fn command(args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args).env_clear().env("HOME", "/nonexistent");
    for (key, value) in envs {
        command.env(key, value);
    }
    command
}

/// The binary running on `127.0.0.1:0` with JSON logs on stdout; killed if
/// the test fails before it exits.
#[derive(Debug)]
pub(crate) struct Running {
    child: Child,
    pub(crate) addr: SocketAddr,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// A helper process (moto, the OTLP receiver), killed and reaped when its
/// test is done with it, whichever way the test ends.
pub(crate) struct KilledOnDrop(pub(crate) Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    /// Starts the binary and waits (bounded) for its "serving" log line, which
    /// names the bound address (so a `RUST_LOG` filter must let
    /// `cognito_facade::server` log at info).
    pub(crate) fn start(args: &[&str], envs: &[(&str, &str)]) -> Self {
        Self::spawn(command(args, &Self::with_test_envs(envs)))
    }

    /// As [`Running::start`], with the file-descriptor limits set by the
    /// shell (`ulimit`) before the binary starts.
    pub(crate) fn start_with_fd_limits(
        soft: u64,
        hard: u64,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Self {
        let mut shell = Command::new("sh");
        shell
            .arg("-c")
            .arg(format!(
                "ulimit -S -n {soft} && ulimit -H -n {hard} && exec \"$0\" \"$@\""
            ))
            .arg(BIN)
            .args(args)
            .env_clear()
            .env("HOME", "/nonexistent");
        for (key, value) in Self::with_test_envs(envs) {
            shell.env(key, value);
        }
        Self::spawn(shell)
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Loopback listeners, JSON logs and a short drain, then `envs`.
    fn with_test_envs<'a>(envs: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut all_envs = vec![
            ("COGNITO_FACADE_LISTEN_ADDR", "127.0.0.1:0"),
            ("COGNITO_FACADE_METRICS_ADDR", "127.0.0.1:0"),
            ("COGNITO_FACADE_LOG_FORMAT", "json"),
            ("COGNITO_FACADE_DRAIN_DELAY", "100ms"),
        ];
        all_envs.extend_from_slice(envs);
        all_envs
    }

    fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut running = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            lines,
            seen: Vec::new(),
        };
        running.addr = running.wait_for_addr("serving");
        running
    }

    /// Starts the binary against `stand_in` (region and endpoint from the
    /// SDK's environment variables) with `args` and extra `envs`.
    pub(crate) fn against(stand_in: &StandIn, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut all = vec![
            ("AWS_REGION", "eu-west-1"),
            (
                "AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER",
                stand_in.endpoint.as_str(),
            ),
        ];
        all.extend_from_slice(envs);
        Self::start(args, &all)
    }

    /// Waits for the log line whose message is exactly `message` and returns
    /// its `addr` field (JSON or text format).
    pub(crate) fn wait_for_addr(&mut self, message: &str) -> SocketAddr {
        let text_prefix = format!(" {message} addr=");
        let addr_of = |line: &str| -> Option<SocketAddr> {
            let addr = match serde_json::from_str::<Value>(line) {
                Ok(parsed) if parsed["fields"]["message"] == message => {
                    parsed["fields"]["addr"].as_str().map(str::to_owned)
                }
                Ok(_) => None,
                // Text format: `... serving addr=127.0.0.1:PORT ...`.
                Err(_) => line.split_once(&text_prefix).map(|(_, rest)| {
                    rest.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned()
                }),
            };
            addr.map(|addr| addr.parse().unwrap())
        };
        if let Some(addr) = self.seen.iter().find_map(|line| addr_of(line)) {
            return addr;
        }
        loop {
            if let Some(addr) = addr_of(&self.wait_for_line(message)) {
                return addr;
            }
        }
    }

    /// The first log line containing `needle`, among those seen already or
    /// else the next ones (waiting at most 10 s).
    pub(crate) fn find_line(&mut self, needle: &str) -> String {
        match self.seen.iter().find(|line| line.contains(needle)) {
            Some(line) => line.clone(),
            None => self.wait_for_line(needle),
        }
    }

    /// Waits (at most 10 s) for a log line containing `needle`.
    pub(crate) fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no log line with {needle:?} within 10 s"));
            self.seen.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// A client connected to the binary.
    pub(crate) async fn client(&self) -> IdentityProviderServiceClient<Channel> {
        IdentityProviderServiceClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    /// One call with the token in the field; the username or the status.
    pub(crate) async fn call(&self) -> Result<String, tonic::Status> {
        self.client()
            .await
            .get_user_auth_factors(request(TOKEN))
            .await
            .map(|r| r.into_inner().username)
    }

    /// Sends SIGTERM and waits (bounded) for the exit code, without blocking
    /// the runtime: the stand-in and client connections live on it.
    pub(crate) async fn terminate(&mut self) -> Option<i32> {
        self.send_sigterm();
        self.exit_code(Duration::from_secs(10)).await
    }

    /// Sends SIGTERM and returns at once.
    pub(crate) fn send_sigterm(&self) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Waits at most `bound` for the process to exit; its exit code.
    pub(crate) async fn exit_code(&mut self, bound: Duration) -> Option<i32> {
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("still running {bound:?} after SIGTERM");
    }

    /// Every log line, once the process has exited.
    pub(crate) fn logs(&mut self) -> Vec<String> {
        assert!(self.child.try_wait().unwrap().is_some(), "still running");
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        self.seen.clone()
    }
}

/// A Prometheus recorder for the current thread only. `#[tokio::test]` runs
/// the test and the server it spawns on one thread, so this test's calls, and
/// no other test's, record here.
pub(crate) struct LocalMetrics {
    handle: metrics_exporter_prometheus::PrometheusHandle,
    _guard: metrics::LocalRecorderGuard<'static>,
}

impl LocalMetrics {
    pub(crate) fn install() -> Self {
        // Leaked so the guard can borrow it for the rest of the test.
        let recorder: &'static metrics_exporter_prometheus::PrometheusRecorder = Box::leak(
            Box::new(metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder()),
        );
        Self {
            handle: recorder.handle(),
            _guard: metrics::set_default_local_recorder(recorder),
        }
    }

    /// The Prometheus page of this test's metrics.
    pub(crate) fn render(&self) -> String {
        self.handle.render()
    }

    /// The in-flight gauge, once some call has moved it.
    fn in_flight(&self) -> Option<f64> {
        self.handle.render().lines().find_map(|line| {
            line.strip_prefix(cognito_facade::test_support::RPC_IN_FLIGHT)?
                .strip_prefix(' ')?
                .parse()
                .ok()
        })
    }

    /// Waits (at most 2 s) for the in-flight gauge to be back at zero after
    /// the calls this test made.
    pub(crate) async fn until_nothing_in_flight(&self) {
        for _ in 0..200 {
            if self.in_flight() == Some(0.0) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("calls still in flight: {:?}", self.in_flight());
    }
}

/// `GET /metrics` over plain HTTP/1.1; the body.
pub(crate) async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let get = b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n";
    tokio::io::AsyncWriteExt::write_all(&mut stream, get)
        .await
        .unwrap();
    let mut response = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut response)
        .await
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response.split_once("\r\n\r\n").unwrap().1.to_owned()
}

/// The value of the sample `series` (name and labels exactly as rendered).
pub(crate) fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.trim().parse().unwrap())
}

/// Starts a call with `token` that Cognito answers only after `delay`, and
/// returns once the stand-in has seen it (its `nth` request): the call holds
/// a permit meanwhile.
pub(crate) async fn slow_call_in_flight(
    stand_in: &StandIn,
    client: &IdentityProviderServiceClient<Channel>,
    token: &str,
    delay: Duration,
    nth: usize,
) -> JoinHandle<Result<tonic::Response<GetUserAuthFactorsResponse>, tonic::Status>> {
    stand_in.then([Reply::Delay(delay, Box::new(Reply::full_success()))]);
    let mut client = client.clone();
    let request = request(token);
    let call = tokio::spawn(async move { client.get_user_auth_factors(request).await });
    until_received(stand_in, nth).await;
    call
}

/// With `--max-concurrent-requests 1`: a slow call holds the only permit and
/// the next call is shed. The shed call's status, once the slow one is done.
pub(crate) async fn shed_one_call(
    stand_in: &StandIn,
    client: &mut IdentityProviderServiceClient<Channel>,
    nth: usize,
) -> tonic::Status {
    let slow = slow_call_in_flight(
        stand_in,
        client,
        "slow.token",
        Duration::from_millis(400),
        nth,
    )
    .await;
    let shed = client
        .get_user_auth_factors(request("shed.token"))
        .await
        .unwrap_err();
    slow.await.unwrap().expect("the slow call succeeds");
    shed
}

/// The `bin` directory of a Python virtualenv under `target/` named `name`
/// with `requirements` (a pip requirements file's text) installed from
/// PyPI. Made on first use, and again only when `requirements` change; tests
/// run in parallel, so one makes it while the others wait.
pub(crate) fn python_venv(name: &str, requirements: &str) -> std::path::PathBuf {
    static MADE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut made = MADE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let venv = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let bin = venv.join("bin");
    let marker = venv.join("installed-requirements.txt");
    let installed = std::fs::read_to_string(&marker).ok();
    if made.iter().any(|n| n == name) || installed.as_deref() == Some(requirements) {
        return bin;
    }
    let run = |program: &std::path::Path, args: &[&str]| {
        let status = Command::new(program).args(args).status().unwrap();
        assert!(status.success(), "{program:?} {args:?}: {status}");
    };
    run("python3".as_ref(), &["-m", "venv", venv.to_str().unwrap()]);
    let wanted = venv.join("requirements.txt");
    std::fs::write(&wanted, requirements).unwrap();
    run(
        &bin.join("pip"),
        &[
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            wanted.to_str().unwrap(),
        ],
    );
    std::fs::write(marker, requirements).unwrap();
    made.push(name.to_owned());
    bin
}
