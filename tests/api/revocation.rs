//! A revocation reaches every copy (issue 40, §2): once any replica hears
//! Cognito refuse a token definitively, no replica answers it OK from any
//! copy of its old answer: its own cache or kept answer, or the fleet's.
//! Each case is one the failure-mode review measured, on replicas of the
//! binary and a real `redis-server`: the other replica's own kept copy
//! after Redis goes away; a revocation heard while Redis was frozen, then
//! the fleet's kept answer; a caching replica beside one that is not.

use std::time::{Duration, Instant};

use tonic::Code;

use crate::{
    fleet::{Redis, client, key_file, replica, source_of, token_expiring_in, until_kept},
    helpers::{Reply, StandIn, USERNAME, request},
    quota::metric,
};

/// The username or the code, and the source.
async fn call(addr: std::net::SocketAddr, token: &str) -> (Result<String, Code>, String) {
    let mut request = request(token);
    request.set_timeout(Duration::from_secs(3));
    match client(addr).await.get_user_auth_factors(request).await {
        Ok(response) => (
            Ok(response.get_ref().username.clone()),
            source_of(response.metadata()),
        ),
        Err(status) => (Err(status.code()), source_of(status.metadata())),
    }
}

/// Cognito answers 500 to everything.
fn outage(stand_in: &StandIn) {
    stand_in.always(Reply::error(500, "InternalErrorException", "down"));
}

/// Waits (bounded) until `pattern` matches `n` keys.
async fn until_keys(redis: &Redis, pattern: &str, n: usize, bound: Duration) {
    let deadline = Instant::now() + bound;
    loop {
        let found = redis.cli(&["--scan", "--pattern", pattern]).lines().count();
        if found == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{found} keys match {pattern}, not {n}: {}",
            redis.cli(&["--scan"])
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_revocation_heard_by_one_replica_empties_the_others_own_copies_before_redis_goes() {
    let stand_in = StandIn::start().await;
    let mut redis = Redis::start(&[]);
    let key = key_file(&redis.dir, 41);
    // Without refusal memory: only the copies' going stands between the
    // revoked token and its old answer.
    let args = ["--stale-if-error", "10m", "--refusal-ttl", "0"];
    let a = replica(&stand_in, &redis, &key, &args);
    let mut b = replica(&stand_in, &redis, &key, &args);
    let token = token_expiring_in(600, "revoked-b-own");
    let kept = token_expiring_in(600, "kept-b-own");
    // Both answered both, one after the other: each keeps its own copies.
    for token in [&token, &kept] {
        assert_eq!(call(a.addr, token).await.0, Ok(USERNAME.to_owned()));
        assert_eq!(call(b.addr, token).await.0, Ok(USERNAME.to_owned()));
    }
    until_kept(&redis, 2).await;
    stand_in.always(Reply::revoked());
    assert_eq!(call(a.addr, &token).await.0, Err(Code::Unauthenticated));
    // Within a second, the other replica heard.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        metric(&mut b, "cognito_facade_revoked_tokens").await,
        Some(1.0)
    );
    // Redis and Cognito both away: nothing stale for the revoked token.
    redis.kill();
    outage(&stand_in);
    for _ in 0..3 {
        let (result, source) = call(b.addr, &token).await;
        assert_eq!(result, Err(Code::Unavailable), "from {source}");
        assert_ne!(source, "stale");
    }
    // The token not revoked is answered from B's own copy: the others stay.
    let (result, source) = call(b.addr, &kept).await;
    assert_eq!(
        (result, source.as_str()),
        (Ok(USERNAME.to_owned()), "stale")
    );
}

#[tokio::test]
async fn a_revocation_heard_while_redis_was_frozen_is_written_when_it_thaws() {
    let stand_in = StandIn::start().await;
    let redis = Redis::start(&[]);
    let key = key_file(&redis.dir, 42);
    let args = ["--stale-if-error", "10m", "--refusal-ttl", "0"];
    let mut a = replica(&stand_in, &redis, &key, &args);
    let b = replica(&stand_in, &redis, &key, &args);
    let token = token_expiring_in(600, "revoked-frozen");
    // Only A answered it: B's one copy is the fleet's kept answer.
    assert_eq!(call(a.addr, &token).await.0, Ok(USERNAME.to_owned()));
    until_kept(&redis, 1).await;
    // Frozen: other tokens' calls time out on Redis until A's breaker
    // opens, and the revoked token's refusal finds the fleet skipped.
    redis.signal("-STOP");
    for i in 0..8 {
        let other = token_expiring_in(600, &format!("other-{i}"));
        assert_eq!(call(a.addr, &other).await.0, Ok(USERNAME.to_owned()));
    }
    stand_in.always(Reply::revoked());
    assert_eq!(call(a.addr, &token).await.0, Err(Code::Unauthenticated));
    assert_eq!(
        metric(&mut a, "cognito_facade_fleet_revocations_pending").await,
        Some(1.0),
        "the revocation waits for Redis"
    );
    redis.signal("-CONT");
    // Back: written within 5 s, the kept answer gone and the token marked.
    until_keys(&redis, "*:x", 1, Duration::from_secs(5)).await;
    let mark = redis.cli(&["--scan", "--pattern", "*:x"]);
    let kept = format!("{}k", mark.trim().trim_end_matches('x'));
    assert_eq!(redis.cli(&["EXISTS", &kept]).trim(), "0", "{kept}");
    assert_eq!(
        metric(&mut a, "cognito_facade_fleet_revocations_pending").await,
        Some(0.0)
    );
    // Cognito out: B, which never saw the token, has nothing to serve.
    outage(&stand_in);
    for _ in 0..3 {
        let (result, source) = call(b.addr, &token).await;
        assert_eq!(result, Err(Code::Unavailable), "from {source}");
    }
}

#[tokio::test]
async fn a_replica_without_the_cache_told_of_a_revocation_empties_the_caching_ones() {
    let stand_in = StandIn::start().await;
    let redis = Redis::start(&[]);
    let key = key_file(&redis.dir, 43);
    let caching = replica(&stand_in, &redis, &key, &["--cache-ttl", "10m"]);
    let plain = replica(&stand_in, &redis, &key, &["--refusal-ttl", "0"]);
    let token = token_expiring_in(600, "revoked-cached");
    assert_eq!(call(caching.addr, &token).await.0, Ok(USERNAME.to_owned()));
    until_keys(&redis, "*:a", 1, Duration::from_secs(5)).await;
    assert_eq!(call(caching.addr, &token).await.1, "cache");
    stand_in.always(Reply::revoked());
    // The replica that does not cache asks Cognito, and is refused.
    assert_eq!(call(plain.addr, &token).await.0, Err(Code::Unauthenticated));
    until_keys(&redis, "*:a", 0, Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = stand_in.received().len();
    for i in 0..3 {
        let (result, source) = call(caching.addr, &token).await;
        assert_eq!(result, Err(Code::Unauthenticated), "call {i} from {source}");
    }
    // Asked Cognito (once: then its refusal memory answers), never its cache.
    assert_eq!(stand_in.received().len() - before, 1);
}
