//! Connections as a hostile client opens them, against the release binary
//! with its descriptor limits set by the test: the handshake deadline, the
//! connection cap, `accept` backing off when descriptors run out, and the
//! soft descriptor limit raised at start.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use cognito_facade::proto::identity_provider_service_client::IdentityProviderServiceClient;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    task::JoinSet,
};
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::{Running, StandIn, TOKEN, USERNAME, request, sample, scrape};

/// The HTTP/2 client preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: with the preface, a whole client opening.
const EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

/// The environment that points the binary at `stand_in`.
fn against(stand_in: &StandIn) -> [(&'static str, &str); 2] {
    [
        ("AWS_REGION", "eu-west-1"),
        (
            "AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER",
            stand_in.endpoint.as_str(),
        ),
    ]
}

/// Waits (at most `bound`) for the server to close `socket`, reading and
/// dropping whatever it sends first; when it closed, or `None`.
async fn closed_within(socket: &mut TcpStream, bound: Duration) -> Option<Instant> {
    let mut sink = Vec::new();
    match tokio::time::timeout(bound, socket.read_to_end(&mut sink)).await {
        Ok(_) => Some(Instant::now()),
        Err(_) => None,
    }
}

/// A health Check on a new connection, within `bound`.
async fn health_within(addr: SocketAddr, bound: Duration) -> Result<ServingStatus, String> {
    let check = async {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .map_err(|err| err.to_string())?;
        check_on(channel).await
    };
    tokio::time::timeout(bound, check)
        .await
        .map_err(|_| format!("no answer within {bound:?}"))?
}

async fn check_on(channel: Channel) -> Result<ServingStatus, String> {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|answer| answer.into_inner().status())
        .map_err(|status| status.to_string())
}

/// The process's CPU time so far (user and system, every thread).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let output = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .unwrap();
    let per_second: u64 = String::from_utf8(output.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

#[tokio::test]
async fn silent_and_half_open_connections_are_closed_at_the_handshake_deadline() {
    const DEADLINE: Duration = Duration::from_secs(1);
    let stand_in = StandIn::start().await;
    let mut running = Running::against(&stand_in, &["--handshake-timeout", "1s"], &[]);
    let metrics = running.wait_for_addr("serving metrics");
    let started = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..100 {
        silent.push(TcpStream::connect(running.addr).await.unwrap());
    }
    let mut preface_only = TcpStream::connect(running.addr).await.unwrap();
    preface_only.write_all(PREFACE).await.unwrap();
    // A real client's opening, then nothing: an idle client, which stays.
    let mut opened = TcpStream::connect(running.addr).await.unwrap();
    opened.write_all(PREFACE).await.unwrap();
    opened.write_all(EMPTY_SETTINGS).await.unwrap();

    for socket in silent.iter_mut().chain([&mut preface_only]) {
        let closed = closed_within(socket, DEADLINE * 4)
            .await
            .expect("a connection that never finished its handshake was left open");
        let after = closed - started;
        assert!(after >= DEADLINE, "closed before the deadline: {after:?}");
        assert!(after < DEADLINE * 3, "closed late: {after:?}");
    }
    assert_eq!(
        closed_within(&mut opened, Duration::from_millis(500)).await,
        None,
        "a connection past its handshake was closed"
    );

    let page = scrape(metrics).await;
    let timeouts = sample(&page, "cognito_facade_handshake_timeouts_total").unwrap();
    assert_eq!(timeouts, 101.0, "{page}");
    assert_eq!(running.call().await.unwrap(), USERNAME);
    // A connection open at shutdown holds the exit until the grace runs out.
    drop(opened);
    assert_eq!(running.terminate().await, Some(0));
}

#[tokio::test]
async fn out_of_descriptors_accept_backs_off_and_serves_again_after_the_deadline() {
    cognito_facade::test_support::raise_fd_limit();
    let stand_in = StandIn::start().await;
    // A cap far above the descriptors, so they, not the cap, run out.
    let mut running = Running::start_with_fd_limits(
        128,
        128,
        &["--handshake-timeout", "3s", "--max-connections", "10000"],
        &against(&stand_in),
    );
    let metrics = running.wait_for_addr("serving metrics");
    let mut silent = Vec::new();
    for _ in 0..250 {
        silent.push(TcpStream::connect(running.addr).await.unwrap());
    }
    let warning = running.wait_for_line("accepting connections failed");
    assert!(warning.contains("EMFILE"), "{warning}");

    let pid = running.pid();
    let before = cpu_time(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = cpu_time(pid) - before;
    assert!(
        spent < Duration::from_millis(100),
        "out of descriptors, the service spent {spent:?} of CPU in 2 s"
    );

    // The silent connections' deadline frees the descriptors.
    let status = health_within(running.addr, Duration::from_secs(15)).await;
    assert_eq!(status, Ok(ServingStatus::Serving));
    let page = scrape(metrics).await;
    let errors = sample(
        &page,
        "cognito_facade_accept_errors_total{error=\"EMFILE\"}",
    )
    .unwrap();
    assert!(errors >= 1.0, "{page}");
    // A back-off that grows to 1 s: a handful of failures, not thousands.
    assert!(errors < 100.0, "{errors} failed accepts");
    drop(silent);
    assert_eq!(running.terminate().await, Some(0));
    let warnings = running
        .logs()
        .iter()
        .filter(|line| line.contains("accepting connections failed"))
        .count();
    assert!(warnings <= 2, "{warnings} warnings: at most one per 10 s");
}

#[tokio::test]
async fn at_the_cap_new_connections_are_closed_and_held_ones_keep_answering() {
    cognito_facade::test_support::raise_fd_limit();
    let stand_in = StandIn::start().await;
    let mut running = Running::against(&stand_in, &["--max-connections", "200"], &[]);
    let metrics = running.wait_for_addr("serving metrics");
    let mut channels = Vec::new();
    for _ in 0..300 {
        let channel = Channel::from_shared(format!("http://{}", running.addr))
            .unwrap()
            .connect()
            .await;
        channels.push(channel);
    }
    let mut checks = JoinSet::new();
    for (i, channel) in channels.iter().enumerate() {
        let Ok(channel) = channel else {
            continue;
        };
        let channel = channel.clone();
        checks.spawn(async move {
            let status = tokio::time::timeout(Duration::from_secs(5), check_on(channel)).await;
            (i, matches!(status, Ok(Ok(ServingStatus::Serving))))
        });
    }
    let mut held = Vec::new();
    while let Some(joined) = checks.join_next().await {
        let (i, serving) = joined.unwrap();
        if serving {
            held.push(i);
        }
    }
    assert_eq!(held.len(), 200, "connections held at a cap of 200");
    // What a caller sees at the cap: its connection closed at once, before
    // any HTTP/2 (not a byte from the server), so its gRPC library says
    // UNAVAILABLE.
    let mut raw = TcpStream::connect(running.addr).await.unwrap();
    let mut sink = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(1), raw.read_to_end(&mut sink)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    assert!(sink.is_empty(), "the server sent {sink:?} at the cap");
    let refused = (0..channels.len())
        .find(|i| !held.contains(i) && channels[*i].is_ok())
        .expect("a refused connection");
    let status = IdentityProviderServiceClient::new(channels[refused].as_ref().unwrap().clone())
        .get_user_auth_factors(request(TOKEN))
        .await
        .unwrap_err();
    // grpc-go, grpcio and grpc-js say UNAVAILABLE; tonic's client says
    // CANCELLED, "connection closed", or, when its request's bytes meet the
    // closed socket first, UNKNOWN, "transport error" (a broken pipe).
    let tonic_broken_pipe =
        status.code() == tonic::Code::Unknown && status.message() == "transport error";
    assert!(
        matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::Cancelled
        ) || tonic_broken_pipe,
        "{status:?}"
    );
    // "connection closed", a broken pipe, or ConnectionReset.
    let said = format!("{status:?}").to_lowercase();
    assert!(
        said.contains("connection") || said.contains("broken pipe"),
        "{status:?}"
    );

    let page = scrape(metrics).await;
    assert_eq!(
        sample(&page, "cognito_facade_connections_open"),
        Some(200.0)
    );
    assert_eq!(sample(&page, "cognito_facade_max_connections"), Some(200.0));
    let refused = sample(&page, "cognito_facade_connections_refused_total").unwrap();
    assert!(refused >= 100.0, "{page}");

    // Calls on the held connections still answer, at the cap.
    let mut calls = JoinSet::new();
    for i in held {
        let channel = channels[i].as_ref().unwrap().clone();
        calls.spawn(async move {
            IdentityProviderServiceClient::new(channel)
                .get_user_auth_factors(request(TOKEN))
                .await
                .map(|answer| answer.into_inner().username)
        });
    }
    while let Some(joined) = calls.join_next().await {
        assert_eq!(joined.unwrap().unwrap(), USERNAME);
    }
    drop(channels);
    assert_eq!(running.terminate().await, Some(0));
    let logs = running.logs();
    let warnings = logs
        .iter()
        .filter(|line| line.contains("at the connection cap"))
        .count();
    assert!(
        (1..=2).contains(&warnings),
        "{warnings} warnings: one per 10 s"
    );
}

#[tokio::test]
async fn the_soft_descriptor_limit_is_raised_to_the_hard_one_and_logged() {
    let rustix::process::Rlimit { maximum, .. } =
        rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let hard = maximum.unwrap_or(4096).min(4096);
    assert!(hard > 256, "this machine's hard limit is {hard}");
    let stand_in = StandIn::start().await;
    let mut running = Running::start_with_fd_limits(256, hard, &[], &against(&stand_in));
    let line = running.find_line("connection limits");
    let fields: serde_json::Value = serde_json::from_str(&line).unwrap();
    let fields = &fields["fields"];
    assert_eq!(fields["fd_soft_was"], 256, "{line}");
    assert_eq!(fields["fd_soft"], hard, "{line}");
    assert_eq!(fields["fd_hard"], hard, "{line}");
    // The default cap: all but one per --max-concurrent-requests (1000) and
    // 64 more, or half when that is more than half.
    let reserve = (1000 + 64).min(hard / 2);
    assert_eq!(fields["max_connections"], hard - reserve, "{line}");

    let limits = std::fs::read_to_string(format!("/proc/{}/limits", running.pid())).unwrap();
    let open_files: Vec<&str> = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(open_files[3], hard.to_string(), "soft: {limits}");
    assert_eq!(open_files[4], hard.to_string(), "hard: {limits}");
    assert_eq!(running.call().await.unwrap(), USERNAME);
    assert_eq!(running.terminate().await, Some(0));
}
