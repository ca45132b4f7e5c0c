//! `--stale-if-error`: a token's kept answer stands in while Cognito is
//! unavailable (every call answered 500, throttled, or the connection
//! refused), marked stale with its age; never for a token not seen or past
//! its `exp`, never over Cognito's definitive refusal, and not at all with
//! the setting off. The real server in process against the stand-in; then
//! replicas of the binary on a real `redis-server`, where one replica's
//! kept answer serves them all.

use std::{net::SocketAddr, time::Duration};

use cognito_facade::proto::{
    GetUserAuthFactorsResponse, identity_provider_service_client::IdentityProviderServiceClient,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinSet,
};
use tonic::{Code, transport::Channel};

use crate::{
    fleet::{Redis, client, key_file, replica, token_expiring_in, until_kept},
    helpers::{Reply, Running, StandIn, TestApp, USERNAME, request, spawn_app_with, test_config},
};

/// The app with `--stale-if-error 10m` (and the cache off).
async fn app_with_grace(grace: Option<Duration>) -> TestApp {
    let stand_in = StandIn::start().await;
    let mut config = test_config(&stand_in.endpoint);
    config.economy.stale_if_error = grace;
    spawn_app_with(stand_in, config).await
}

/// What a call left: the username or the status, the source and the age
/// metadata.
type Seen = (Result<String, Code>, String, Option<u64>);

/// One call to the app.
async fn call(app: &TestApp, token: &str) -> Seen {
    call_with(app.client.clone(), token).await
}

/// One call to a replica.
async fn call_at(addr: SocketAddr, token: &str) -> Seen {
    call_with(client(addr).await, token).await
}

/// One call to a replica, with a deadline.
async fn call_within(addr: SocketAddr, token: &str, timeout: Duration) -> Seen {
    let mut request = request(token);
    request.set_timeout(timeout);
    seen(client(addr).await.get_user_auth_factors(request).await)
}

async fn call_with(mut client: IdentityProviderServiceClient<Channel>, token: &str) -> Seen {
    seen(client.get_user_auth_factors(request(token)).await)
}

fn seen(result: Result<tonic::Response<GetUserAuthFactorsResponse>, tonic::Status>) -> Seen {
    let metadata = match &result {
        Ok(response) => response.metadata().clone(),
        Err(status) => status.metadata().clone(),
    };
    let text = |key: &str| {
        metadata
            .get(key)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let source = text("x-cognito-facade-source").unwrap_or_default();
    let age = text("x-cognito-facade-age-seconds").map(|age| age.parse().unwrap());
    let result = result
        .map(|response| response.into_inner().username)
        .map_err(|status| status.code());
    (result, source, age)
}

/// Cognito down: every call answered 500 `InternalErrorException`.
fn outage(stand_in: &StandIn) {
    stand_in.always(Reply::error(500, "InternalErrorException", "down"));
}

#[tokio::test]
async fn a_token_answered_before_the_outage_is_answered_stale_during_it() {
    let app = app_with_grace(Some(Duration::from_secs(600))).await;
    let token = token_expiring_in(600, "seen");
    assert_eq!(call(&app, &token).await.0, Ok(USERNAME.to_owned()));
    outage(&app.stand_in);
    let before = app.stand_in.received().len();
    let (result, source, age) = call(&app, &token).await;
    assert_eq!(result, Ok(USERNAME.to_owned()));
    assert_eq!(source, "stale");
    assert!(age.is_some_and(|age| age < 5), "{age:?}");
    let stale = app
        .client
        .clone()
        .get_user_auth_factors(request(&token))
        .await
        .unwrap();
    assert!(
        stale.metadata().get("x-amzn-requestid").is_none(),
        "an earlier call's request id"
    );
    // It asked Cognito first (with the SDK's retries), and only then stood in.
    assert!(app.stand_in.received().len() > before);
    // A token never seen fails as without the setting.
    let (result, source, age) = call(&app, &token_expiring_in(600, "never")).await;
    assert_eq!(result, Err(Code::Unavailable));
    assert_eq!((source.as_str(), age), ("cognito", None));
    // Throttling is unavailability too.
    app.stand_in
        .always(Reply::error(400, "TooManyRequestsException", "slow"));
    assert_eq!(call(&app, &token).await.1, "stale");
    // Cognito back: the next call gets its answer, not the kept one.
    app.stand_in.always(Reply::full_success());
    let (result, source, age) = call(&app, &token).await;
    assert_eq!(
        (result, source.as_str(), age),
        (Ok(USERNAME.to_owned()), "cognito", None)
    );
}

/// Held today, kept as a test: Cognito throttling (`TooManyRequestsException`
/// after the SDK's retries: the account's quota is spent) is ridden
/// through with the kept answer, marked stale with its age, as documented.
#[tokio::test]
async fn throttling_by_cognito_is_ridden_through_with_the_kept_answer() {
    let app = app_with_grace(Some(Duration::from_secs(600))).await;
    let token = token_expiring_in(600, "throttled");
    assert_eq!(call(&app, &token).await.0, Ok(USERNAME.to_owned()));
    app.stand_in.always(Reply::error(
        400,
        "TooManyRequestsException",
        "Rate exceeded",
    ));
    let before = app.stand_in.received().len();
    let (result, source, age) = call(&app, &token).await;
    assert_eq!(result, Ok(USERNAME.to_owned()));
    assert_eq!(source, "stale");
    assert!(age.is_some_and(|age| age < 5), "{age:?}");
    // Cognito was asked (with the SDK's retries) before the kept answer
    // stood in.
    assert!(app.stand_in.received().len() > before);
    // A token never seen gets the throttling itself, retryable.
    let (result, _, _) = call(&app, &token_expiring_in(600, "unseen")).await;
    assert_eq!(result, Err(Code::ResourceExhausted));
}

#[tokio::test]
async fn a_definitive_refusal_between_outages_is_returned_and_replaces_the_kept_answer() {
    let app = app_with_grace(Some(Duration::from_secs(600))).await;
    let token = token_expiring_in(600, "revoked");
    assert_eq!(call(&app, &token).await.0, Ok(USERNAME.to_owned()));
    outage(&app.stand_in);
    assert_eq!(call(&app, &token).await.1, "stale");
    // Cognito answers for a moment: the token is revoked.
    app.stand_in
        .always(Reply::error(400, "NotAuthorizedException", "revoked"));
    let (result, source, _) = call(&app, &token).await;
    assert_eq!(
        (result, source.as_str()),
        (Err(Code::Unauthenticated), "cognito")
    );
    outage(&app.stand_in);
    let (result, source, _) = call(&app, &token).await;
    assert_eq!(
        result,
        Err(Code::Unavailable),
        "the revoked token's old answer"
    );
    assert_eq!(source, "cognito");
}

#[tokio::test]
async fn a_token_past_its_exp_is_not_answered_stale() {
    let app = app_with_grace(Some(Duration::from_secs(600))).await;
    // Expires 2 to 3 s from now.
    let token = token_expiring_in(3, "expiring");
    assert_eq!(call(&app, &token).await.0, Ok(USERNAME.to_owned()));
    outage(&app.stand_in);
    assert_eq!(call(&app, &token).await.1, "stale", "kept until its exp");
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(call(&app, &token).await.0, Err(Code::Unavailable));
}

#[tokio::test]
async fn with_the_setting_off_an_outage_fails_every_call() {
    let app = app_with_grace(None).await;
    let token = token_expiring_in(600, "off");
    assert_eq!(call(&app, &token).await.0, Ok(USERNAME.to_owned()));
    outage(&app.stand_in);
    let (result, source, age) = call(&app, &token).await;
    assert_eq!(
        (result, source.as_str(), age),
        (Err(Code::Unavailable), "cognito", None)
    );
}

#[tokio::test]
async fn a_caller_whose_deadline_passes_while_cognito_hangs_gets_the_kept_answer_in_time() {
    let app = app_with_grace(Some(Duration::from_secs(600))).await;
    let token = token_expiring_in(600, "hang");
    assert_eq!(call(&app, &token).await.0, Ok(USERNAME.to_owned()));
    // Cognito takes connections and never answers within the caller's second.
    app.stand_in.always(Reply::Delay(
        Duration::from_secs(10),
        Box::new(Reply::full_success()),
    ));
    let in_time = |token: &str| {
        let mut request = request(token);
        request.set_timeout(Duration::from_secs(1));
        let mut client = app.client.clone();
        async move {
            let started = std::time::Instant::now();
            let result = client.get_user_auth_factors(request).await;
            (result, started.elapsed())
        }
    };
    // Twice: the second caller follows the first one's flight.
    for _ in 0..2 {
        let (result, took) = in_time(&token).await;
        let response = result.expect("the kept answer");
        assert!(took < Duration::from_secs(1), "{took:?}");
        assert_eq!(
            response.metadata().get("x-cognito-facade-source").unwrap(),
            "stale"
        );
        assert!(
            response
                .metadata()
                .get("x-cognito-facade-age-seconds")
                .is_some()
        );
    }
    // A token never seen still meets its deadline.
    let (result, _) = in_time(&token_expiring_in(600, "never-hang")).await;
    assert_eq!(result.unwrap_err().code(), Code::DeadlineExceeded);
}

#[tokio::test]
async fn sixty_concurrent_calls_of_a_kept_token_share_one_failed_flight_and_all_answer_stale() {
    let app = app_with_grace(Some(Duration::from_secs(600))).await;
    let token = token_expiring_in(600, "sixty");
    assert_eq!(call(&app, &token).await.0, Ok(USERNAME.to_owned()));
    // Down, and slow to say so: the calls meet in one flight.
    app.stand_in.always(Reply::Delay(
        Duration::from_millis(300),
        Box::new(Reply::error(500, "InternalErrorException", "down")),
    ));
    let before = app.stand_in.received().len();
    let app = std::sync::Arc::new(app);
    let mut calls = JoinSet::new();
    for _ in 0..60 {
        let (app, token) = (std::sync::Arc::clone(&app), token.clone());
        calls.spawn(async move { call(&app, &token).await });
    }
    while let Some(joined) = calls.join_next().await {
        let (result, source, age) = joined.unwrap();
        assert_eq!(result, Ok(USERNAME.to_owned()));
        assert_eq!(source, "stale");
        assert!(age.is_some());
    }
    // One flight: its attempts (the SDK's three), not sixty calls'.
    let attempts = app.stand_in.received().len() - before;
    assert!((1..=3).contains(&attempts), "{attempts} attempts");
}

/// A gate on loopback in front of the stand-in: open, it forwards; shut,
/// its port refuses connections and those it carried are cut, as when
/// Cognito's endpoint is unreachable.
struct Gate {
    addr: SocketAddr,
    open: watch::Sender<bool>,
}

impl Gate {
    async fn start(to: &StandIn) -> Self {
        let to: SocketAddr = to.endpoint.trim_start_matches("http://").parse().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (open, rx) = watch::channel(true);
        tokio::spawn(gate(listener, addr, to, rx));
        Self { addr, open }
    }

    /// The stand-in behind the gate, as the replicas' Cognito.
    fn in_front_of(&self, stand_in: &StandIn) -> StandIn {
        let mut gated = stand_in.clone();
        gated.endpoint = format!("http://{}", self.addr);
        gated
    }

    fn shut(&self) {
        self.open.send_replace(false);
    }

    fn reopen(&self) {
        self.open.send_replace(true);
    }
}

async fn gate(
    mut listener: TcpListener,
    addr: SocketAddr,
    to: SocketAddr,
    mut open: watch::Receiver<bool>,
) {
    let carried = open.clone();
    loop {
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    if let Ok((inbound, _)) = accepted {
                        tokio::spawn(forward(inbound, to, carried.clone()));
                    }
                }
                _ = open.wait_for(|open| !*open) => break,
            }
        }
        drop(listener);
        if open.wait_for(|open| *open).await.is_err() {
            return;
        }
        listener = TcpListener::bind(addr).await.unwrap();
    }
}

async fn forward(mut inbound: TcpStream, to: SocketAddr, mut open: watch::Receiver<bool>) {
    let Ok(mut outbound) = TcpStream::connect(to).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = open.wait_for(|open| !*open) => {}
    }
}

/// `n` replicas of the binary with `--stale-if-error 10m` and `args`.
fn kept_fleet(stand_in: &StandIn, redis: &Redis, n: usize, args: &[&str]) -> Vec<Running> {
    let key = key_file(&redis.dir, 1);
    let mut all = vec!["--stale-if-error", "10m"];
    all.extend_from_slice(args);
    (0..n)
        .map(|_| replica(stand_in, redis, &key, &all))
        .collect()
}

/// The one kept answer's key in Redis.
fn kept_key(redis: &Redis) -> String {
    let keys = redis.cli(&["--scan", "--pattern", "*:k"]);
    let keys: Vec<&str> = keys.lines().collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    keys[0].to_owned()
}

#[tokio::test]
async fn in_a_fleet_a_token_seen_by_one_replica_is_answered_stale_by_the_others_while_cognito_refuses_connections()
 {
    let stand_in = StandIn::start().await;
    let gate = Gate::start(&stand_in).await;
    let redis = Redis::start(&[]);
    // Fresh for a second (--cache-ttl), kept ten minutes past it, but never
    // past the token's exp, two minutes away.
    let replicas = kept_fleet(
        &gate.in_front_of(&stand_in),
        &redis,
        3,
        &["--cache-ttl", "1s"],
    );
    let token = token_expiring_in(120, "fleet-seen");
    let (result, source, _) = call_at(replicas[0].addr, &token).await;
    assert_eq!(
        (result, source.as_str()),
        (Ok(USERNAME.to_owned()), "cognito")
    );
    until_kept(&redis, 1).await;
    let key = kept_key(&redis);
    let ttl: u64 = redis.cli(&["PTTL", &key]).trim().parse().unwrap();
    assert!(
        (100_000..=120_000).contains(&ttl),
        "kept {ttl} ms: past the token's exp"
    );
    let bytes: u64 = redis
        .cli(&["MEMORY", "USAGE", &key])
        .trim()
        .parse()
        .unwrap();
    eprintln!("a kept answer in Redis: {bytes} bytes");
    assert!(bytes < 1024, "{bytes} bytes");
    // Past its freshness: the fleet cache has forgotten it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    gate.shut();
    for replica in &replicas[1..] {
        let (result, source, age) = call_at(replica.addr, &token).await;
        assert_eq!(
            (result, source.as_str()),
            (Ok(USERNAME.to_owned()), "stale")
        );
        assert!(age.is_some_and(|age| (1..5).contains(&age)), "{age:?}");
    }
    assert!(
        redis.cli(&["--scan", "--pattern", "*:a"]).trim().is_empty(),
        "a stale answer was cached as fresh"
    );
    // A token never seen fails as without the setting.
    let (result, source, age) = call_at(replicas[1].addr, &token_expiring_in(120, "never")).await;
    assert_eq!(
        (result, source.as_str(), age),
        (Err(Code::Unavailable), "cognito", None)
    );
    // Cognito back: the next call is Cognito's answer.
    gate.reopen();
    let (result, source, age) = call_at(replicas[2].addr, &token).await;
    assert_eq!(
        (result, source.as_str(), age),
        (Ok(USERNAME.to_owned()), "cognito", None)
    );
}

#[tokio::test]
async fn in_a_fleet_sixty_calls_of_a_kept_token_during_an_outage_share_one_flight_and_all_answer_stale()
 {
    let stand_in = StandIn::start().await;
    let redis = Redis::start(&[]);
    let replicas = kept_fleet(&stand_in, &redis, 3, &[]);
    let token = token_expiring_in(600, "fleet-sixty");
    assert_eq!(
        call_at(replicas[0].addr, &token).await.0,
        Ok(USERNAME.to_owned())
    );
    until_kept(&redis, 1).await;
    // Connected before the outage, so the calls start together.
    let mut clients = Vec::new();
    for i in 0..60 {
        clients.push(client(replicas[i % 3].addr).await);
    }
    // Down, and slow to say so: the calls meet in one flight.
    stand_in.always(Reply::Delay(
        Duration::from_millis(500),
        Box::new(Reply::error(500, "InternalErrorException", "down")),
    ));
    let before = stand_in.received().len();
    let mut calls = JoinSet::new();
    for client in clients {
        let token = token.clone();
        calls.spawn(async move { call_with(client, &token).await });
    }
    while let Some(joined) = calls.join_next().await {
        let (result, source, age) = joined.unwrap();
        assert_eq!(
            (result, source.as_str()),
            (Ok(USERNAME.to_owned()), "stale")
        );
        assert!(age.is_some());
    }
    // One flight for the fleet: its attempts (the SDK's three), not one
    // flight per replica, nor one per call.
    let attempts = stand_in.received().len() - before;
    assert!((1..=3).contains(&attempts), "{attempts} attempts");
}

#[tokio::test]
async fn in_a_fleet_a_revocation_seen_by_one_replica_replaces_the_answer_every_replica_kept() {
    let stand_in = StandIn::start().await;
    let redis = Redis::start(&[]);
    // Without refusal memory: only the kept answer's replacement stands
    // between a revoked token and its old answer.
    let replicas = kept_fleet(&stand_in, &redis, 2, &["--refusal-ttl", "0"]);
    let tokens = [
        token_expiring_in(600, "fleet-revoked-down"),
        token_expiring_in(600, "fleet-revoked-hung"),
    ];
    // Both replicas answered (and kept) both tokens.
    for token in &tokens {
        for replica in &replicas {
            assert_eq!(
                call_at(replica.addr, token).await.0,
                Ok(USERNAME.to_owned())
            );
        }
    }
    until_kept(&redis, 2).await;
    // Cognito answers for a moment: both tokens are revoked, as the second
    // replica learns.
    stand_in.always(Reply::error(400, "NotAuthorizedException", "revoked"));
    for token in &tokens {
        let (result, source, _) = call_at(replicas[1].addr, token).await;
        assert_eq!(
            (result, source.as_str()),
            (Err(Code::Unauthenticated), "cognito")
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while redis.cli(&["--scan", "--pattern", "*:x"]).lines().count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no kept answer was replaced"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(redis.cli(&["--scan", "--pattern", "*:k"]).trim().is_empty());
    // Cognito hangs: the first replica, which kept the old answer, does not
    // give it to a caller whose deadline passes.
    stand_in.always(Reply::Delay(
        Duration::from_secs(10),
        Box::new(Reply::full_success()),
    ));
    let (result, source, age) =
        call_within(replicas[0].addr, &tokens[1], Duration::from_secs(1)).await;
    assert_eq!(
        (result, source.as_str(), age),
        (Err(Code::DeadlineExceeded), "cognito", None),
        "the revoked token's old answer"
    );
    // Cognito down: nor to any caller.
    stand_in.always(Reply::error(500, "InternalErrorException", "down"));
    let (result, source, age) = call_at(replicas[0].addr, &tokens[0]).await;
    assert_eq!(
        (result, source.as_str(), age),
        (Err(Code::Unavailable), "cognito", None),
        "the revoked token's old answer"
    );
}

#[tokio::test]
async fn in_a_fleet_a_replica_without_the_setting_serves_no_kept_answer() {
    let stand_in = StandIn::start().await;
    let redis = Redis::start(&[]);
    let key = key_file(&redis.dir, 1);
    let keeping = replica(&stand_in, &redis, &key, &["--stale-if-error", "10m"]);
    let plain = replica(&stand_in, &redis, &key, &[]);
    let token = token_expiring_in(600, "fleet-mixed");
    assert_eq!(
        call_at(keeping.addr, &token).await.0,
        Ok(USERNAME.to_owned())
    );
    until_kept(&redis, 1).await;
    stand_in.always(Reply::Delay(
        Duration::from_millis(300),
        Box::new(Reply::error(500, "InternalErrorException", "down")),
    ));
    // Together, so one follows the other's flight, whichever leads.
    let (kept, not_kept) = tokio::join!(call_at(keeping.addr, &token), call_at(plain.addr, &token));
    assert_eq!(
        (kept.0, kept.1.as_str()),
        (Ok(USERNAME.to_owned()), "stale")
    );
    assert_eq!(not_kept.0, Err(Code::Unavailable), "{not_kept:?}");
    assert_ne!(not_kept.1, "stale");
}

#[tokio::test]
async fn the_upstream_rate_limit_refusing_a_call_lets_the_kept_answer_stand_in() {
    let stand_in = StandIn::start().await;
    let mut config = test_config(&stand_in.endpoint);
    config.economy.stale_if_error = Some(Duration::from_secs(600));
    // One call a second, and no wait for a turn: the second call within
    // the second is refused before it reaches Cognito.
    config.quota.limits = "1".parse().unwrap();
    config.quota.queue_timeout = Duration::ZERO;
    let app = spawn_app_with(stand_in, config).await;
    let token = token_expiring_in(600, "limited");
    assert_eq!(call(&app, &token).await.0, Ok(USERNAME.to_owned()));
    let (result, source, age) = call(&app, &token).await;
    assert_eq!(
        (result, source.as_str()),
        (Ok(USERNAME.to_owned()), "stale")
    );
    assert!(age.is_some());
    assert_eq!(
        app.stand_in.received().len(),
        1,
        "the refused call reached Cognito"
    );
    // A token never seen is refused as without the setting.
    let (result, _, _) = call(&app, &token_expiring_in(600, "limited-never")).await;
    assert_eq!(result, Err(Code::ResourceExhausted));
}
