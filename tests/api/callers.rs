//! Know the caller: the identity from mTLS (a real handshake, certificates
//! made at test time), a trusted `x-forwarded-client-cert` or Envoy's
//! principal; a fair share of the upstream rate limit, alone and on a fleet;
//! the `caller` field and label.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use cognito_facade::proto::{
    GetUserAuthFactorsRequest, identity_provider_service_client::IdentityProviderServiceClient,
};
use rcgen::SanType;
use tonic::{Code, transport::Channel};
use tonic_types::StatusExt as _;

use crate::{
    fleet::{key_file, replica},
    helpers::{Reply, Running, StandIn, sample, scrape},
    pki::{Pki, mtls},
    quota::until_they_know_the_fleets_size,
    servers::Redis,
};

/// The metadata the sidecar sets.
const XFCC: &str = "x-forwarded-client-cert";

/// A quiet caller's and a flooding one's SPIFFE IDs.
const QUIET: &str = "spiffe://cluster.local/ns/payments/sa/api";
const FLOOD: &str = "spiffe://cluster.local/ns/batch/sa/reindex";

/// A call with a token of its own and, if given, the forwarded header.
fn call(n: usize, xfcc: Option<&str>) -> tonic::Request<GetUserAuthFactorsRequest> {
    let mut request = tonic::Request::new(GetUserAuthFactorsRequest {
        access_token: format!("caller.token.{n}"),
    });
    if let Some(xfcc) = xfcc {
        request.metadata_mut().insert(XFCC, xfcc.parse().unwrap());
    }
    request
}

async fn client(addr: SocketAddr) -> IdentityProviderServiceClient<Channel> {
    crate::fleet::client(addr).await
}

/// The `caller` field of every call line.
fn callers_logged(running: &mut Running) -> Vec<String> {
    running
        .logs()
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| {
            line["fields"]["message"] == "call finished"
                || line["fields"]["message"] == "call failed"
        })
        .map(|line| {
            line["fields"]["caller"]
                .as_str()
                .unwrap_or("<none>")
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn a_forwarded_client_cert_names_the_caller_only_when_trusted_and_a_bad_one_is_refused() {
    let stand_in = StandIn::start().await;
    let mut trusting = Running::against(
        &stand_in,
        &[
            "--trust-forwarded-client-cert",
            "true",
            "--caller-weight",
            &format!("{QUIET}=2"),
        ],
        &[],
    );
    let metrics = trusting.wait_for_addr("serving metrics");
    let mut grpc = client(trusting.addr).await;
    let envoy = format!(
        "By=spiffe://cluster.local/ns/facade/sa/facade;Hash=1f;Subject=\"CN=api,O=Pay\";URI={QUIET}"
    );
    grpc.get_user_auth_factors(call(1, Some(&envoy)))
        .await
        .unwrap();
    grpc.get_user_auth_factors(call(2, Some(&format!("URI={FLOOD}"))))
        .await
        .unwrap();
    grpc.get_user_auth_factors(call(3, Some("Subject=\"CN=batch\"")))
        .await
        .unwrap();
    grpc.get_user_auth_factors(call(4, None)).await.unwrap();
    let before = stand_in.received().len();
    for malformed in ["Subject=\"CN=open", "Hash=1f", "URI=a,", "Nonsense=1;URI=a"] {
        let status = grpc
            .get_user_auth_factors(call(5, Some(malformed)))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{malformed}: {status:?}"
        );
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, "MALFORMED_FORWARDED_CLIENT_CERT");
        let bad = status.get_details_bad_request().unwrap();
        assert_eq!(bad.field_violations[0].field, XFCC);
    }
    assert_eq!(stand_in.received().len(), before, "Cognito was called");
    let page = scrape(metrics).await;
    for (caller, calls) in [(QUIET, 1.0), ("other", 2.0), ("anonymous", 1.0)] {
        let series = format!(
            "cognito_facade_rpc_requests_total{{method=\"GetUserAuthFactors\",code=\"OK\",source=\"cognito\",caller=\"{caller}\"}}"
        );
        assert_eq!(sample(&page, &series), Some(calls), "{series}: {page}");
    }
    // No identity a caller sends becomes a label value unless named.
    assert!(!page.contains(FLOOD), "{page}");
    assert_eq!(trusting.terminate().await, Some(0));
    let logged = callers_logged(&mut trusting);
    assert_eq!(
        &logged[..4],
        [QUIET, FLOOD, "batch", "anonymous"],
        "{logged:?}"
    );
    assert!(
        logged[4..].iter().all(|caller| caller == "anonymous"),
        "{logged:?}"
    );

    // Off by default: the header is ignored, a malformed one too.
    let mut ignoring = Running::against(&stand_in, &[], &[]);
    let mut grpc = client(ignoring.addr).await;
    grpc.get_user_auth_factors(call(6, Some(&format!("URI={FLOOD}"))))
        .await
        .unwrap();
    grpc.get_user_auth_factors(call(7, Some("Subject=\"CN=open")))
        .await
        .unwrap();
    assert_eq!(ignoring.terminate().await, Some(0));
    assert_eq!(callers_logged(&mut ignoring), ["anonymous", "anonymous"]);
}

#[tokio::test]
async fn a_client_certificate_names_the_caller_by_uri_then_dns_then_cn() {
    let pki = Pki::new();
    let (dir, tls) = pki.server_args("mtls");
    let stand_in = StandIn::start().await;
    // The certificate wins over a forwarded header, trusted or not.
    let mut running = Running::against(
        &stand_in,
        &[
            tls.iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .as_slice(),
            &["--trust-forwarded-client-cert", "true"],
        ]
        .concat(),
        &[],
    );
    let clients = [
        pki.leaf(
            vec![
                SanType::DnsName("api.payments.svc".try_into().unwrap()),
                SanType::URI(QUIET.try_into().unwrap()),
            ],
            "api",
        ),
        pki.leaf(
            vec![SanType::DnsName("api.payments.svc".try_into().unwrap())],
            "api",
        ),
        pki.leaf(vec![], "batch-reindex"),
    ];
    for (n, identity) in clients.iter().enumerate() {
        let channel = mtls(running.addr, &pki, identity).await;
        IdentityProviderServiceClient::new(channel)
            .get_user_auth_factors(call(n, Some(&format!("URI={FLOOD}"))))
            .await
            .unwrap();
    }
    assert_eq!(running.terminate().await, Some(0));
    assert_eq!(
        callers_logged(&mut running),
        [QUIET, "api.payments.svc", "batch-reindex"]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// What one caller saw.
#[derive(Debug, Default)]
struct Seen {
    ok: AtomicUsize,
    limited: AtomicUsize,
    other: AtomicUsize,
    /// The retry delays of the refusals.
    retries: std::sync::Mutex<Vec<Duration>>,
}

impl Seen {
    fn record(&self, result: &Result<tonic::Response<impl Sized>, tonic::Status>) {
        match result {
            Ok(_) => self.ok.fetch_add(1, Ordering::Relaxed),
            Err(status)
                if status.code() == Code::ResourceExhausted
                    && status.get_details_error_info().unwrap().reason
                        == "UPSTREAM_RATE_LIMITED" =>
            {
                if let Some(retry) = status.get_details_retry_info().and_then(|r| r.retry_delay) {
                    self.retries.lock().unwrap().push(retry);
                }
                self.limited.fetch_add(1, Ordering::Relaxed)
            }
            Err(_) => self.other.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// For `window`: `flooders` tasks calling back to back as FLOOD on
/// `flood_at`, and QUIET calling 4 times a second on `quiet_at`, every
/// call with a token of its own. What each saw.
async fn flood_beside_quiet(
    flood_at: &[SocketAddr],
    quiet_at: SocketAddr,
    flooders: usize,
    window: Duration,
) -> (Arc<Seen>, Arc<Seen>) {
    let (flood, quiet) = (Arc::new(Seen::default()), Arc::new(Seen::default()));
    let until = Instant::now() + window;
    let serial = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..flooders {
        let mut grpc = client(flood_at[n % flood_at.len()]).await;
        let (seen, serial) = (Arc::clone(&flood), Arc::clone(&serial));
        tasks.spawn(async move {
            let xfcc = format!("URI={FLOOD}");
            while Instant::now() < until {
                let n = serial.fetch_add(1, Ordering::Relaxed);
                seen.record(&grpc.get_user_auth_factors(call(n, Some(&xfcc))).await);
            }
        });
    }
    // The flood fills the queues first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut grpc = client(quiet_at).await;
    let mut ticks = tokio::time::interval(Duration::from_millis(250));
    let xfcc = format!("Hash=9;URI={QUIET}");
    while Instant::now() < until {
        ticks.tick().await;
        let n = 1_000_000 + serial.fetch_add(1, Ordering::Relaxed);
        quiet.record(&grpc.get_user_auth_factors(call(n, Some(&xfcc))).await);
    }
    while tasks.join_next().await.is_some() {}
    (flood, quiet)
}

/// At `--upstream-rate-limit 20`, one caller flooding with distinct tokens
/// and another at 4 a second (a fifth of the limit): the quiet caller is
/// never refused; the flood is, at once, and Cognito sees the limit.
#[tokio::test(flavor = "multi_thread")]
async fn beside_a_flooding_caller_a_quiet_one_is_never_refused() {
    let stand_in = StandIn::start().await;
    stand_in.always(Reply::full_success());
    let mut running = Running::against(
        &stand_in,
        &[
            "--upstream-rate-limit",
            "20",
            "--trust-forwarded-client-cert",
            "true",
        ],
        &[],
    );
    let metrics = running.wait_for_addr("serving metrics");
    let started = Instant::now();
    let (flood, quiet) =
        flood_beside_quiet(&[running.addr], running.addr, 16, Duration::from_secs(4)).await;
    let rate = stand_in.received().len() as f64 / started.elapsed().as_secs_f64();
    assert_eq!(
        quiet.limited.load(Ordering::Relaxed),
        0,
        "quiet {quiet:?}, flood {flood:?}"
    );
    assert_eq!(quiet.other.load(Ordering::Relaxed), 0, "{quiet:?}");
    assert!(quiet.ok.load(Ordering::Relaxed) >= 12, "{quiet:?}");
    assert!(flood.limited.load(Ordering::Relaxed) > 100, "{flood:?}");
    assert!(rate <= 20.0 * 1.2, "{rate:.1} calls/s reached Cognito");
    let page = scrape(metrics).await;
    let refused =
        "cognito_facade_upstream_rate_limited_total{region=\"eu-west-1\",caller=\"other\"}";
    assert_eq!(
        sample(&page, refused),
        Some(flood.limited.load(Ordering::Relaxed) as f64),
        "{page}"
    );
    assert_eq!(running.terminate().await, Some(0));
}

/// The same over two replicas sharing the limit on Redis: the flood on
/// both, the quiet caller on one.
#[tokio::test(flavor = "multi_thread")]
async fn on_a_fleet_a_quiet_caller_beside_a_flood_is_never_refused() {
    let redis = Redis::start(&[]);
    let stand_in = StandIn::start().await;
    stand_in.always(Reply::full_success());
    let key = key_file(&redis.dir, 35);
    let args = [
        "--upstream-rate-limit",
        "20",
        "--trust-forwarded-client-cert",
        "true",
    ];
    let mut replicas: Vec<Running> = (0..2)
        .map(|_| replica(&stand_in, &redis, &key, &args))
        .collect();
    until_they_know_the_fleets_size(&mut replicas).await;
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();
    let started = Instant::now();
    let (flood, quiet) = flood_beside_quiet(&addrs, addrs[1], 16, Duration::from_secs(4)).await;
    let rate = stand_in.received().len() as f64 / started.elapsed().as_secs_f64();
    assert_eq!(
        quiet.limited.load(Ordering::Relaxed),
        0,
        "quiet {quiet:?}, flood {flood:?}"
    );
    assert_eq!(quiet.other.load(Ordering::Relaxed), 0, "{quiet:?}");
    assert!(flood.limited.load(Ordering::Relaxed) > 100, "{flood:?}");
    assert!(
        rate <= 20.0 * 1.2,
        "{rate:.1} calls/s reached Cognito over the fleet"
    );
    for replica in &mut replicas {
        assert_eq!(replica.terminate().await, Some(0));
    }
}

/// At `--max-concurrent-requests 4`, with Cognito slow: a caller holding
/// every slot is shed beyond them at once; a quiet caller within its share
/// still gets a slot, and the flood's newest call gives its up
/// (`OVERLOADED`).
#[tokio::test(flavor = "multi_thread")]
async fn when_every_slot_is_taken_the_caller_most_over_its_share_is_shed_first() {
    let stand_in = StandIn::start().await;
    stand_in.always(Reply::Delay(
        Duration::from_millis(1500),
        Box::new(Reply::full_success()),
    ));
    let mut running = Running::against(
        &stand_in,
        &[
            "--max-concurrent-requests",
            "4",
            "--trust-forwarded-client-cert",
            "true",
        ],
        &[],
    );
    let flood_xfcc = format!("URI={FLOOD}");
    let mut flooding = tokio::task::JoinSet::new();
    for n in 0..4 {
        let mut grpc = client(running.addr).await;
        let xfcc = flood_xfcc.clone();
        flooding.spawn(async move { grpc.get_user_auth_factors(call(n, Some(&xfcc))).await });
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while stand_in.received().len() < 4 {
        assert!(
            Instant::now() < deadline,
            "the flood's calls never reached Cognito"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut grpc = client(running.addr).await;
    // The flood holds its share and more: its next call is shed at once.
    let started = Instant::now();
    let status = grpc
        .get_user_auth_factors(call(10, Some(&flood_xfcc)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "OVERLOADED"
    );
    assert!(started.elapsed() < Duration::from_millis(500));
    // The quiet caller is within its share (2 of 4): answered.
    let quiet = format!("URI={QUIET}");
    grpc.get_user_auth_factors(call(11, Some(&quiet)))
        .await
        .unwrap();
    let mut shed = 0;
    let mut answered = 0;
    while let Some(result) = flooding.join_next().await {
        match result.unwrap() {
            Ok(_) => answered += 1,
            Err(status) => {
                assert_eq!(
                    status.get_details_error_info().unwrap().reason,
                    "OVERLOADED"
                );
                shed += 1;
            }
        }
    }
    assert_eq!(
        (answered, shed),
        (3, 1),
        "one of the flood's calls gave its slot up"
    );
    assert_eq!(running.terminate().await, Some(0));
}

/// A GET of `path` with `token` through Envoy's TLS listener at `addr`,
/// with the client certificate `client`: the response's status line.
async fn get_over_mtls(
    addr: SocketAddr,
    pki: &Pki,
    client: &(String, String),
    path: &str,
    token: &str,
) -> String {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca.pem().as_bytes()).unwrap())
        .unwrap();
    let chain = vec![CertificateDer::from_pem_slice(client.0.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(client.1.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    answer.lines().next().unwrap_or_default().to_owned()
}

/// Behind the real Envoy with downstream mTLS, a Check's source principal
/// (the client certificate's SPIFFE ID, as Envoy verified it) names the
/// caller: in the call's line and its `caller` label.
#[tokio::test]
async fn a_check_behind_envoy_with_mtls_names_the_source_principal() {
    let pki = Pki::new();
    let server = pki.leaf(
        vec![
            SanType::DnsName("localhost".try_into().unwrap()),
            SanType::IpAddress([127, 0, 0, 1].into()),
        ],
        "ingress",
    );
    let client_cert = pki.leaf(vec![SanType::URI(QUIET.try_into().unwrap())], "api");
    let stand_in = StandIn::start().await;
    let mut facade = Running::against(&stand_in, &["--caller-weight", &format!("{QUIET}=2")], &[]);
    let metrics = facade.wait_for_addr("serving metrics");
    let (_echo, echo_addr) = crate::mesh::Echo::start().await;
    let tls = crate::mesh::DownstreamTls {
        cert: server.0.clone(),
        key: server.1.clone(),
        ca: pki.ca.pem(),
    };
    let envoy = crate::mesh::Envoy::start_with(&[facade.addr], echo_addr, Some(&tls));
    envoy.until_healthy(1).await;
    let status = get_over_mtls(envoy.listener, &pki, &client_cert, "/", "principal.token").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let page = scrape(metrics).await;
    let series = format!(
        "cognito_facade_rpc_requests_total{{method=\"Check\",code=\"OK\",source=\"cognito\",caller=\"{QUIET}\"}}"
    );
    assert_eq!(sample(&page, &series), Some(1.0), "{page}");
    let line = facade.find_line(r#""rpc.method":"Check""#);
    assert!(line.contains(&format!(r#""caller":"{QUIET}""#)), "{line}");
    drop(envoy);
    assert_eq!(facade.terminate().await, Some(0));
}
