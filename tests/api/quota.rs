//! The account's quota, guarded: the fleet of replicas of the real binary
//! held to one limit (also while Cognito throttles and when Redis dies), and
//! refusal memory. The algorithm's own cases are in `gcra`.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use cognito_facade::proto::identity_provider_service_client::IdentityProviderServiceClient;
use tokio::task::JoinSet;
use tonic::{Code, transport::Channel};
use tonic_types::StatusExt as _;

use crate::{
    fleet::{Redis, key_file, replica, source_of, token_expiring_in, until_remembered},
    helpers::{
        LocalMetrics, Reply, Running, StandIn, TOKEN, request, sample, scrape, spawn_app_with,
        test_config,
    },
};

/// The region every test here calls (the binary's and `test_config`'s).
const REGION: &str = "eu-west-1";

/// How the load's calls ended.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) ok: u64,
    /// `UPSTREAM_RATE_LIMITED`, each with a `RetryInfo`.
    pub(crate) limited: u64,
    /// Cognito's own throttling, after the SDK's retries.
    throttled: u64,
    /// Anything else, described.
    pub(crate) other: Vec<String>,
}

/// `callers` callers (spread over `replicas`) calling as fast as they are
/// answered, each token new, until stopped; a limited caller waits as its
/// `RetryInfo` says (at most a second), as a good client does.
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    callers: JoinSet<Tally>,
}

impl Load {
    pub(crate) async fn start(replicas: &[SocketAddr], callers: usize, salt: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut set = JoinSet::new();
        for caller in 0..callers {
            let addr = replicas[caller % replicas.len()];
            let client = IdentityProviderServiceClient::new(
                Channel::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .connect()
                    .await
                    .unwrap(),
            );
            let (stop, salt) = (Arc::clone(&stop), salt.to_owned());
            set.spawn(call_until_stopped(client, stop, format!("{salt}{caller}x")));
        }
        Self { stop, callers: set }
    }

    pub(crate) async fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Tally::default();
        for tally in self.callers.join_all().await {
            total.ok += tally.ok;
            total.limited += tally.limited;
            total.throttled += tally.throttled;
            total.other.extend(tally.other);
        }
        total
    }
}

async fn call_until_stopped(
    mut client: IdentityProviderServiceClient<Channel>,
    stop: Arc<AtomicBool>,
    prefix: String,
) -> Tally {
    let mut tally = Tally::default();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let mut req = request(&format!("{TOKEN}{prefix}{n}"));
        req.set_timeout(Duration::from_secs(3));
        let status = match client.get_user_auth_factors(req).await {
            Ok(_) => {
                tally.ok += 1;
                continue;
            }
            Err(status) => status,
        };
        let reason = status.get_details_error_info().map(|info| info.reason);
        let retry = status.get_details_retry_info().and_then(|r| r.retry_delay);
        match (status.code(), reason.as_deref(), retry) {
            (Code::ResourceExhausted, Some("UPSTREAM_RATE_LIMITED"), Some(delay)) => {
                tally.limited += 1;
                tokio::time::sleep(delay.min(Duration::from_secs(1))).await;
            }
            (Code::ResourceExhausted, Some("TOO_MANY_REQUESTS"), Some(delay)) => {
                tally.throttled += 1;
                tokio::time::sleep(delay.min(Duration::from_secs(1))).await;
            }
            _ => tally.other.push(format!("{status:?}")),
        }
    }
    tally
}

/// 24 callers on `replicas` for `run`: the rate the stand-in saw from the
/// first second on, and how the calls ended.
pub(crate) async fn rate_under_load(
    stand_in: &StandIn,
    replicas: &[SocketAddr],
    salt: &str,
    run: Duration,
) -> (f64, Tally) {
    let started = Instant::now();
    let load = Load::start(replicas, 24, salt).await;
    tokio::time::sleep(run).await;
    let rate = rate_between(stand_in, started + Duration::from_secs(1), started + run);
    (rate, load.stop().await)
}

/// Cognito calls per second the stand-in saw between `from` and `to`.
pub(crate) fn rate_between(stand_in: &StandIn, from: Instant, to: Instant) -> f64 {
    let seen = stand_in
        .received()
        .iter()
        .filter(|r| r.at >= from && r.at < to)
        .count();
    seen as f64 / (to - from).as_secs_f64()
}

/// Three replicas of the binary on one Redis with `args`, each knowing the
/// fleet's size (3) from their announcements when they limit.
async fn fleet_of_three(
    stand_in: &StandIn,
    redis: &Redis,
    seed: u8,
    args: &[&str],
) -> Vec<Running> {
    let key = key_file(&redis.dir, seed);
    let mut replicas: Vec<Running> = (0..3)
        .map(|_| replica(stand_in, redis, &key, args))
        .collect();
    if args.contains(&"--upstream-rate-limit") {
        until_they_know_the_fleets_size(&mut replicas).await;
    }
    replicas
}

/// Waits (at most 15 s) until every replica of `replicas` counts them all
/// from their announcements.
pub(crate) async fn until_they_know_the_fleets_size(replicas: &mut [Running]) {
    let size = Some(replicas.len() as f64);
    let deadline = Instant::now() + Duration::from_secs(15);
    for replica in replicas.iter_mut() {
        while metric(replica, "cognito_facade_fleet_replicas").await != size {
            assert!(
                Instant::now() < deadline,
                "the replicas never learned the fleet's size"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub(crate) fn addrs(replicas: &[Running]) -> Vec<SocketAddr> {
    replicas.iter().map(|r| r.addr).collect()
}

/// A replica's metric, by series (name and labels as rendered).
pub(crate) async fn metric(replica: &mut Running, series: &str) -> Option<f64> {
    sample(
        &scrape(replica.wait_for_addr("serving metrics")).await,
        series,
    )
}

pub(crate) const LIMIT: f64 = 40.0;

#[tokio::test]
async fn three_replicas_hold_the_fleet_to_its_limit_and_refuse_the_rest_clearly() {
    let stand_in = StandIn::start().await;
    let redis = Redis::start(&[]);
    let mut replicas =
        fleet_of_three(&stand_in, &redis, 21, &["--upstream-rate-limit", "40"]).await;
    let (rate, tally) = rate_under_load(
        &stand_in,
        &addrs(&replicas),
        "limit",
        Duration::from_secs(5),
    )
    .await;
    eprintln!("fleet of 3 at a limit of {LIMIT}/s: {rate:.1} calls/s at the stand-in, {tally:?}");
    assert!(
        (0.7 * LIMIT..=1.15 * LIMIT).contains(&rate),
        "{rate:.1} calls/s at the stand-in, {tally:?}"
    );
    assert!(tally.limited > 0, "{tally:?}");
    assert!(tally.ok > 0, "{tally:?}");
    assert_eq!(tally.throttled, 0, "{tally:?}");
    assert!(tally.other.is_empty(), "{tally:?}");
    let limited = format!(
        "cognito_facade_upstream_rate_limited_total{{region=\"{REGION}\",caller=\"anonymous\"}}"
    );
    let mut refused = 0.0;
    for replica in &mut replicas {
        refused += metric(replica, &limited).await.unwrap_or(0.0);
    }
    assert_eq!(refused, tally.limited as f64);
    let effective =
        format!("cognito_facade_upstream_rate_effective{{region=\"{REGION}\",scope=\"fleet\"}}");
    assert_eq!(metric(&mut replicas[0], &effective).await, Some(LIMIT));
    replicas[1].find_line("the upstream rate limit is limiting calls to Cognito");
}

#[tokio::test]
async fn cognito_throttling_slows_the_whole_fleet_and_it_recovers() {
    let stand_in = StandIn::start().await;
    let redis = Redis::start(&[]);
    // Redis gets 100 ms an operation here, not 20: on CI's two busy cores a
    // slow Redis would send the replicas to their own limiters, which this
    // test is not about (`with_redis_killed_…` is).
    let mut replicas = fleet_of_three(
        &stand_in,
        &redis,
        22,
        &["--upstream-rate-limit", "40", "--redis-timeout", "100ms"],
    )
    .await;
    let load = Load::start(&addrs(&replicas), 24, "throttle").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stand_in.always(Reply::error(
        400,
        "TooManyRequestsException",
        "Rate exceeded",
    ));
    let throttling = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let effective =
        format!("cognito_facade_upstream_rate_effective{{region=\"{REGION}\",scope=\"fleet\"}}");
    let during = metric(&mut replicas[0], &effective).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stand_in.always(Reply::full_success());
    let stopped = Instant::now();
    tokio::time::sleep(Duration::from_secs(7)).await;
    let recovered = Instant::now();
    let tally = load.stop().await;
    let buckets: Vec<usize> = (0..10)
        .map(|i| {
            let from = throttling + Duration::from_millis(250 * i);
            stand_in
                .received()
                .iter()
                .filter(|r| r.at >= from && r.at < from + Duration::from_millis(250))
                .count()
        })
        .collect();
    eprintln!("per 250 ms from the throttling: {buckets:?}");
    let while_throttled = rate_between(&stand_in, throttling, stopped);
    let after = rate_between(&stand_in, recovered - Duration::from_secs(2), recovered);
    eprintln!(
        "throttled: {while_throttled:.1} calls/s (effective {during}), recovered: {after:.1} calls/s, {tally:?}"
    );
    assert!(
        while_throttled < LIMIT / 2.0,
        "{while_throttled:.1} calls/s while Cognito throttled, {tally:?}"
    );
    assert!(
        during < LIMIT / 2.0,
        "effective rate {during} while throttled"
    );
    assert!(
        after >= 0.7 * LIMIT,
        "{after:.1} calls/s 5 s after the throttling stopped, {tally:?}"
    );
    // While throttled, a caller sees Cognito's TOO_MANY_REQUESTS or, when
    // the SDK's retry finds no turn under the lowered rate (its burst never
    // widens), UPSTREAM_RATE_LIMITED: which one is timing.
    assert!(
        tally.throttled + tally.limited > 0 && tally.ok > 0,
        "{tally:?}"
    );
    assert!(tally.other.is_empty(), "{tally:?}");
    let throttles = format!("cognito_facade_upstream_throttles_total{{region=\"{REGION}\"}}");
    assert!(metric(&mut replicas[1], &throttles).await.unwrap_or(0.0) > 0.0);
    assert_eq!(metric(&mut replicas[2], &effective).await, Some(LIMIT));
}

#[tokio::test]
async fn with_redis_killed_under_load_the_fleet_stays_near_its_limit() {
    let stand_in = StandIn::start().await;
    let mut redis = Redis::start(&[]);
    let mut replicas =
        fleet_of_three(&stand_in, &redis, 23, &["--upstream-rate-limit", "40"]).await;
    let load = Load::start(&addrs(&replicas), 24, "killed").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let size = metric(&mut replicas[0], "cognito_facade_fleet_replicas").await;
    assert_eq!(size, Some(3.0), "the fleet's size, announced");
    redis.kill();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rate = rate_between(&stand_in, killed + Duration::from_secs(1), Instant::now());
    let tally = load.stop().await;
    eprintln!("Redis killed: {rate:.1} calls/s at the stand-in, {tally:?}");
    assert!(
        (0.6 * LIMIT..=1.15 * LIMIT).contains(&rate),
        "{rate:.1} calls/s without Redis, {tally:?}"
    );
    assert!(tally.other.is_empty(), "{tally:?}");
    let share =
        format!("cognito_facade_upstream_rate_effective{{region=\"{REGION}\",scope=\"replica\"}}");
    let share = metric(&mut replicas[1], &share).await.unwrap();
    assert!((share - LIMIT / 3.0).abs() < 0.01, "{share}");
}

/// A rolling change of the limit (a replica at 100/s beside one at 40/s,
/// on one Redis) spends at most the larger limit, never the two added up;
/// once both have moved, at most the new one.
#[tokio::test]
async fn a_rolling_change_of_the_limit_spends_one_budget_not_both() {
    let stand_in = StandIn::start().await;
    let redis = Redis::start(&[]);
    let key = key_file(&redis.dir, 24);
    let old = replica(
        &stand_in,
        &redis,
        &key,
        &[
            "--upstream-rate-limit",
            "100",
            "--upstream-queue-timeout",
            "500ms",
        ],
    );
    let new = replica(&stand_in, &redis, &key, &["--upstream-rate-limit", "40"]);
    let mut replicas = vec![old, new];
    until_they_know_the_fleets_size(&mut replicas).await;
    let (rate, tally) = rate_under_load(
        &stand_in,
        &addrs(&replicas),
        "rolling",
        Duration::from_secs(5),
    )
    .await;
    eprintln!("replicas at 100/s and 40/s: {rate:.1} calls/s at the stand-in, {tally:?}");
    assert!(
        (40.0..=115.0).contains(&rate),
        "{rate:.1} calls/s: the two limits were spent side by side, {tally:?}"
    );
    assert!(tally.other.is_empty(), "{tally:?}");
    // The old replica moves to the new limit: the fleet spends at most it.
    drop(replicas.remove(0));
    replicas.push(replica(
        &stand_in,
        &redis,
        &key,
        &["--upstream-rate-limit", "40"],
    ));
    let (rate, tally) = rate_under_load(
        &stand_in,
        &addrs(&replicas),
        "moved",
        Duration::from_secs(4),
    )
    .await;
    eprintln!("both at 40/s: {rate:.1} calls/s at the stand-in, {tally:?}");
    assert!(
        (0.7 * LIMIT..=1.15 * LIMIT).contains(&rate),
        "{rate:.1} calls/s after the change, {tally:?}"
    );
}

/// What a caller sees of a refusal: the message, ErrorInfo's reason and its
/// metadata (sorted).
type Refusal = (String, String, Vec<(String, String)>);

/// 150 calls of one revoked token: one to the first replica, then (once the
/// fleet, if any, remembers it) 149 more spread over all, five at a time.
/// Each is answered as Cognito answered that replica's first (or, with the
/// fleet, the fleet's one call). Returns where each answer came from.
async fn revoked_150_times(replicas: &[SocketAddr], fleet: Option<&Redis>) -> Vec<String> {
    let mut sources = Vec::new();
    // By replica: the status's message and details (ErrorInfo with Cognito's
    // code and request id).
    let mut first: Vec<Option<Refusal>> = vec![None; replicas.len()];
    let mut check = |replica: usize, status: tonic::Status| {
        assert_eq!(status.code(), Code::Unauthenticated);
        let info = status.get_details_error_info().unwrap();
        let mut metadata: Vec<(String, String)> = info.metadata.into_iter().collect();
        metadata.sort();
        let answer = (status.message().to_owned(), info.reason, metadata);
        let expected = match fleet {
            Some(_) => first[0].get_or_insert_with(|| answer.clone()),
            None => first[replica].get_or_insert_with(|| answer.clone()),
        };
        assert_eq!(expected, &answer);
        sources.push(source_of(status.metadata()));
    };
    check(0, revoked_call(replicas[0]).await);
    if let Some(redis) = fleet {
        until_remembered(redis, 1).await;
    }
    for wave in 0..30 {
        let mut calls = JoinSet::new();
        for i in (0..5).filter(|i| wave * 5 + i > 0) {
            let replica = (wave * 5 + i) % replicas.len();
            let addr = replicas[replica];
            calls.spawn(async move { (replica, revoked_call(addr).await) });
        }
        while let Some(joined) = calls.join_next().await {
            let (replica, status) = joined.unwrap();
            check(replica, status);
        }
    }
    assert_eq!(sources.len(), 150);
    sources
}

async fn revoked_call(addr: SocketAddr) -> tonic::Status {
    IdentityProviderServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .get_user_auth_factors(request(TOKEN))
        .await
        .unwrap_err()
}

fn revoked(stand_in: &StandIn) {
    stand_in.always(Reply::Delay(
        Duration::from_millis(20),
        Box::new(Reply::revoked()),
    ));
}

#[tokio::test]
async fn a_revoked_token_sent_150_times_costs_one_call_per_replica_alone() {
    let stand_in = StandIn::start().await;
    revoked(&stand_in);
    let mut replicas: Vec<Running> = (0..3)
        .map(|_| Running::against(&stand_in, &[], &[]))
        .collect();
    let sources = revoked_150_times(&addrs(&replicas), None).await;
    assert!(stand_in.received().len() <= 3, "{sources:?}");
    let remembered = sources.iter().filter(|s| *s == "memory").count();
    assert!(remembered >= 140, "{sources:?}");
    let series =
        "cognito_facade_refusals_remembered_total{reason=\"NOT_AUTHORIZED\",scope=\"replica\"}";
    let mut counted = 0.0;
    for replica in &mut replicas {
        counted += metric(replica, series).await.unwrap_or(0.0);
    }
    assert_eq!(counted, remembered as f64);
}

#[tokio::test]
async fn a_revoked_token_sent_150_times_over_the_fleet_costs_one_call() {
    let stand_in = StandIn::start().await;
    revoked(&stand_in);
    let redis = Redis::start(&[]);
    let replicas = fleet_of_three(&stand_in, &redis, 24, &[]).await;
    let sources = revoked_150_times(&addrs(&replicas), Some(&redis)).await;
    assert_eq!(stand_in.received().len(), 1, "{sources:?}");
    assert!(sources.iter().any(|s| s == "fleet_memory"), "{sources:?}");
    // Remembered under a MAC, sealed, for at most the refusal TTL.
    let keys = redis.cli(&["--scan", "--pattern", "*:m"]);
    let key = keys.lines().next().expect("a remembered refusal");
    let ttl: u64 = redis.cli(&["PTTL", key]).trim().parse().unwrap();
    assert!(ttl > 0 && ttl <= 60_000, "{ttl}");
    let value = redis.cli(&["GET", key]);
    assert!(!value.contains("revoked") && !value.contains("NotAuthorized"));
}

#[tokio::test]
async fn refusal_memory_keeps_only_definitive_refusals_never_past_exp_and_turns_off() {
    let stand_in = StandIn::start().await;
    let running = Running::against(&stand_in, &[], &[]);
    let calls = |token: String, n: usize| {
        let addr = running.addr;
        async move {
            let mut client = IdentityProviderServiceClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
            let mut sources = Vec::new();
            for _ in 0..n {
                let status = client
                    .get_user_auth_factors(request(&token))
                    .await
                    .unwrap_err();
                sources.push(source_of(status.metadata()));
            }
            sources
        }
    };
    // A user who can act (reset the password) is asked about every time.
    stand_in.always(Reply::error(
        400,
        "PasswordResetRequiredException",
        "Password reset required for the user",
    ));
    let sources = calls(format!("{TOKEN}reset"), 4).await;
    assert_eq!(sources, ["cognito"; 4]);
    assert_eq!(stand_in.received().len(), 4);
    // A refusal is not remembered past the token's own exp.
    revoked(&stand_in);
    let expiring = token_expiring_in(2, "soon");
    assert_eq!(calls(expiring.clone(), 2).await, ["cognito", "memory"]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(calls(expiring, 1).await, ["cognito"]);
    // --refusal-ttl 0s: every call asks Cognito.
    let off = Running::against(&stand_in, &["--refusal-ttl", "0s"], &[]);
    let before = stand_in.received().len();
    let mut client = off.client().await;
    for _ in 0..3 {
        let status = client
            .get_user_auth_factors(request(TOKEN))
            .await
            .unwrap_err();
        assert_eq!(source_of(status.metadata()), "cognito");
    }
    assert_eq!(stand_in.received().len(), before + 3);
}

#[tokio::test]
async fn over_the_limit_a_call_waits_its_turn_or_is_refused_at_once_and_retries_count() {
    let stand_in = StandIn::start().await;
    let mut config = test_config(&stand_in.endpoint);
    config.quota.limits = "1".parse().unwrap();
    config.quota.queue_timeout = Duration::from_millis(1500);
    let mut app = spawn_app_with(stand_in, config).await;
    let token = |n: u32| format!("{TOKEN}{n}");
    app.client
        .get_user_auth_factors(request(&token(1)))
        .await
        .unwrap();
    // The next turn is a second away: within the queue timeout, it waits.
    let started = Instant::now();
    app.client
        .get_user_auth_factors(request(&token(2)))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(
        (Duration::from_millis(800)..Duration::from_millis(1400)).contains(&waited),
        "{waited:?}"
    );
    // A deadline shorter than the wait: refused at once, Cognito not called.
    let mut req = request(&token(3));
    req.set_timeout(Duration::from_millis(500));
    let started = Instant::now();
    let status = app.client.get_user_auth_factors(req).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let info = status.get_details_error_info().unwrap();
    assert_eq!(info.reason, "UPSTREAM_RATE_LIMITED");
    let retry = status
        .get_details_retry_info()
        .unwrap()
        .retry_delay
        .unwrap();
    assert!(
        (Duration::from_millis(500)..=Duration::from_secs(1)).contains(&retry),
        "{retry:?}"
    );
    assert_eq!(app.stand_in.received().len(), 2);
    // A retry is an attempt too: after a 5xx, the retry finds no turn.
    tokio::time::sleep(Duration::from_secs(1)).await;
    app.stand_in
        .then([Reply::error(500, "InternalErrorException", "boom")]);
    let mut req = request(&token(4));
    req.set_timeout(Duration::from_millis(500));
    let status = app.client.get_user_auth_factors(req).await.unwrap_err();
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "UPSTREAM_RATE_LIMITED",
        "{status:?}"
    );
    assert_eq!(app.stand_in.received().len(), 3);
    app.shut_down();
    app.stopped().await.unwrap();
}

#[tokio::test]
async fn one_users_throttling_does_not_slow_the_fleet_but_two_tokens_do() {
    let metrics = LocalMetrics::install();
    let stand_in = StandIn::start().await;
    stand_in.always(Reply::error(
        400,
        "TooManyRequestsException",
        "Rate exceeded",
    ));
    let mut config = test_config(&stand_in.endpoint);
    config.quota.limits = "40".parse().unwrap();
    let app = spawn_app_with(stand_in, config).await;
    let rate = || {
        sample(
            &metrics.render(),
            &format!(
                "cognito_facade_upstream_rate_effective{{region=\"{REGION}\",scope=\"replica\"}}"
            ),
        )
    };
    let throttled = |token: String| {
        let mut client = app.client.clone();
        async move {
            let status = client
                .get_user_auth_factors(request(&token))
                .await
                .unwrap_err();
            assert_eq!(
                status.get_details_error_info().unwrap().reason,
                "TOO_MANY_REQUESTS"
            );
        }
    };
    // One user's token, throttled on every attempt (3 a call): that user's
    // own limit, not the account's.
    for _ in 0..3 {
        throttled(format!("{TOKEN}one")).await;
    }
    let throttles = format!("cognito_facade_upstream_throttles_total{{region=\"{REGION}\"}}");
    assert_eq!(sample(&metrics.render(), &throttles), Some(9.0));
    assert_eq!(rate(), Some(LIMIT));
    // Another token throttled within the second: the account's quota. The
    // rate halves (and climbs back a little between attempts).
    throttled(format!("{TOKEN}two")).await;
    assert!(
        rate().is_some_and(|rate| rate < LIMIT * 0.6),
        "{:?}",
        rate()
    );
}

#[tokio::test]
async fn alone_the_limit_is_per_replica_and_start_up_says_so() {
    let stand_in = StandIn::start().await;
    let mut running = Running::against(&stand_in, &["--upstream-rate-limit", "eu-west-1=5"], &[]);
    running.find_line("upstream rate limit per replica");
}
