//! Distributed tracing end to end: a caller traced by OpenTelemetry's own
//! Python SDK and gRPC instrumentation, the real binary exporting over OTLP
//! (`grpc` and `http/protobuf`), and a test OTLP receiver built from the
//! published OTLP protobufs (`tests/otel/`). Also: calls refused before the
//! handler get their span, followers link to the shared upstream span,
//! nothing secret is exported, and a collector that is away costs calls
//! nothing.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use tonic::Code;

use crate::helpers::{
    KilledOnDrop, Reply, Running, StandIn, TOKEN, USERNAME, python_venv, request, sample, scrape,
    until_received,
};

/// The Python of a virtualenv under `target/` with
/// `tests/otel/requirements.txt`.
fn otel_python() -> PathBuf {
    let requirements = include_str!("../otel/requirements.txt");
    python_venv("otel-venv", requirements).join("python")
}

fn script(name: &str) -> String {
    format!("{}/tests/otel/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// The test receiver; killed when dropped.
struct Receiver {
    _child: KilledOnDrop,
    grpc: u16,
    http: u16,
    out: PathBuf,
}

impl Receiver {
    fn start(python: &PathBuf) -> Self {
        let out = tempfile_path("spans");
        let mut child = KilledOnDrop(
            Command::new(python)
                .args([script("receiver.py"), out.to_str().unwrap().to_owned()])
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        );
        let mut line = String::new();
        BufReader::new(child.0.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = |key: &str| -> u16 {
            line.split_whitespace()
                .find_map(|part| part.strip_prefix(key))
                .unwrap_or_else(|| panic!("receiver said {line:?}"))
                .parse()
                .unwrap()
        };
        Self {
            grpc: port("grpc="),
            http: port("http="),
            _child: child,
            out,
        }
    }

    fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// Waits (at most 15 s) until `done` holds for the spans received.
    fn wait_for(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(Instant::now() < deadline, "no {what}: {spans:#?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn tempfile_path(stem: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{stem}-{}-{n}.jsonl", std::process::id()))
}

/// The binary exporting to `endpoint` with `protocol`, batches sent quickly.
fn exporting(
    stand_in: &StandIn,
    protocol: &str,
    endpoint: &str,
    extra: &[(&str, &str)],
) -> Running {
    let mut envs = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("COGNITO_FACADE_RETRY_BACKOFF", "5ms"),
    ];
    envs.extend_from_slice(extra);
    Running::against(stand_in, &[], &envs)
}

fn attr<'v>(span: &'v Value, key: &str) -> &'v Value {
    &span["attributes"][key]
}

fn of_service<'v>(spans: &'v [Value], service: &str, kind: i64) -> Vec<&'v Value> {
    spans
        .iter()
        .filter(|s| s["service"] == service && s["kind"] == kind)
        .collect()
}

const SERVER: i64 = 2;
const CLIENT: i64 = 3;

/// The Python caller's trace through the facade to Cognito, exported with
/// `protocol`.
async fn a_callers_trace_continues_through_the_facade(protocol: &str) {
    let python = tokio::task::spawn_blocking(otel_python).await.unwrap();
    let receiver = Receiver::start(&python);
    let endpoint = match protocol {
        "grpc" => format!("http://127.0.0.1:{}", receiver.grpc),
        _ => format!("http://127.0.0.1:{}", receiver.http),
    };
    let stand_in = StandIn::start().await;
    // One retry, so the client span shows two attempts.
    stand_in.then([Reply::error(500, "InternalErrorException", "boom")]);
    // Over HTTP, batches wait far longer than the test: the spans can only
    // arrive through the flush at shutdown.
    let delay = if protocol == "grpc" { "100" } else { "600000" };
    let mut running = exporting(
        &stand_in,
        protocol,
        &endpoint,
        &[
            ("OTEL_SERVICE_NAME", ""),
            ("OTEL_BSP_SCHEDULE_DELAY", delay),
        ],
    );
    let service = running.addr.to_string();
    let collector = format!("127.0.0.1:{}", receiver.grpc);
    let client = python.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(client)
            .args([script("client.py"), service, collector, TOKEN.to_owned()])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{output:?}");
    let trace_id = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert_eq!(trace_id.len(), 32, "{trace_id}");
    // Shutting down flushes what is still queued.
    assert_eq!(running.terminate().await, Some(0));

    let spans = receiver.wait_for("spans of both sides", |spans| {
        !of_service(spans, "cognito-facade", CLIENT).is_empty()
            && !of_service(spans, "python-caller", CLIENT).is_empty()
    });
    let caller = of_service(&spans, "python-caller", CLIENT)[0];
    let server = of_service(&spans, "cognito-facade", SERVER);
    assert_eq!(server.len(), 1, "{spans:#?}");
    let server = server[0];
    let upstream = of_service(&spans, "cognito-facade", CLIENT)[0];
    assert_eq!(caller["trace_id"], trace_id.as_str());
    // The server span is the caller's child, the Cognito span the server's.
    assert_eq!(server["trace_id"], trace_id.as_str());
    assert_eq!(server["parent_span_id"], caller["span_id"]);
    assert_eq!(upstream["trace_id"], trace_id.as_str());
    assert_eq!(upstream["parent_span_id"], server["span_id"]);
    assert_eq!(server["transport"], protocol);
    assert_eq!(server["resource"]["service.name"], "cognito-facade");

    assert_eq!(attr(server, "rpc.system"), "grpc");
    assert_eq!(
        attr(server, "rpc.service"),
        "cognito.idp.v1.IdentityProviderService"
    );
    assert_eq!(attr(server, "rpc.method"), "GetUserAuthFactors");
    assert_eq!(attr(server, "rpc.grpc.status_code"), 0);
    assert_eq!(attr(server, "cognito_facade.source"), "cognito");
    assert_eq!(attr(server, "cognito_facade.caller"), "anonymous");
    assert_eq!(attr(upstream, "rpc.system"), "aws-api");
    assert_eq!(attr(upstream, "rpc.service"), "CognitoIdentityProvider");
    assert_eq!(attr(upstream, "rpc.method"), "GetUserAuthFactors");
    assert_eq!(attr(upstream, "http.response.status_code"), 200);
    assert_eq!(
        attr(upstream, "aws.request_id"),
        StandIn::request_id(2).as_str()
    );
    let attempts: Vec<&Value> = upstream["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["name"] == "attempt")
        .collect();
    assert_eq!(attempts.len(), 2, "{upstream:#}");
    assert_eq!(attempts[0]["attributes"]["http.response.status_code"], 500);
    assert_eq!(attempts[1]["attributes"]["http.response.status_code"], 200);

    // Nothing secret left the process.
    let exported = std::fs::read_to_string(&receiver.out).unwrap();
    for (what, secret) in [
        ("token segment 1", TOKEN.split('.').next().unwrap()),
        ("token segment 2", TOKEN.split('.').nth(1).unwrap()),
        ("token segment 3", TOKEN.split('.').nth(2).unwrap()),
        ("username", USERNAME),
    ] {
        assert!(!exported.contains(secret), "the {what} was exported");
    }
    // The call's line names the same trace and the server span.
    let logs = running.logs();
    let line = logs.iter().find(|l| l.contains("call finished")).unwrap();
    let line: Value = serde_json::from_str(line).unwrap();
    assert_eq!(line["fields"]["trace_id"], trace_id.as_str());
    assert_eq!(line["fields"]["span_id"], server["span_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_trace_continues_through_the_facade_over_otlp_grpc() {
    a_callers_trace_continues_through_the_facade("grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_trace_continues_through_the_facade_over_otlp_http_protobuf() {
    a_callers_trace_continues_through_the_facade("http/protobuf").await;
}

/// A W3C `traceparent` for trace `n`.
fn traceparent(n: u8) -> (String, String) {
    let trace_id = format!("{n:02x}{}", "a1".repeat(15));
    let parent = format!("{n:02x}{}", "b2".repeat(7));
    (format!("00-{trace_id}-{parent}-01"), trace_id)
}

fn traced<T>(message: T, n: u8) -> (tonic::Request<T>, String) {
    let (header, trace_id) = traceparent(n);
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("traceparent", header.parse().unwrap());
    (request, trace_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_calls_get_server_spans_and_followers_link_to_the_shared_call() {
    use tonic::codegen::http;
    use tower::ServiceExt as _;

    let python = tokio::task::spawn_blocking(otel_python).await.unwrap();
    let receiver = Receiver::start(&python);
    let stand_in = StandIn::start().await;
    stand_in.always(Reply::Delay(
        Duration::from_millis(300),
        Box::new(Reply::full_success()),
    ));
    let endpoint = format!("http://127.0.0.1:{}", receiver.grpc);
    let mut running = exporting(&stand_in, "grpc", &endpoint, &[]);
    let mut client = running.client().await;

    // A token refused here, and an oversize message.
    let (bad, bad_trace) = traced(
        cognito_facade::proto::GetUserAuthFactorsRequest {
            access_token: "not a token".to_owned(),
        },
        1,
    );
    assert_eq!(
        client.get_user_auth_factors(bad).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let (huge, huge_trace) = traced(
        cognito_facade::proto::GetUserAuthFactorsRequest {
            access_token: "a".repeat(70_000),
        },
        2,
    );
    assert_eq!(
        client.get_user_auth_factors(huge).await.unwrap_err().code(),
        Code::ResourceExhausted
    );
    // Not gRPC at all.
    let (header, not_grpc_trace) = traceparent(3);
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", running.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let raw = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{}/cognito.idp.v1.IdentityProviderService/GetUserAuthFactors",
            running.addr
        ))
        .header("content-type", "application/json")
        .header("traceparent", header)
        .body(tonic::body::Body::new("{}".to_owned()))
        .unwrap();
    let response = channel.oneshot(raw).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Two calls with one token: the second follows the first's flight.
    let (lead, shared_trace) = traced(request(TOKEN).into_inner(), 4);
    let (follow, follower_trace) = traced(request(TOKEN).into_inner(), 5);
    let mut leader_client = client.clone();
    let leader = tokio::spawn(async move { leader_client.get_user_auth_factors(lead).await });
    until_received(&stand_in, 1).await;
    client.get_user_auth_factors(follow).await.unwrap();
    leader.await.unwrap().unwrap();
    drop(client);
    assert_eq!(running.terminate().await, Some(0));

    let spans = receiver.wait_for("five server spans", |spans| {
        of_service(spans, "cognito-facade", SERVER).len() >= 5
    });
    let server_span = |trace_id: &str| -> &Value {
        of_service(&spans, "cognito-facade", SERVER)
            .into_iter()
            .find(|s| s["trace_id"] == trace_id)
            .unwrap_or_else(|| panic!("no server span in {trace_id}: {spans:#?}"))
    };
    let bad = server_span(&bad_trace);
    assert_eq!(attr(bad, "rpc.grpc.status_code"), 3);
    assert_eq!(attr(bad, "error.type"), "INVALID_ACCESS_TOKEN");
    assert_eq!(attr(bad, "cognito_facade.source"), "local");
    let huge = server_span(&huge_trace);
    assert_eq!(attr(huge, "rpc.grpc.status_code"), 8);
    assert_eq!(attr(huge, "error.type"), "REQUEST_TOO_LARGE");
    assert_eq!(
        attr(server_span(&not_grpc_trace), "rpc.grpc.status_code"),
        3
    );

    let upstream: Vec<&Value> = of_service(&spans, "cognito-facade", CLIENT);
    assert_eq!(upstream.len(), 1, "one call to Cognito: {spans:#?}");
    assert_eq!(upstream[0]["trace_id"], shared_trace.as_str());
    let follower = server_span(&follower_trace);
    assert_eq!(attr(follower, "cognito_facade.source"), "coalesced");
    assert_eq!(
        follower["links"],
        serde_json::json!([{"trace_id": shared_trace, "span_id": upstream[0]["span_id"]}])
    );
}

/// The trace ids of the call lines of a run, with no export: they come from
/// the caller's `traceparent`.
#[tokio::test]
async fn without_export_the_call_line_still_names_the_callers_trace() {
    let stand_in = StandIn::start().await;
    let mut running = Running::against(&stand_in, &[], &[]);
    let mut client = running.client().await;
    let (call, trace_id) = traced(request(TOKEN).into_inner(), 9);
    client.get_user_auth_factors(call).await.unwrap();
    client.get_user_auth_factors(request(TOKEN)).await.unwrap();
    drop(client);
    assert_eq!(running.terminate().await, Some(0));
    let lines: Vec<Value> = running
        .logs()
        .iter()
        .filter(|l| l.contains("call finished"))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["fields"]["trace_id"], trace_id.as_str());
    assert_eq!(lines[0]["fields"]["span_id"], traceparent(9).0[36..52]);
    assert_eq!(lines[1]["fields"]["trace_id"], "");
}

/// p50 of `n` sequential calls, and the slowest.
async fn latencies(running: &Running, n: usize) -> (Duration, Duration) {
    let mut client = running.client().await;
    let mut all = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        client
            .get_user_auth_factors(request(TOKEN))
            .await
            .expect("no call fails");
        all.push(started.elapsed());
    }
    all.sort();
    (all[n / 2], all[n - 1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_away_costs_calls_nothing() {
    // One that accepts connections and never answers, and a closed port.
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let black_hole_addr: SocketAddr = black_hole.local_addr().unwrap();
    let held = std::thread::spawn(move || {
        let mut kept = Vec::new();
        while let Ok((stream, _)) = black_hole.accept() {
            kept.push(stream);
            if kept.len() > 64 {
                break;
            }
        }
    });
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let stand_in = StandIn::start().await;
    let small_queue = [
        ("OTEL_BSP_MAX_QUEUE_SIZE", "16"),
        ("OTEL_BSP_EXPORT_TIMEOUT", "60000"),
    ];

    let mut baseline = Running::against(&stand_in, &[], &[]);
    let (base_p50, _) = latencies(&baseline, 300).await;
    assert_eq!(baseline.terminate().await, Some(0));
    for (what, endpoint) in [
        ("black-holed", format!("http://{black_hole_addr}")),
        ("down", format!("http://{closed}")),
    ] {
        for protocol in ["grpc", "http/protobuf"] {
            let mut running = exporting(&stand_in, protocol, &endpoint, &small_queue);
            let metrics_addr = running.wait_for_addr("serving metrics");
            let (p50, slowest) = latencies(&running, 300).await;
            assert!(
                p50 < base_p50 + Duration::from_millis(2),
                "{what} {protocol}: p50 {p50:?} against {base_p50:?} without export"
            );
            assert!(
                slowest < Duration::from_millis(500),
                "{what} {protocol}: {slowest:?}"
            );
            let page = scrape(metrics_addr).await;
            let dropped: f64 = ["queue_full", "export_failed"]
                .iter()
                .filter_map(|reason| {
                    sample(
                        &page,
                        &format!("cognito_facade_trace_spans_dropped_total{{reason=\"{reason}\"}}"),
                    )
                })
                .sum();
            assert!(
                dropped > 0.0,
                "{what} {protocol}: drops are counted: {page}"
            );
            // Shutdown waits for the export at most what is left of the grace.
            let started = Instant::now();
            running.send_sigterm();
            assert_eq!(running.exit_code(Duration::from_secs(20)).await, Some(0));
            assert!(
                started.elapsed() < Duration::from_secs(13),
                "{:?}",
                started.elapsed()
            );
        }
    }
    drop(held);
}
