//! The fleet on Redis: three replicas of the real binary and a real
//! `redis-server` or `valkey-server` (`crate::store_server`: on `PATH`, or
//! installed into `target/`), on loopback.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use cognito_facade::proto::identity_provider_service_client::IdentityProviderServiceClient;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::{
    helpers::{
        KilledOnDrop, Reply, Running, StandIn, TOKEN, USERNAME, request, sample, scrape,
        until_received,
    },
    store_server::store_server,
};

/// A `redis-server` (or `valkey-server`) on a free loopback port, killed
/// when dropped, its directory removed.
pub(crate) struct Redis {
    process: Option<KilledOnDrop>,
    pub(crate) port: u16,
    pub(crate) dir: PathBuf,
    extra: Vec<String>,
    /// `redis-cli`'s own flags for this server (TLS, password).
    cli_flags: Vec<String>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "cognito-facade-{name}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Redis {
    pub(crate) fn start(extra: &[&str]) -> Self {
        let mut redis = Self {
            process: None,
            port: free_port(),
            dir: scratch_dir("redis"),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            cli_flags: Vec::new(),
        };
        redis.run();
        redis
    }

    /// A server with a password behind TLS, its certificate from a test CA:
    /// its own TLS port if it was built with TLS, else (Valkey from PyPI) a
    /// TLS terminator written here in front of its plain port. Returns the
    /// server, the CA's PEM and the port to reach it over TLS.
    fn start_tls(password: &str) -> (Self, PathBuf, u16) {
        let dir = scratch_dir("redis-tls");
        let (ca_pem, cert_pem, key_pem) = test_certificates(&dir);
        let port = free_port();
        let auth = ["-a", password, "--no-auth-warning"].map(str::to_owned);
        let mut redis = Self {
            process: None,
            port,
            dir,
            extra: [
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--tls-cert-file",
                cert_pem.to_str().unwrap(),
                "--tls-key-file",
                key_pem.to_str().unwrap(),
                "--tls-ca-cert-file",
                ca_pem.to_str().unwrap(),
                "--tls-auth-clients",
                "no",
                "--requirepass",
                password,
            ]
            .map(str::to_owned)
            .to_vec(),
            cli_flags: ["--tls", "--cacert", ca_pem.to_str().unwrap()]
                .map(str::to_owned)
                .into_iter()
                .chain(auth.clone())
                .collect(),
        };
        if redis.try_run() {
            eprintln!("TLS: the server's own TLS port");
            return (redis, ca_pem, port);
        }
        eprintln!(
            "TLS: {:?} has none; a TLS terminator in front of it",
            store_server().server
        );
        redis.extra = ["--requirepass", password].map(str::to_owned).to_vec();
        redis.cli_flags = auth.to_vec();
        redis.run();
        let tls_port = tls_terminator(&cert_pem, &key_pem, redis.port);
        (redis, ca_pem, tls_port)
    }

    /// Starts (or restarts) the server on its port.
    fn run(&mut self) {
        assert!(self.try_run(), "{:?} did not start", store_server().server);
    }

    /// Starts the server; whether it answers (it may exit at once, as one
    /// built without TLS does when given a TLS port).
    fn try_run(&mut self) -> bool {
        let child = Command::new(&store_server().server)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut child = KilledOnDrop(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]).trim() != "PONG" {
            if child.0.try_wait().unwrap().is_some() {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "{:?} did not start",
                store_server().server
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.process = Some(child);
        true
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `redis-cli` (or `valkey-cli`) against this server; its stdout.
    pub(crate) fn cli(&self, args: &[&str]) -> String {
        let output = Command::new(&store_server().cli)
            .args(["-p", &self.port.to_string()])
            .args(&self.cli_flags)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    pub(crate) fn signal(&self, signal: &str) {
        let pid = self.process.as_ref().unwrap().0.id().to_string();
        assert!(
            Command::new("kill")
                .args([signal, &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    pub(crate) fn kill(&mut self) {
        self.process = None;
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.process = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A test CA and a leaf for `localhost` and 127.0.0.1 signed by it, as PEM
/// files in `dir`: the CA's, the leaf's and the leaf's key.
fn test_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{CertificateParams, CertifiedIssuer, KeyPair};
    // Distinct names: OpenSSL (redis-server, redis-cli) takes a leaf whose
    // issuer is its own subject for self-signed.
    let name = |cn: &str| {
        let mut name = rcgen::DistinguishedName::new();
        name.push(rcgen::DnType::CommonName, cn);
        name
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name = name("cognito-facade test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    leaf.distinguished_name = name("localhost");
    let cert = leaf.signed_by(&key, &ca).unwrap();
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    (
        write("ca.pem", ca.pem()),
        write("redis.pem", cert.pem()),
        write("redis.key", key.serialize_pem()),
    )
}

/// A TLS terminator on a free loopback port in front of the plain server
/// on `to`, serving `cert` with `key` (rustls, in this test's runtime, so
/// it stops with it). Returns its port.
fn tls_terminator(cert: &Path, key: &Path, to: u16) -> u16 {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let certs = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(inbound).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    port
}

/// A fleet key file of 32 random bytes, mode 0600, in `dir`.
pub(crate) fn key_file(dir: &Path, seed: u8) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(format!("fleet-{seed}.key"));
    let bytes: Vec<u8> = (0..32u8)
        .map(|i| i.wrapping_mul(31).wrapping_add(seed))
        .collect();
    std::fs::write(&path, bytes).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A replica of the binary on the fleet store, connected to it.
pub(crate) fn replica(stand_in: &StandIn, redis: &Redis, key: &Path, args: &[&str]) -> Running {
    replica_at(stand_in, &redis.url(), key, args)
}

/// A replica of the binary on the store at `url`, connected to it.
pub(crate) fn replica_at(stand_in: &StandIn, url: &str, key: &Path, args: &[&str]) -> Running {
    let key = key.to_str().unwrap().to_owned();
    let mut all = vec!["--redis-url", url, "--fleet-key-file", key.as_str()];
    all.extend_from_slice(args);
    let mut running = Running::against(stand_in, &all, &[]);
    running.find_line("connected to the fleet store");
    running
}

pub(crate) async fn client(addr: SocketAddr) -> IdentityProviderServiceClient<Channel> {
    IdentityProviderServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

/// Where an answer or a status came from.
pub(crate) fn source_of(metadata: &tonic::metadata::MetadataMap) -> String {
    metadata
        .get("x-cognito-facade-source")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned()
}

/// 60 concurrent calls of [`TOKEN`] spread over `replicas`, each answered
/// with the user; where each answer came from.
async fn sixty_calls_of_one_token(replicas: &[Running]) -> Vec<String> {
    let mut calls = JoinSet::new();
    for i in 0..60 {
        let addr = replicas[i % replicas.len()].addr;
        calls.spawn(async move { call(addr, TOKEN).await });
    }
    let mut sources = Vec::new();
    while let Some(joined) = calls.join_next().await {
        let (username, source) = joined.unwrap();
        assert_eq!(username, USERNAME);
        sources.push(source);
    }
    sources
}

/// One call: the username and where the answer came from.
pub(crate) async fn call(addr: SocketAddr, token: &str) -> (String, String) {
    let answer = client(addr)
        .await
        .get_user_auth_factors(request(token))
        .await
        .unwrap();
    let source = source_of(answer.metadata());
    (answer.into_inner().username, source)
}

/// Waits (bounded) until Redis holds `n` cached answers: a leader shares its
/// answer in the background, after its own caller has it.
pub(crate) async fn until_cached(redis: &Redis, n: usize) {
    until_stored(redis, "*:a", n).await;
}

/// Waits (bounded) until Redis holds `n` remembered refusals.
pub(crate) async fn until_remembered(redis: &Redis, n: usize) {
    until_stored(redis, "*:m", n).await;
}

async fn until_stored(redis: &Redis, pattern: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.cli(&["--scan", "--pattern", pattern]).lines().count() < n {
        assert!(
            Instant::now() < deadline,
            "{} cached",
            redis.cli(&["--scan"])
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A JWT-shaped opaque token expiring in `seconds` (read, never verified,
/// for the cache's bound).
pub(crate) fn token_expiring_in(seconds: u64, salt: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + seconds;
    let b64 = |text: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
    format!(
        "{}.{}.{}",
        b64(r#"{"alg":"RS256","kid":"k"}"#),
        b64(&format!(
            r#"{{"exp":{exp},"sub":"{salt}","token_use":"access"}}"#
        )),
        b64("signature")
    )
}

#[tokio::test]
async fn sixty_concurrent_calls_over_three_replicas_make_one_upstream_call() {
    let stand_in = StandIn::start().await;
    stand_in.always(Reply::Delay(
        Duration::from_millis(400),
        Box::new(Reply::full_success()),
    ));
    let redis = Redis::start(&[]);
    let key = key_file(&redis.dir, 1);
    let replicas: Vec<Running> = (0..3)
        .map(|_| replica(&stand_in, &redis, &key, &[]))
        .collect();
    let sources = sixty_calls_of_one_token(&replicas).await;
    assert_eq!(
        stand_in.received().len(),
        1,
        "upstream calls for 60 calls of one token"
    );
    assert_eq!(
        sources.iter().filter(|s| *s == "cognito").count(),
        1,
        "{sources:?}"
    );
    assert!(
        sources.iter().any(|s| s == "fleet_coalesced"),
        "{sources:?}"
    );
    // Without --cache-ttl nothing shared outlives its flight by more than a
    // few seconds: every key is gone soon after.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !redis.cli(&["--scan"]).trim().is_empty() {
        assert!(Instant::now() < deadline, "{}", redis.cli(&["--scan"]));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Cognito's refusal of a token is Cognito's word too: shared with the
/// flight's followers on every replica, with its status and details.
#[tokio::test]
async fn a_refusal_is_shared_over_the_fleet_too() {
    let stand_in = StandIn::start().await;
    stand_in.always(Reply::Delay(
        Duration::from_millis(400),
        Box::new(Reply::error(
            400,
            "NotAuthorizedException",
            "Access Token has been revoked",
        )),
    ));
    let redis = Redis::start(&[]);
    let key = key_file(&redis.dir, 9);
    let replicas: Vec<Running> = (0..3)
        .map(|_| replica(&stand_in, &redis, &key, &[]))
        .collect();
    let mut calls = JoinSet::new();
    for i in 0..30 {
        let addr = replicas[i % 3].addr;
        calls.spawn(async move {
            let status = client(addr)
                .await
                .get_user_auth_factors(request(TOKEN))
                .await
                .unwrap_err();
            let source = source_of(status.metadata());
            (status.code(), status.message().to_owned(), source)
        });
    }
    let mut sources = Vec::new();
    while let Some(joined) = calls.join_next().await {
        let (code, message, source) = joined.unwrap();
        assert_eq!(code, tonic::Code::Unauthenticated);
        assert_eq!(message, "Access Token has been revoked");
        sources.push(source);
    }
    assert_eq!(stand_in.received().len(), 1, "{sources:?}");
    assert!(
        sources.iter().any(|s| s == "fleet_coalesced"),
        "{sources:?}"
    );
}

#[tokio::test]
async fn the_fleet_cache_serves_every_replica_never_past_exp_and_holds_nothing_readable() {
    let stand_in = StandIn::start().await;
    let redis = Redis::start(&[]);
    let key = key_file(&redis.dir, 2);
    let args = ["--cache-ttl", "10m"];
    let replicas: Vec<Running> = (0..3)
        .map(|_| replica(&stand_in, &redis, &key, &args))
        .collect();
    let token = token_expiring_in(3, "cache");
    assert_eq!(
        call(replicas[0].addr, &token).await,
        (USERNAME.to_owned(), "cognito".to_owned())
    );
    until_cached(&redis, 1).await;
    assert_eq!(
        call(replicas[1].addr, &token).await,
        (USERNAME.to_owned(), "fleet_cache".to_owned())
    );
    assert_eq!(call(replicas[2].addr, &token).await.1, "fleet_cache");
    assert_eq!(stand_in.received().len(), 1);

    // Every key expires, and nothing in Redis is readable.
    let keys = redis.cli(&["--scan"]);
    assert!(!keys.trim().is_empty());
    for key in keys.lines() {
        let ttl: i64 = redis.cli(&["PTTL", key]).trim().parse().unwrap();
        assert!(ttl > 0 && ttl <= 3_000, "{key}: {ttl} ms");
        assert!(!key.contains(&token) && !key.contains(USERNAME), "{key}");
        let value = redis.cli(&["--no-raw", "GET", key]);
        for secret in token
            .split('.')
            .chain([USERNAME, "SOFTWARE_TOKEN_MFA", "PASSWORD"])
        {
            assert!(!value.contains(secret), "{key} holds {secret:?}");
        }
    }

    // Past the token's exp, no replica answers from memory.
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    assert_eq!(call(replicas[2].addr, &token).await.1, "cognito");
    assert_eq!(stand_in.received().len(), 2);
}

#[tokio::test]
async fn values_that_do_not_open_are_misses_and_the_answer_is_still_right() {
    let stand_in = StandIn::start().await;
    let redis = Redis::start(&[]);
    let key = key_file(&redis.dir, 3);
    let args = ["--cache-ttl", "10m"];
    let mut one = replica(&stand_in, &redis, &key, &args);
    let mut two = replica(&stand_in, &redis, &key, &args);
    let (first, second) = (
        token_expiring_in(600, "first"),
        token_expiring_in(600, "second"),
    );
    call(one.addr, &first).await;
    call(one.addr, &second).await;
    assert_eq!(stand_in.received().len(), 2);
    until_cached(&redis, 2).await;
    let answers: Vec<String> = redis
        .cli(&["--scan", "--pattern", "*:a"])
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(answers.len(), 2, "{answers:?}");

    // A value moved to another key does not open there.
    let moved = redis.cli(&[
        "EVAL",
        "redis.call('SET', KEYS[2], redis.call('GET', KEYS[1]), 'KEEPTTL') return 1",
        "2",
        &answers[0],
        &answers[1],
    ]);
    assert_eq!(moved.trim(), "1");
    // A tampered value does not open.
    let tampered = redis.cli(&["EVAL", "local v = redis.call('GET', KEYS[1]) redis.call('SET', KEYS[1], string.sub(v, 1, -2) .. string.char((string.byte(v, -1) + 1) % 256), 'KEEPTTL') return 1", "1", &answers[0]]);
    assert_eq!(tampered.trim(), "1");
    for token in [&first, &second] {
        let (username, source) = call(two.addr, token).await;
        assert_eq!((username.as_str(), source.as_str()), (USERNAME, "cognito"));
    }
    assert_eq!(stand_in.received().len(), 4, "both were misses");
    let metrics = scrape(two.wait_for_addr("serving metrics")).await;
    assert_eq!(
        sample(&metrics, "cognito_facade_fleet_unopened_values_total"),
        Some(2.0),
        "{metrics}"
    );

    // Another fleet's key: nothing of this fleet's opens, or is even found.
    let other = key_file(&redis.dir, 4);
    let stranger = replica(&stand_in, &redis, &other, &args);
    let fresh = token_expiring_in(600, "fresh");
    call(one.addr, &fresh).await;
    until_cached(&redis, 3).await;
    assert_eq!(call(stranger.addr, &fresh).await.1, "cognito");
    assert_eq!(stand_in.received().len(), 6);
    one.terminate().await;
}

/// Calls with fresh tokens on `addr`, `n` of them one after another: each
/// must succeed; the slowest's latency.
async fn calls_all_succeed(addr: SocketAddr, n: usize, salt: &str) -> Duration {
    let mut slowest = Duration::ZERO;
    let mut client = client(addr).await;
    for i in 0..n {
        let token = token_expiring_in(600, &format!("{salt}-{i}"));
        let started = Instant::now();
        let answer = client.get_user_auth_factors(request(&token)).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(answer.unwrap().into_inner().username, USERNAME, "call {i}");
    }
    slowest
}

/// Waits (bounded) until a call on `reader` of a token first answered by
/// `writer` comes from the fleet cache: sharing works.
async fn until_shared(writer: SocketAddr, reader: SocketAddr, salt: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for i in 0.. {
        let token = token_expiring_in(600, &format!("{salt}-{i}"));
        call(writer, &token).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        if call(reader, &token).await.1 == "fleet_cache" {
            return;
        }
        assert!(Instant::now() < deadline, "sharing did not resume");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_frozen_a_killed_and_a_restarted_redis_fail_no_call_and_sharing_resumes() {
    // The budget and the stand-in's own answer time bound every call.
    const BOUND: Duration = Duration::from_millis(300);
    let stand_in = StandIn::start().await;
    let mut redis = Redis::start(&[]);
    let key = key_file(&redis.dir, 5);
    let args = ["--cache-ttl", "10m", "--redis-timeout", "20ms"];
    let mut one = replica(&stand_in, &redis, &key, &args);
    let two = replica(&stand_in, &redis, &key, &args);
    until_shared(one.addr, two.addr, "before").await;

    redis.signal("-STOP");
    let slowest = calls_all_succeed(one.addr, 30, "frozen").await;
    let health = tonic_health::pb::health_client::HealthClient::new(
        Channel::from_shared(format!("http://{}", one.addr))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
    .check(tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .status();
    assert_eq!(
        health,
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    assert!(slowest < BOUND, "a call took {slowest:?} with Redis frozen");
    redis.signal("-CONT");
    until_shared(one.addr, two.addr, "thawed").await;

    redis.kill();
    let slowest = calls_all_succeed(two.addr, 30, "killed").await;
    assert!(slowest < BOUND, "a call took {slowest:?} with Redis killed");
    redis.run();
    until_shared(one.addr, two.addr, "restarted").await;

    let metrics = scrape(one.wait_for_addr("serving metrics")).await;
    let opened = sample(&metrics, "cognito_facade_fleet_breaker_open_seconds_total");
    assert!(opened.is_some_and(|s| s > 0.0), "{metrics}");
    // The store's failures are counted (a frozen server times out, in the
    // client's own response timeout or in ours).
    let failed = |outcome: &str| {
        sample(
            &metrics,
            &format!("cognito_facade_fleet_redis_ops_total{{op=\"join\",outcome=\"{outcome}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert!(failed("error") + failed("timeout") >= 5.0, "{metrics}");
    assert_eq!(one.terminate().await, Some(0));
    assert!(one.logs().iter().any(|l| l.contains("Redis is failing")));
}

#[tokio::test]
async fn a_killed_leaders_flight_is_taken_over_by_one_follower() {
    let stand_in = StandIn::start().await;
    stand_in.always(Reply::Delay(
        Duration::from_millis(1500),
        Box::new(Reply::full_success()),
    ));
    let redis = Redis::start(&[]);
    let key = key_file(&redis.dir, 6);
    let args = ["--call-timeout", "2s", "--attempt-timeout", "2s"];
    let leader = replica(&stand_in, &redis, &key, &args);
    let mut followers = [
        replica(&stand_in, &redis, &key, &args),
        replica(&stand_in, &redis, &key, &args),
    ];
    let leading = tokio::spawn(call(leader.addr, TOKEN));
    let deadline = Instant::now() + Duration::from_secs(5);
    while stand_in.received().is_empty() {
        assert!(Instant::now() < deadline, "the leader never called");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let following: Vec<_> = followers
        .iter()
        .map(|follower| tokio::spawn(call(follower.addr, TOKEN)))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(leader);
    assert!(
        leading.await.is_err(),
        "the leader's caller lost its server"
    );
    let mut sources = Vec::new();
    for joined in following {
        let (username, source) = joined.await.unwrap();
        assert_eq!(username, USERNAME);
        sources.push(source);
    }
    sources.sort();
    // One follower took the flight over; the other followed it.
    assert_eq!(sources, ["cognito", "fleet_coalesced"]);
    assert_eq!(
        stand_in.received().len(),
        2,
        "one call by the leader, one by the follower that took over"
    );
    let mut takeovers = 0.0;
    for follower in &mut followers {
        let metrics = scrape(follower.wait_for_addr("serving metrics")).await;
        takeovers += sample(&metrics, "cognito_facade_fleet_lease_takeovers_total").unwrap_or(0.0);
    }
    assert_eq!(takeovers, 1.0);
}

// Two workers: a TLS terminator (for a server without TLS) serves while
// the test waits for a replica's line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_password_over_tls() {
    let stand_in = StandIn::start().await;
    let (redis, ca, tls_port) = Redis::start_tls("fleet-secret");
    let key = key_file(&redis.dir, 7);
    let url = format!("rediss://default:fleet-secret@localhost:{tls_port}");
    let start = |url: &str| {
        let mut running = Running::against(
            &stand_in,
            &[
                "--redis-url",
                url,
                "--fleet-key-file",
                key.to_str().unwrap(),
                "--cache-ttl",
                "10m",
            ],
            &[("SSL_CERT_FILE", ca.to_str().unwrap())],
        );
        running.find_line("connected to the fleet store");
        running
    };
    let (mut one, two) = (start(&url), start(&url));
    let token = token_expiring_in(600, "tls");
    assert_eq!(call(one.addr, &token).await.1, "cognito");
    until_cached(&redis, 1).await;
    assert_eq!(call(two.addr, &token).await.1, "fleet_cache");
    assert_eq!(stand_in.received().len(), 1);
    assert_eq!(one.terminate().await, Some(0));
    for line in one.logs() {
        assert!(
            !line.contains("fleet-secret"),
            "the password leaked: {line}"
        );
    }
}

/// A three-master cluster made with `redis-cli --cluster create` (or
/// `valkey-cli`'s).
struct Cluster {
    nodes: Vec<Redis>,
}

impl Cluster {
    fn start() -> Self {
        let nodes: Vec<Redis> = (0..3)
            .map(|i| {
                Redis::start(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &format!("nodes-{i}.conf"),
                    // A node killed by a test leaves the others serving.
                    "--cluster-require-full-coverage",
                    "no",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new(&store_server().cli)
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(created.status.success(), "{created:?}");
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            while !node.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(Instant::now() < deadline, "the cluster did not settle");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Self { nodes }
    }

    fn seeds(&self) -> String {
        self.nodes[..2]
            .iter()
            .map(Redis::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every key of every node.
    fn keys(&self) -> Vec<String> {
        self.nodes
            .iter()
            .flat_map(|node| {
                node.cli(&["--scan"])
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// A replica of the binary on `cluster`, connected to it.
fn cluster_replica(stand_in: &StandIn, cluster: &Cluster, key: &Path, args: &[&str]) -> Running {
    let seeds = cluster.seeds();
    let mut all = vec![
        "--redis-mode",
        "cluster",
        "--redis-url",
        &seeds,
        "--fleet-key-file",
        key.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let mut running = Running::against(stand_in, &all, &[]);
    running.find_line("connected to the fleet store");
    running
}

#[tokio::test]
async fn in_a_cluster_losing_a_node_that_serves_none_of_its_channels_wakes_no_follower() {
    let stand_in = StandIn::start().await;
    stand_in.always(Reply::Delay(
        Duration::from_millis(1500),
        Box::new(Reply::full_success()),
    ));
    let mut cluster = Cluster::start();
    let key = key_file(&cluster.nodes[0].dir, 9);
    let leader = cluster_replica(&stand_in, &cluster, &key, &[]);
    let follower = cluster_replica(&stand_in, &cluster, &key, &[]);
    // Each replica keeps a connection to every node (the cluster client
    // opens them all), so a node's loss reaches both as a disconnection.
    for node in &cluster.nodes {
        let clients = node.cli(&["CLIENT", "LIST"]);
        assert!(clients.matches("resp=3").count() >= 2, "{clients}");
    }
    let leading = tokio::spawn(call(leader.addr, TOKEN));
    until_received(&stand_in, 1).await;
    // The node that serves the token's slot holds its flight's lease, the
    // only key in the cluster.
    let serving = cluster
        .nodes
        .iter()
        .position(|node| !node.cli(&["--scan"]).trim().is_empty())
        .expect("a node holds the flight's lease");
    let unrelated = (serving + 1) % cluster.nodes.len();
    let following = tokio::spawn(call(follower.addr, TOKEN));
    // Long enough to have subscribed to the leader's flight.
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.nodes[unrelated].kill();
    let (username, source) = following.await.unwrap();
    assert_eq!(username, USERNAME);
    assert_eq!(source, "fleet_coalesced", "the follower was woken");
    assert_eq!(leading.await.unwrap().1, "cognito");
    assert_eq!(stand_in.received().len(), 1);
}

#[tokio::test]
async fn in_a_cluster_a_slot_that_moves_sends_its_followers_to_the_new_node() {
    let stand_in = StandIn::start().await;
    stand_in.always(Reply::Delay(
        Duration::from_millis(1800),
        Box::new(Reply::full_success()),
    ));
    let cluster = Cluster::start();
    let key = key_file(&cluster.nodes[0].dir, 10);
    let leader = cluster_replica(&stand_in, &cluster, &key, &[]);
    let follower = cluster_replica(&stand_in, &cluster, &key, &[]);
    let leading = tokio::spawn(call(leader.addr, TOKEN));
    until_received(&stand_in, 1).await;
    let from = cluster
        .nodes
        .iter()
        .position(|node| !node.cli(&["--scan"]).trim().is_empty())
        .expect("a node holds the flight's lease");
    let following = tokio::spawn(call(follower.addr, TOKEN));
    let channel = until_shard_channel(&cluster.nodes[from]).await;
    // The slot moves to another node, its keys with it, as
    // `redis-cli --cluster reshard` moves one: the old node tells its
    // subscribers (`sunsubscribe`).
    let to = (from + 1) % cluster.nodes.len();
    let slot = cluster.nodes[from].cli(&["CLUSTER", "KEYSLOT", &channel]);
    let slot = slot.trim();
    let id = |node: &Redis| node.cli(&["CLUSTER", "MYID"]).trim().to_owned();
    let (from_id, to_id) = (id(&cluster.nodes[from]), id(&cluster.nodes[to]));
    let (source, target) = (&cluster.nodes[from], &cluster.nodes[to]);
    assert_ok(target.cli(&["CLUSTER", "SETSLOT", slot, "IMPORTING", &from_id]));
    assert_ok(source.cli(&["CLUSTER", "SETSLOT", slot, "MIGRATING", &to_id]));
    for key in source
        .cli(&["CLUSTER", "GETKEYSINSLOT", slot, "100"])
        .lines()
    {
        let port = target.port.to_string();
        assert_ok(source.cli(&["MIGRATE", "127.0.0.1", &port, key, "0", "5000"]));
    }
    for node in [target, source] {
        assert_ok(node.cli(&["CLUSTER", "SETSLOT", slot, "NODE", &to_id]));
    }
    // The follower rejoins the flight where it now lives and listens there.
    assert_eq!(until_shard_channel(target).await, channel);
    let (username, source) = following.await.unwrap();
    assert_eq!(username, USERNAME);
    assert_eq!(source, "fleet_coalesced");
    assert_eq!(leading.await.unwrap().1, "cognito");
    assert_eq!(stand_in.received().len(), 1);
}

fn assert_ok(reply: String) {
    assert_eq!(reply.trim(), "OK", "{reply}");
}

/// The first shard channel `node` serves, once one is subscribed (bounded).
async fn until_shard_channel(node: &Redis) -> String {
    let deadline = Instant::now() + Duration::from_millis(1500);
    loop {
        let channels = node.cli(&["PUBSUB", "SHARDCHANNELS"]);
        if let Some(channel) = channels.lines().find(|line| !line.trim().is_empty()) {
            return channel.trim().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no shard channel on {}",
            node.port
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn in_a_cluster_sixty_calls_over_three_replicas_make_one_upstream_call_and_share_the_cache() {
    let stand_in = StandIn::start().await;
    stand_in.always(Reply::Delay(
        Duration::from_millis(400),
        Box::new(Reply::full_success()),
    ));
    let cluster = Cluster::start();
    let key = key_file(&cluster.nodes[0].dir, 8);
    let args = ["--cache-ttl", "10m"];
    let start = || cluster_replica(&stand_in, &cluster, &key, &args);
    let replicas = [start(), start(), start()];
    let sources = sixty_calls_of_one_token(&replicas).await;
    assert_eq!(stand_in.received().len(), 1, "{sources:?}");
    assert!(
        sources.iter().any(|s| s == "fleet_coalesced"),
        "{sources:?}"
    );
    // A token's keys share one slot (its hash tag), on one node.
    let keys = cluster.keys();
    let tags: std::collections::BTreeSet<&str> = keys
        .iter()
        .map(|k| &k[k.find('{').unwrap()..=k.find('}').unwrap()])
        .collect();
    assert_eq!(tags.len(), 1, "{keys:?}");
    let token = token_expiring_in(600, "cluster");
    assert_eq!(call(replicas[0].addr, &token).await.1, "cognito");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cluster.keys().iter().any(|key| key.ends_with(":a")) {
        assert!(Instant::now() < deadline, "{:?}", cluster.keys());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(call(replicas[1].addr, &token).await.1, "fleet_cache");
    // Scripts flushed from every node: the first call on each node runs
    // the whole script (EVAL, routed by its keys) and flights are shared
    // again (redis-rs's own fallback loads it on a node of its choosing).
    for node in &cluster.nodes {
        assert_eq!(node.cli(&["SCRIPT", "FLUSH"]).trim(), "OK");
    }
    let flushed = token_expiring_in(600, "flushed");
    let mut calls = JoinSet::new();
    for i in 0..30 {
        let (addr, token) = (replicas[i % 3].addr, flushed.clone());
        calls.spawn(async move { call(addr, &token).await });
    }
    while let Some(joined) = calls.join_next().await {
        assert_eq!(joined.unwrap().0, USERNAME);
    }
    assert_eq!(
        stand_in.received().len(),
        3,
        "one call for the flushed token"
    );
}

#[tokio::test]
async fn a_follower_whose_redis_connection_drops_goes_on_alone_at_once() {
    let stand_in = StandIn::start().await;
    stand_in.always(Reply::Delay(
        Duration::from_millis(1500),
        Box::new(Reply::full_success()),
    ));
    let mut redis = Redis::start(&[]);
    let key = key_file(&redis.dir, 31);
    let leader = replica(&stand_in, &redis, &key, &[]);
    let follower = replica(&stand_in, &redis, &key, &[]);
    let lead = tokio::spawn(call(leader.addr, TOKEN));
    until_received(&stand_in, 1).await;
    let started = Instant::now();
    let follow = tokio::spawn(call(follower.addr, TOKEN));
    // Long enough to have subscribed to the leader's flight.
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.kill();
    // No message can come now: the follower calls Cognito itself at once,
    // not after the leader's lease (5.5 s).
    let (username, source) = follow.await.unwrap();
    assert_eq!(username, USERNAME);
    assert_eq!(source, "cognito");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(lead.await.unwrap().0, USERNAME);
    assert_eq!(stand_in.received().len(), 2);
}
