//! Unfinished request bodies (issue 40, §5): calls whose message never
//! arrives whole hold no more memory than the request-byte budgets allow,
//! are answered DEADLINE_EXCEEDED once the body read timeout passes, and
//! leave health SERVING and a well-behaved caller answered promptly. On the
//! binary, with a real HTTP/2 client (`h2`) as the attacker.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    helpers::{Reply, Running, StandIn, sample, scrape},
    unfinished::Holding,
};

/// The path of ext_authz's Check, whose messages may be the largest (1 MiB).
const CHECK: &str = "/envoy.service.auth.v3.Authorization/Check";
/// What each hostile call announces (and offers): 1 MB, just under the
/// largest Check.
const ANNOUNCED: u32 = 1_000_000;
/// The bound on what the attack may add to the idle RSS.
const RSS_BOUND_MIB: f64 = 96.0;
/// The bound on a well-behaved caller's p99 meanwhile.
const P99_BOUND: Duration = Duration::from_millis(100);

/// The resident set of `pid`, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib / 1024.0
}

/// Waits (at most `bound`) until, for half a second, the attacker has sent
/// nothing more and no more of its calls were stopped: the server has
/// taken all its budgets let in and refused the rest. Fails at once
/// (closing the attack) if the RSS goes past twice the bound.
async fn until_the_server_takes_no_more(holding: &Holding, pid: u32, idle: f64, bound: Duration) {
    let deadline = Instant::now() + bound;
    let mut last = (usize::MAX, usize::MAX);
    while Instant::now() < deadline {
        let sent = holding.held.sent_bytes.load(Ordering::Relaxed);
        let now = (sent, holding.still_held());
        if now == last {
            return;
        }
        last = now;
        let rss = rss_mib(pid);
        assert!(
            rss <= idle + 2.0 * RSS_BOUND_MIB,
            "RSS went from {idle:.1} to {rss:.1} MiB with {:.1} MiB let in",
            sent as f64 / 1048576.0
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What the service looked like while the attack was held.
struct Meanwhile {
    peak_rss_mib: f64,
    latencies: Vec<Duration>,
    failures: usize,
    health: Vec<ServingStatus>,
}

/// For `window`: a well-behaved caller's calls one after another on a
/// connection of its own, health on a fresh connection every 250 ms, and
/// the RSS every 50 ms; on a thread and runtime of their own, so the
/// attacker's thousands of tasks in this process do not delay them.
async fn meanwhile(service: &Running, window: Duration) -> Meanwhile {
    let (addr, pid) = (service.addr, service.pid());
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(watch(addr, pid, window))
    })
    .await
    .unwrap()
}

async fn watch(addr: std::net::SocketAddr, pid: u32, window: Duration) -> Meanwhile {
    let mut seen = Meanwhile {
        peak_rss_mib: 0.0,
        latencies: Vec::new(),
        failures: 0,
        health: Vec::new(),
    };
    let mut client = crate::fleet::client(addr).await;
    let ends = Instant::now() + window;
    let mut next_health = Instant::now();
    while Instant::now() < ends {
        seen.peak_rss_mib = seen.peak_rss_mib.max(rss_mib(pid));
        if Instant::now() >= next_health {
            seen.health.push(health(addr).await);
            next_health += Duration::from_millis(250);
        }
        let started = Instant::now();
        let answer = client
            .get_user_auth_factors(crate::helpers::request(crate::helpers::TOKEN))
            .await;
        seen.latencies.push(started.elapsed());
        seen.failures += usize::from(answer.is_err());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    seen
}

/// The whole server's health, asked on a fresh connection.
async fn health(addr: std::net::SocketAddr) -> ServingStatus {
    let answer = tokio::time::timeout(Duration::from_secs(1), async {
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .ok()?
            .connect()
            .await
            .ok()?;
        HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .ok()
    })
    .await;
    match answer {
        Ok(Some(response)) => response.into_inner().status(),
        _ => ServingStatus::Unknown,
    }
}

fn p99(latencies: &mut [Duration]) -> Duration {
    latencies.sort();
    latencies[(latencies.len() * 99).div_ceil(100) - 1]
}

/// The goal: 16 connections each holding 1,000 unfinished 1 MB
/// Checks add at most 96 MiB to the idle RSS; health stays SERVING and a
/// well-behaved caller's p99 stays within 100 ms.
#[tokio::test(flavor = "multi_thread")]
async fn sixteen_thousand_unfinished_bodies_hold_memory_within_the_budget() {
    let stand_in = StandIn::start().await;
    stand_in.always(Reply::full_success());
    let mut service = Running::against(&stand_in, &[], &[]);
    let metrics = service.wait_for_addr("serving metrics");
    service.call().await.unwrap();
    let idle = rss_mib(service.pid());

    let holding = Holding::open(service.addr, CHECK, 16, 1000, ANNOUNCED, ANNOUNCED as usize)
        .await
        .unwrap();
    until_the_server_takes_no_more(&holding, service.pid(), idle, Duration::from_secs(20)).await;
    let mut seen = meanwhile(&service, Duration::from_secs(3)).await;
    let sent_mib = holding.held.sent_bytes.load(Ordering::Relaxed) as f64 / 1048576.0;
    let still_held = holding.still_held();
    let holding_opened = holding.held.opened.load(Ordering::Relaxed);
    let unopened = holding.held.unopened.load(Ordering::Relaxed);
    let page = scrape(metrics).await;
    holding.close();

    let p99 = p99(&mut seen.latencies);
    eprintln!(
        "idle {idle:.1} MiB, peak {:.1} MiB, {sent_mib:.1} MiB let in, {holding_opened} calls \
         opened, {still_held} held, good caller p99 {p99:?} over {} calls",
        seen.peak_rss_mib,
        seen.latencies.len()
    );
    // What the stream limit (256 a connection) does not let open waits in
    // the client; the server resets what the budgets refuse, so more open.
    assert_eq!(holding_opened + unopened, 16_000);
    assert!(holding_opened >= 16 * 256, "{holding_opened} opened");
    assert!(
        seen.peak_rss_mib <= idle + RSS_BOUND_MIB,
        "RSS went from {idle:.1} to {:.1} MiB",
        seen.peak_rss_mib
    );
    assert!(p99 <= P99_BOUND, "the good caller's p99 was {p99:?}");
    assert_eq!(seen.failures, 0, "the good caller was refused");
    assert!(
        seen.health.iter().all(|s| *s == ServingStatus::Serving),
        "{:?}",
        seen.health
    );
    let held = sample(&page, "cognito_facade_request_body_bytes").unwrap();
    assert!(held > 0.0, "{page}");
}

/// The RPC's path.
const RPC: &str = "/cognito.idp.v1.IdentityProviderService/GetUserAuthFactors";

/// Waits (at most 10 s) until the server has answered or reset every call.
async fn until_none_held(holding: &Holding) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while holding.still_held() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} calls still held",
            holding.still_held()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A body that never finishes is answered DEADLINE_EXCEEDED with
/// `REQUEST_BODY_TIMEOUT` once `--request-body-timeout` passes (its room
/// given back), counted, logged, and Cognito is never called.
#[tokio::test]
async fn a_body_that_never_finishes_is_answered_at_the_read_timeout() {
    let stand_in = StandIn::start().await;
    let mut service = Running::against(&stand_in, &["--request-body-timeout", "500ms"], &[]);
    let metrics = service.wait_for_addr("serving metrics");
    let started = Instant::now();
    // A message that announces 1,000 bytes and sends 100 of them.
    let holding = Holding::open(service.addr, RPC, 1, 3, 1000, 100)
        .await
        .unwrap();
    until_none_held(&holding).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500),
        "answered after {took:?}"
    );
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    assert_eq!(*holding.held.codes.lock().unwrap(), ["4", "4", "4"]);
    let line = service.find_line("REQUEST_BODY_TIMEOUT");
    assert!(line.contains("DEADLINE_EXCEEDED"), "{line}");
    let page = scrape(metrics).await;
    assert_eq!(
        sample(&page, "cognito_facade_request_body_timeouts_total"),
        Some(3.0)
    );
    assert_eq!(
        sample(&page, "cognito_facade_request_body_bytes"),
        Some(0.0)
    );
    assert_eq!(stand_in.received().len(), 0);
    // The server is as it was.
    stand_in.always(Reply::full_success());
    service.call().await.unwrap();
}

/// With the whole budget held by one connection's unfinished body, a new
/// body elsewhere is refused at once with `REQUEST_BYTES_EXHAUSTED` and a
/// RetryInfo (Cognito never called) while health still answers SERVING; once
/// the holder times out, its room is back and the same call is answered.
#[tokio::test]
async fn a_new_body_finds_no_room_while_the_budget_is_held_and_room_comes_back() {
    let stand_in = StandIn::start().await;
    stand_in.always(Reply::full_success());
    // Room for the largest message, its prefix, a frame and a stream's cost
    // (1,069,061 bytes), and 1,019 bytes more.
    let mut service = Running::against(
        &stand_in,
        &[
            "--max-request-bytes-in-flight",
            "1045KiB",
            "--max-connection-request-bytes",
            "1045KiB",
            "--request-body-timeout",
            "4s",
        ],
        &[],
    );
    let metrics = service.wait_for_addr("serving metrics");
    // The largest Check, sent but for its last byte: it holds its message's
    // room, its first frame and its stream's cost, all but 1,019 bytes of
    // the budget.
    let largest = 1024 * 1024;
    let holder = Holding::open(service.addr, CHECK, 1, 1, largest, largest as usize - 1)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let page = scrape(metrics).await;
        let held = sample(&page, "cognito_facade_request_body_bytes").unwrap_or_default();
        if held >= f64::from(largest + 5 + 20 * 1024) {
            break;
        }
        assert!(Instant::now() < deadline, "the holder holds {held} bytes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = service.call().await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    let info = tonic_types::StatusExt::get_details_error_info(&refused).unwrap();
    assert_eq!(info.reason, "REQUEST_BYTES_EXHAUSTED");
    assert!(tonic_types::StatusExt::get_details_retry_info(&refused).is_some());
    assert!(stand_in.received().is_empty());
    // Health draws on a reserve of its own: the probes still pass.
    assert_eq!(health(service.addr).await, ServingStatus::Serving);
    until_none_held(&holder).await;
    assert_eq!(*holder.held.codes.lock().unwrap(), ["4"]);
    assert!(service.call().await.is_ok());
}

/// Reflection's v1 stream, which passes through unbuffered.
const REFLECTION: &str = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";

/// The gRPC codes of the first responses of `calls` reflection streams
/// opened on one connection (a stream let in answers its headers at once,
/// with no code; one refused, `8`), and the streams, held open.
async fn reflection_streams(addr: std::net::SocketAddr, calls: usize) -> (Vec<String>, Holding) {
    // Each announces a 1,000-byte message and sends 100 bytes of it.
    let holding = Holding::open(addr, REFLECTION, 1, calls, 1000, 100)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while holding.held.answered.load(Ordering::Relaxed) < calls {
        assert!(
            Instant::now() < deadline,
            "{} answered",
            holding.still_held()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let codes = holding.held.codes.lock().unwrap().clone();
    (codes, holding)
}

/// Reflection streams are bounded apart from the budget: at most 32 open at
/// once (the next is refused `RESOURCE_EXHAUSTED` at once), and one left
/// open ends at `--request-body-timeout`, its slot given back.
#[tokio::test]
async fn reflection_streams_are_bounded_in_number_and_time() {
    let stand_in = StandIn::start().await;
    let service = Running::against(&stand_in, &["--request-body-timeout", "1s"], &[]);
    let started = Instant::now();
    let (codes, held) = reflection_streams(service.addr, 33).await;
    let refused = |codes: &[String]| codes.iter().filter(|code| *code == "8").count();
    assert_eq!(refused(&codes), 1, "{codes:?}");
    assert!(
        codes.iter().all(|code| code.is_empty() || code == "8"),
        "{codes:?}"
    );
    let (codes, more) = reflection_streams(service.addr, 1).await;
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "too slow to tell"
    );
    assert_eq!(codes, ["8"], "a stream more while 32 are open");
    // At the timeout the 32 end, and their slots are back.
    let deadline = Instant::now() + Duration::from_secs(5);
    while held.held.ended.load(Ordering::Relaxed) < 33 {
        assert!(Instant::now() < deadline, "the streams did not end");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(1), "ended after {took:?}");
    let ended = held.held.trailer_codes.lock().unwrap().clone();
    assert_eq!(ended, ["4"; 32], "DEADLINE_EXCEEDED, each");
    let (codes, again) = reflection_streams(service.addr, 32).await;
    assert_eq!(refused(&codes), 0, "{codes:?}");
    for holding in [held, more, again] {
        holding.close();
    }
}
