//! The fleet on Redis: three replicas of the real binary and a real
//! `redis-server` or `valkey-server` (`crate::store_server`: on `PATH`, or
//! installed into `target/`), on loopback.

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use cognito_facade::proto::identity_provider_service_client::IdentityProviderServiceClient;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::helpers::{
    Reply, Running, StandIn, TOKEN, USERNAME, request, sample, scrape, until_received,
};
pub(crate) use crate::servers::{Redis, key_file};

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
pub(crate) async fn sixty_calls_of_one_token(replicas: &[Running]) -> Vec<String> {
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

/// Waits (bounded) until Redis holds `n` kept answers (`--stale-if-error`).
pub(crate) async fn until_kept(redis: &Redis, n: usize) {
    until_stored(redis, "*:k", n).await;
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
        Box::new(Reply::revoked()),
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
