//! What an SRE relies on: the metrics page, TLS and mutual TLS, load
//! shedding, and the `healthcheck` subcommand.

use std::{
    process::Output,
    time::{Duration, Instant},
};

use cognito_facade::{
    config::TlsConfig, proto::identity_provider_service_client::IdentityProviderServiceClient,
};
use rcgen::{CertificateParams, CertifiedIssuer, KeyPair};
use serde_json::json;
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};
use tonic_types::StatusExt as _;

use crate::helpers::{
    Reply, Running, StandIn, TOKEN, USERNAME, command, request, sample, scrape, shed_one_call,
    spawn_app_with, spawn_call, test_config, until_received,
};

#[tokio::test]
async fn the_metrics_page_counts_calls_by_final_code_and_outcome() {
    let stand_in = StandIn::start().await;
    let mut running = Running::against(&stand_in, &["--max-concurrent-requests", "1"], &[]);
    let metrics_addr = running.wait_for_addr("serving metrics");
    let mut client = running.client().await;

    // Two successes, one of them with a value this version does not know.
    client.get_user_auth_factors(request(TOKEN)).await.unwrap();
    stand_in.then([Reply::Success(json!({
        "Username": USERNAME,
        "ConfiguredUserAuthFactors": ["QUANTUM_KEY"],
    }))]);
    client.get_user_auth_factors(request(TOKEN)).await.unwrap();
    // A Cognito error, a refused token, an oversize message.
    stand_in.then([Reply::error(400, "NotAuthorizedException", "revoked")]);
    client
        .get_user_auth_factors(request(TOKEN))
        .await
        .unwrap_err();
    client
        .get_user_auth_factors(request("not a token"))
        .await
        .unwrap_err();
    client
        .get_user_auth_factors(request(&"a".repeat(70_000)))
        .await
        .unwrap_err();
    // One slow call holds the only permit; the next is shed.
    let shed = shed_one_call(&stand_in, &mut client, 4).await;
    assert_eq!(shed.code(), Code::ResourceExhausted);

    let page = scrape(metrics_addr).await;
    let rpc = |code: &str, source: &str| {
        sample(
            &page,
            &format!(
                "cognito_facade_rpc_requests_total{{method=\"GetUserAuthFactors\",code=\"{code}\",source=\"{source}\",caller=\"anonymous\"}}"
            ),
        )
    };
    assert_eq!(rpc("OK", "cognito"), Some(3.0), "{page}");
    assert_eq!(rpc("UNAUTHENTICATED", "cognito"), Some(1.0), "{page}");
    assert_eq!(rpc("INVALID_ARGUMENT", "local"), Some(1.0), "{page}");
    assert_eq!(
        rpc("RESOURCE_EXHAUSTED", "local"),
        Some(2.0),
        "oversize and shed: {page}"
    );
    let upstream = |outcome: &str| {
        sample(
            &page,
            &format!(
                "cognito_facade_upstream_requests_total{{outcome=\"{outcome}\",region=\"eu-west-1\"}}"
            ),
        )
    };
    assert_eq!(upstream("ok"), Some(3.0), "{page}");
    assert_eq!(upstream("NotAuthorizedException"), Some(1.0), "{page}");
    assert_eq!(
        sample(&page, "cognito_facade_shed_total"),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        sample(&page, "cognito_facade_rpc_in_flight"),
        Some(0.0),
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            "cognito_facade_unknown_enum_values_total{field=\"configured_user_auth_factors\",value=\"QUANTUM_KEY\"}"
        ),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            &format!(
                "cognito_facade_build_info{{version=\"{}\",lifo_slot=\"{}\"}}",
                env!("CARGO_PKG_VERSION"),
                if cfg!(tokio_unstable) { "off" } else { "on" }
            )
        ),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            "cognito_facade_rpc_duration_seconds_count{method=\"GetUserAuthFactors\"}"
        ),
        Some(7.0),
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            "cognito_facade_upstream_duration_seconds_count{region=\"eu-west-1\"}"
        ),
        Some(4.0),
        "{page}"
    );
    assert!(
        page.contains(
            "cognito_facade_rpc_duration_seconds_bucket{method=\"GetUserAuthFactors\",le=\"0.005\"}"
        ),
        "a Prometheus histogram, not a summary: {page}"
    );
    drop(client);
    assert_eq!(running.terminate().await, Some(0));
}

#[tokio::test]
async fn metrics_off_binds_no_metrics_listener() {
    let stand_in = StandIn::start().await;
    let mut running = Running::against(&stand_in, &["--metrics-addr", "off"], &[]);
    assert_eq!(running.call().await.unwrap(), USERNAME);
    assert_eq!(running.terminate().await, Some(0));
    assert!(
        !running.logs().iter().any(|l| l.contains("serving metrics")),
        "no metrics listener"
    );
}

/// A CA, a server certificate for 127.0.0.1/localhost and a client
/// certificate, made fresh for each test run (no key is committed).
struct Pki {
    ca_pem: String,
    server: (String, String),
    client: (String, String),
}

impl Pki {
    fn new() -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf = |names: Vec<String>| {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &ca)
                .unwrap();
            (cert.pem(), key.serialize_pem())
        };
        Self {
            ca_pem: ca.pem(),
            server: leaf(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]),
            client: leaf(vec!["client.example".to_owned()]),
        }
    }

    fn server_tls(&self, mutual: bool) -> TlsConfig {
        TlsConfig {
            cert_pem: self.server.0.clone().into_bytes(),
            key_pem: self.server.1.clone().into_bytes(),
            client_ca_pem: mutual.then(|| self.ca_pem.clone().into_bytes()),
        }
    }
}

/// A TLS channel to `addr` trusting `pki`'s CA, with the client certificate
/// if `identity`.
async fn tls_channel(
    addr: std::net::SocketAddr,
    pki: &Pki,
    identity: bool,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost");
    if identity {
        tls = tls.identity(Identity::from_pem(&pki.client.0, &pki.client.1));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

async fn call_over(channel: Channel) -> Result<String, tonic::Status> {
    IdentityProviderServiceClient::new(channel)
        .get_user_auth_factors(request(TOKEN))
        .await
        .map(|r| r.into_inner().username)
}

/// The server with `tls`; its address.
async fn spawn_tls_app(tls: TlsConfig) -> std::net::SocketAddr {
    let stand_in = StandIn::start().await;
    let mut config = test_config(&stand_in.endpoint);
    config.server.tls = Some(tls);
    spawn_app_with(stand_in, config).await.addr
}

#[tokio::test]
async fn tls_serves_trusting_clients_and_refuses_plaintext() {
    let pki = Pki::new();
    let addr = spawn_tls_app(pki.server_tls(false)).await;
    let channel = tls_channel(addr, &pki, false).await.unwrap();
    assert_eq!(call_over(channel).await.unwrap(), USERNAME);

    let plaintext = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plaintext {
        call_over(channel)
            .await
            .expect_err("plaintext gRPC on a TLS listener");
    }
}

#[tokio::test]
async fn mutual_tls_refuses_a_client_without_a_certificate() {
    let pki = Pki::new();
    let addr = spawn_tls_app(pki.server_tls(true)).await;
    let channel = tls_channel(addr, &pki, true).await.unwrap();
    assert_eq!(call_over(channel).await.unwrap(), USERNAME);

    // The handshake fails with the server's certificate_required alert (TLS
    // 1.3 reports it on first use of the connection, not on connect).
    let refusal = match tls_channel(addr, &pki, false).await {
        Err(err) => format!("{err:?}"),
        Ok(channel) => format!(
            "{:?}",
            call_over(channel).await.expect_err("no client certificate")
        ),
    };
    assert!(refusal.contains("CertificateRequired"), "{refusal}");
}

/// With TLS on, the handshake deadline covers TLS itself: a TCP connection
/// that never sends a ClientHello is closed at the deadline.
#[tokio::test]
async fn tls_a_connection_that_never_says_hello_is_closed_at_the_handshake_deadline() {
    use tokio::io::AsyncReadExt as _;
    let pki = Pki::new();
    let stand_in = StandIn::start().await;
    let mut config = test_config(&stand_in.endpoint);
    config.server.tls = Some(pki.server_tls(false));
    config.server.handshake_timeout = Duration::from_secs(1);
    let app = spawn_app_with(stand_in, config).await;
    let addr = app.addr;
    let started = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut sink = Vec::new();
    tokio::time::timeout(Duration::from_secs(4), silent.read_to_end(&mut sink))
        .await
        .expect("a connection without a ClientHello was left open")
        .unwrap();
    let after = started.elapsed();
    assert!(after >= Duration::from_secs(1), "closed early: {after:?}");
    assert!(sink.is_empty(), "the server sent {sink:?}");
    let channel = tls_channel(addr, &pki, false).await.unwrap();
    assert_eq!(call_over(channel).await.unwrap(), USERNAME);
}

#[test]
fn unusable_tls_files_are_refused_at_start_up() {
    let pki = Pki::new();
    let mut bad = pki.server_tls(false);
    bad.key_pem = b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n".to_vec();
    assert!(bad.acceptor().is_err());
    let mut bad = pki.server_tls(false);
    bad.cert_pem = b"garbage".to_vec();
    assert!(bad.acceptor().is_err());
    assert!(pki.server_tls(true).acceptor().is_ok());
}

#[test]
fn the_binary_exits_2_on_a_bad_certificate() {
    let dir = std::env::temp_dir().join(format!("cognito-facade-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, "not a certificate").unwrap();
    std::fs::write(&key, "not a key").unwrap();
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    for args in [
        vec!["--tls-cert", cert, "--tls-key", key],
        vec!["--tls-cert", "/nonexistent/cert.pem", "--tls-key", key],
        vec!["--tls-cert", cert],
    ] {
        let mut all = vec!["--region", "eu-west-1", "--listen-addr", "127.0.0.1:0"];
        all.extend(args.iter().copied());
        let output = command(&all, &[]).output().unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn calls_over_the_limit_are_shed_at_once_and_never_reach_cognito() {
    const LIMIT: usize = 3;
    let stand_in = StandIn::start().await;
    let mut config = test_config(&stand_in.endpoint);
    config.service.max_concurrent_requests = LIMIT;
    stand_in.always(Reply::Delay(
        Duration::from_millis(800),
        Box::new(Reply::full_success()),
    ));
    let app = spawn_app_with(stand_in, config).await;

    // Distinct tokens: identical ones would share one upstream call.
    let held: Vec<_> = (0..LIMIT)
        .map(|i| spawn_call(&app, &format!("held.{i}")))
        .collect();
    until_received(&app.stand_in, LIMIT).await;
    for i in 0..5 {
        let started = Instant::now();
        let status = app
            .client
            .clone()
            .get_user_auth_factors(request(&format!("excess.{i}")))
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_millis(400),
            "refused at once, not queued"
        );
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.get_details_error_info().unwrap().reason,
            "OVERLOADED"
        );
        assert!(status.get_details_retry_info().is_some());
    }
    assert_eq!(
        app.stand_in.received().len(),
        LIMIT,
        "Cognito saw no more than the limit"
    );
    for call in held {
        call.await.unwrap().unwrap();
    }
    // Permits come back: the next call goes through.
    app.client
        .clone()
        .get_user_auth_factors(request(TOKEN))
        .await
        .unwrap();
}

/// Runs `cognito-facade healthcheck ARGS` off the runtime's threads.
async fn healthcheck(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let mut all = vec!["healthcheck".to_owned()];
        all.extend(args);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        command(&all, &[]).output().unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exits_0_only_on_serving() {
    let stand_in = StandIn::start().await;
    let mut config = test_config(&stand_in.endpoint);
    config.server.drain_delay = Duration::from_secs(5);
    let mut app = spawn_app_with(stand_in, config).await;
    let addr = app.addr.to_string();

    let serving = healthcheck(vec!["--addr".into(), addr.clone()]).await;
    assert_eq!(serving.status.code(), Some(0), "{serving:?}");
    let service = healthcheck(vec![
        "--addr".into(),
        addr.clone(),
        "--service".into(),
        "cognito.idp.v1.IdentityProviderService".into(),
    ])
    .await;
    assert_eq!(service.status.code(), Some(0), "{service:?}");
    let unknown = healthcheck(vec![
        "--addr".into(),
        addr.clone(),
        "--service".into(),
        "nope".into(),
    ])
    .await;
    assert_eq!(unknown.status.code(), Some(1), "{unknown:?}");

    // Draining: NOT_SERVING.
    app.shut_down();
    let mut health = tonic_health::pb::health_client::HealthClient::new(app.channel.clone());
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    while watch.message().await.unwrap().unwrap().status()
        != tonic_health::pb::health_check_response::ServingStatus::NotServing
    {}
    let draining = healthcheck(vec!["--addr".into(), addr]).await;
    assert_eq!(draining.status.code(), Some(1), "{draining:?}");
    assert!(String::from_utf8_lossy(&draining.stderr).contains("NOT_SERVING"));
}

#[tokio::test]
async fn healthcheck_exits_1_when_nothing_listens() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let started = Instant::now();
    let output = healthcheck(vec!["--addr".into(), addr, "--timeout".into(), "1s".into()]).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!output.stderr.is_empty());
}

/// The container's HEALTHCHECK runs `healthcheck` with no address: it probes
/// wherever the server's own `COGNITO_FACADE_LISTEN_ADDR` says it listens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_finds_the_server_from_its_listen_address() {
    let stand_in = StandIn::start().await;
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = free.local_addr().unwrap().to_string();
    drop(free);
    let env = [("COGNITO_FACADE_LISTEN_ADDR", listen.as_str())];
    let mut running = Running::against(&stand_in, &[], &env);
    assert_eq!(running.addr.to_string(), listen);

    let probe = |envs: Vec<(&'static str, String)>| {
        tokio::task::spawn_blocking(move || {
            let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            command(&["healthcheck"], &envs).output().unwrap()
        })
    };
    let serving = probe(vec![("COGNITO_FACADE_LISTEN_ADDR", listen.clone())])
        .await
        .unwrap();
    assert_eq!(serving.status.code(), Some(0), "{serving:?}");
    assert_eq!(running.terminate().await, Some(0));
    let gone = probe(vec![("COGNITO_FACADE_LISTEN_ADDR", listen.clone())])
        .await
        .unwrap();
    assert_eq!(gone.status.code(), Some(1), "{gone:?}");
}
