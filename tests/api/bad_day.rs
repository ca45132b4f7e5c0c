//! The fleet on a bad day: a leader that gives up, a notice Redis refuses,
//! a lease stretched or written by hand, followers leaving while the breaker
//! is open, readers whose settings differ from the writer's, a key rotation,
//! leaders dying in turn (`slow_store` has a Redis too slow for calls).
//! Replicas of the real binary on a real `redis-server`, on loopback.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::task::JoinSet;
use tonic::Code;

use crate::{
    fleet::token_expiring_in,
    fleet::{
        Redis, call, client, key_file, replica, replica_at, source_of, until_cached,
        until_remembered,
    },
    helpers::{Reply, Running, StandIn, TOKEN, USERNAME, request},
    slow_store::adjustable_proxy,
};

/// Waits (bounded) until the store has no pub/sub channel left.
async fn until_no_channel(redis: &Redis, bound: Duration) {
    let deadline = Instant::now() + bound;
    loop {
        // Flights' channels; not the fleet-wide one every replica keeps.
        let channels = redis.cli(&["PUBSUB", "CHANNELS", "cf:*:c"]);
        if channels.trim().is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "still subscribed: {channels:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) until the stand-in has seen `n` calls.
pub(crate) async fn until_called(stand_in: &StandIn, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while stand_in.received().len() < n {
        assert!(Instant::now() < deadline, "the stand-in was not called");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A token's key names share `cf:{tag}:`; the prefix, from the one key
/// matching `pattern`.
fn token_prefix(redis: &Redis, pattern: &str) -> String {
    let keys = redis.cli(&["--scan", "--pattern", pattern]);
    let key = keys.lines().next().expect("a key");
    key[..key.rfind(':').unwrap() + 1].to_owned()
}

#[tokio::test]
async fn a_leader_that_gives_up_hands_its_flight_to_exactly_one_follower() {
    let stand_in = StandIn::start().await;
    stand_in.then([Reply::Delay(
        Duration::from_millis(600),
        Box::new(Reply::error(500, "InternalErrorException", "try again")),
    )]);
    stand_in.always(Reply::Delay(
        Duration::from_millis(300),
        Box::new(Reply::full_success()),
    ));
    let redis = Redis::start(&[]);
    let key = key_file(&redis.dir, 31);
    let args = ["--max-attempts", "1"];
    let replicas: Vec<Running> = (0..5)
        .map(|_| replica(&stand_in, &redis, &key, &args))
        .collect();
    let leader = replicas[0].addr;
    let leading = tokio::spawn(async move {
        client(leader)
            .await
            .get_user_auth_factors(request(TOKEN))
            .await
    });
    until_called(&stand_in, 1).await;
    // 100 calls in all: the leader's, and 99 over the four other replicas,
    // all following the leader's flight.
    let mut calls = JoinSet::new();
    for i in 0..99 {
        let addr = replicas[1 + i % 4].addr;
        calls.spawn(async move { call(addr, TOKEN).await });
    }
    let failed = leading.await.unwrap().unwrap_err();
    assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
    let mut sources = Vec::new();
    while let Some(joined) = calls.join_next().await {
        let (username, source) = joined.unwrap();
        assert_eq!(username, USERNAME);
        sources.push(source);
    }
    assert_eq!(
        stand_in.received().len(),
        2,
        "the flight that failed and the one flight after it: {sources:?}"
    );
    assert_eq!(sources.iter().filter(|s| *s == "cognito").count(), 1);
    // Every follower left its channel.
    until_no_channel(&redis, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_notice_redis_refuses_still_reaches_the_followers() {
    let stand_in = StandIn::start().await;
    stand_in.always(Reply::Delay(
        Duration::from_millis(500),
        Box::new(Reply::full_success()),
    ));
    let redis = Redis::start(&[]);
    // The leader's user may do everything but publish.
    let set = redis.cli(&[
        "ACL",
        "SETUSER",
        "nopub",
        "on",
        ">pw",
        "~*",
        "&*",
        "+@all",
        "-publish",
        "-spublish",
    ]);
    assert_eq!(set.trim(), "OK");
    let key = key_file(&redis.dir, 32);
    let url = format!("redis://nopub:pw@127.0.0.1:{}", redis.port);
    let leader = replica_at(&stand_in, &url, &key, &[]);
    let follower = replica(&stand_in, &redis, &key, &[]);
    let addr = leader.addr;
    let leading = tokio::spawn(async move { call(addr, TOKEN).await });
    until_called(&stand_in, 1).await;
    let started = Instant::now();
    let (username, source) = call(follower.addr, TOKEN).await;
    let waited = started.elapsed();
    assert_eq!(username, USERNAME);
    assert_eq!(source, "fleet_coalesced");
    assert_eq!(leading.await.unwrap().1, "cognito");
    assert_eq!(stand_in.received().len(), 1);
    // The leader's lease is 5.5 s: the follower found the stored result.
    assert!(waited < Duration::from_millis(1500), "{waited:?}");
}

#[tokio::test]
async fn a_stretched_or_hand_written_lease_holds_no_call_past_its_own_bound() {
    let stand_in = StandIn::start().await;
    stand_in.always(Reply::Delay(
        Duration::from_millis(50),
        Box::new(Reply::full_success()),
    ));
    let redis = Redis::start(&[]);
    let key = key_file(&redis.dir, 33);
    // A lease of 1.5 s (the call timeout and half a second).
    let args = [
        "--call-timeout",
        "1s",
        "--attempt-timeout",
        "1s",
        "--cache-ttl",
        "60s",
    ];
    let writer = replica(&stand_in, &redis, &key, &args);
    let reader = replica(&stand_in, &redis, &key, &args);
    for (what, extra) in [("stretched", &["PX", "600000"][..]), ("no TTL", &[][..])] {
        // The token's key names, from the answer the writer caches.
        let token = format!("{TOKEN}{}", what.replace(' ', "-"));
        redis.cli(&["FLUSHALL"]);
        let _ = call(writer.addr, &token).await;
        until_cached(&redis, 1).await;
        let prefix = token_prefix(&redis, "*:a");
        let lease = format!("{prefix}l");
        redis.cli(&["DEL", &format!("{prefix}a")]);
        let mut set = vec!["SET", lease.as_str(), what];
        set.extend_from_slice(extra);
        assert_eq!(redis.cli(&set).trim(), "OK");
        let addr = reader.addr;
        let started = Instant::now();
        let calling = tokio::spawn(async move { call(addr, &token).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ttl: i64 = redis.cli(&["PTTL", &lease]).trim().parse().unwrap();
        assert!((0..=1500).contains(&ttl), "{what}: the lease's TTL {ttl}");
        let (username, source) = tokio::time::timeout(Duration::from_secs(10), calling)
            .await
            .unwrap_or_else(|_| panic!("{what}: the call was held"))
            .unwrap();
        let waited = started.elapsed();
        assert_eq!(username, USERNAME);
        assert_eq!(source, "cognito", "{what}");
        assert!(waited < Duration::from_millis(2500), "{what}: {waited:?}");
    }
}

#[tokio::test]
async fn followers_that_leave_while_the_breaker_is_open_leave_no_channel() {
    let stand_in = StandIn::start().await;
    stand_in.always(Reply::Delay(
        Duration::from_millis(1500),
        Box::new(Reply::full_success()),
    ));
    let redis = Redis::start(&[]);
    let key = key_file(&redis.dir, 34);
    let replicas: Vec<Running> = (0..3)
        .map(|_| replica(&stand_in, &redis, &key, &[]))
        .collect();
    let leader = replicas[0].addr;
    let mut calls = JoinSet::new();
    calls.spawn(async move { call(leader, TOKEN).await });
    until_called(&stand_in, 1).await;
    for i in 0..20 {
        let addr = replicas[1 + i % 2].addr;
        calls.spawn(async move { call(addr, TOKEN).await });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let subscribed = redis.cli(&["PUBSUB", "NUMSUB"]);
    assert!(
        !redis
            .cli(&["PUBSUB", "CHANNELS", "cf:*:c"])
            .trim()
            .is_empty(),
        "{subscribed}"
    );
    // Frozen: other tokens' lookups time out, the breaker opens, and the
    // followers leave while it is open.
    redis.signal("-STOP");
    for i in 0..20 {
        let addr = replicas[1 + i % 2].addr;
        calls.spawn(async move { call(addr, &format!("{TOKEN}other{i}")).await });
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.signal("-CONT");
    while let Some(joined) = calls.join_next().await {
        assert_eq!(joined.unwrap().0, USERNAME);
    }
    until_no_channel(&redis, Duration::from_secs(8)).await;
}

#[tokio::test]
async fn each_replica_reads_the_fleets_memory_by_its_own_settings() {
    let stand_in = StandIn::start().await;
    let redis = Redis::start(&[]);
    let key = key_file(&redis.dir, 35);
    let writer = replica(&stand_in, &redis, &key, &["--cache-ttl", "60s"]);
    // Refusal memory is on by default here: the fleet is asked for
    // remembered outcomes, but this replica's cache is off.
    let reader = replica(&stand_in, &redis, &key, &[]);
    assert_eq!(call(writer.addr, TOKEN).await.1, "cognito");
    until_cached(&redis, 1).await;
    assert_eq!(call(reader.addr, TOKEN).await.1, "cognito");
    assert_eq!(stand_in.received().len(), 2);

    let revoked = format!("{TOKEN}revoked");
    stand_in.on_token_prefix(&revoked, Reply::revoked());
    let remembers = replica(&stand_in, &redis, &key, &["--refusal-ttl", "60s"]);
    let forgets = replica(&stand_in, &redis, &key, &["--refusal-ttl", "0s"]);
    let refused = |addr: SocketAddr| {
        let revoked = revoked.clone();
        async move {
            let status = client(addr)
                .await
                .get_user_auth_factors(request(&revoked))
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::Unauthenticated);
            source_of(status.metadata())
        }
    };
    assert_eq!(refused(remembers.addr).await, "cognito");
    until_remembered(&redis, 1).await;
    assert_eq!(refused(forgets.addr).await, "cognito");
    assert_eq!(refused(writer.addr).await, "fleet_memory");
    assert_eq!(stand_in.received().len(), 4);
}

#[tokio::test]
async fn a_key_rotation_keeps_one_fleet() {
    let stand_in = StandIn::start().await;
    stand_in.always(Reply::Delay(
        Duration::from_millis(400),
        Box::new(Reply::full_success()),
    ));
    let redis = Redis::start(&[]);
    let old_key = key_file(&redis.dir, 36);
    let new_key = key_file(&redis.dir, 37);
    let old_path = old_key.to_str().unwrap();
    let limit = ["--cache-ttl", "60s", "--upstream-rate-limit", "100"];
    let old = replica(&stand_in, &redis, &old_key, &limit);
    let mut rotating_args = vec![
        "--fleet-previous-key-file",
        old_path,
        "--fleet-naming-key-file",
        old_path,
    ];
    rotating_args.extend(limit);
    let rotating = replica(&stand_in, &redis, &new_key, &rotating_args);
    let mut new_args = vec!["--fleet-naming-key-file", old_path];
    new_args.extend(limit);
    let new = replica(&stand_in, &redis, &new_key, &new_args);

    // One flight for 60 calls over a replica on each side of step 1 (and
    // an answer in each one's own cache).
    let mut calls = JoinSet::new();
    for i in 0..60 {
        let addr = [old.addr, rotating.addr][i % 2];
        calls.spawn(async move { call(addr, TOKEN).await });
    }
    while let Some(joined) = calls.join_next().await {
        assert_eq!(joined.unwrap().0, USERNAME);
    }
    assert_eq!(stand_in.received().len(), 1, "one flight for both keys");
    until_cached(&redis, 1).await;
    // What a step-1 replica caches is a hit on every side.
    let during = format!("{TOKEN}during");
    assert_eq!(call(rotating.addr, &during).await.1, "cognito");
    until_cached(&redis, 2).await;
    for replica in [&old, &new] {
        assert_eq!(call(replica.addr, &during).await.1, "fleet_cache");
    }
    // What the old key caches is a hit for step-1 replicas.
    let before = format!("{TOKEN}before");
    assert_eq!(call(old.addr, &before).await.1, "cognito");
    until_cached(&redis, 3).await;
    assert_eq!(call(rotating.addr, &before).await.1, "fleet_cache");
    // What a step-2 replica caches is a hit for step-1 replicas.
    let after = format!("{TOKEN}after");
    assert_eq!(call(new.addr, &after).await.1, "cognito");
    until_cached(&redis, 4).await;
    assert_eq!(call(rotating.addr, &after).await.1, "fleet_cache");
    // One rate limit for all: one limiter hash, one replica set.
    let limiters = redis.cli(&["--scan", "--pattern", "*:q"]);
    assert_eq!(limiters.lines().count(), 1, "{limiters}");
    assert_eq!(stand_in.received().len(), 4);
}

#[tokio::test]
async fn a_call_without_a_deadline_waits_about_two_leases_however_many_leaders_die() {
    let stand_in = StandIn::start().await;
    let redis = Redis::start(&[]);
    let key = key_file(&redis.dir, 41);
    // A lease of 2.5 s (the call timeout and half a second).
    let args = [
        "--call-timeout",
        "2s",
        "--attempt-timeout",
        "2s",
        "--cache-ttl",
        "60s",
    ];
    let writer = replica(&stand_in, &redis, &key, &args);
    let follower = replica(&stand_in, &redis, &key, &args);
    let _ = call(writer.addr, TOKEN).await;
    until_cached(&redis, 1).await;
    let prefix = token_prefix(&redis, "*:a");
    redis.cli(&["DEL", &format!("{prefix}a")]);
    // Leaders that take the flight and die in turn: a new lease, as a
    // replica writes it, each time the last is about to run out.
    let lease = format!("{prefix}l");
    let port = redis.port;
    let dying = tokio::spawn(async move {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        for leader in 0..8u32 {
            let flight = format!("{leader:032x}");
            let _: () = redis::cmd("SET")
                .arg(&lease)
                .arg(&flight)
                .arg("PX")
                .arg(2500)
                .query_async(&mut conn)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(2300)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(15),
        client(follower.addr)
            .await
            .get_user_auth_factors(request(TOKEN)),
    )
    .await
    .expect("the call was held");
    let waited = started.elapsed();
    dying.abort();
    let status = outcome.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    // Two leases (5 s) and a little, not a lease per dead leader.
    assert!(waited < Duration::from_millis(6000), "{waited:?}");
    assert!(waited > Duration::from_millis(4000), "{waited:?}");
    assert_eq!(stand_in.received().len(), 1, "only the writer's call");
}

/// A call's answer: where it came from and Cognito's request id.
async fn call_with_request_id(addr: SocketAddr, token: &str) -> (String, String) {
    let answer = client(addr)
        .await
        .get_user_auth_factors(request(token))
        .await
        .unwrap();
    let id = answer
        .metadata()
        .get("x-amzn-requestid")
        .and_then(|id| id.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (source_of(answer.metadata()), id)
}

#[tokio::test]
async fn a_flights_result_goes_to_its_own_followers_only_not_to_later_flights() {
    let stand_in = StandIn::start().await;
    stand_in.then([Reply::full_success()]);
    stand_in.always(Reply::Delay(
        Duration::from_millis(800),
        Box::new(Reply::full_success()),
    ));
    let redis = Redis::start(&[]);
    let key = key_file(&redis.dir, 42);
    // No fleet cache: nothing but a flight may hand an answer on.
    let first = replica(&stand_in, &redis, &key, &["--refusal-ttl", "0s"]);
    let second = replica(&stand_in, &redis, &key, &["--refusal-ttl", "0s"]);
    let (source, earlier) = call_with_request_id(first.addr, TOKEN).await;
    assert_eq!(source, "cognito");
    // The flight's result stays in Redis for its followers (2 s).
    let deadline = Instant::now() + Duration::from_secs(1);
    while redis
        .cli(&["--scan", "--pattern", "*:r:*"])
        .trim()
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the flight's result was not stored"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A new flight starts; a call that joins it gets its answer, not the
    // earlier flight's.
    let leading = tokio::spawn(call_with_request_id(second.addr, TOKEN));
    until_called(&stand_in, 2).await;
    let (source, joined) = call_with_request_id(first.addr, TOKEN).await;
    let (_, led) = leading.await.unwrap();
    assert_eq!(source, "fleet_coalesced");
    assert_ne!(joined, earlier, "the earlier flight's answer");
    assert_eq!(joined, led);
    assert_eq!(stand_in.received().len(), 2);
}

// Two workers: the proxy serves while the test waits for a replica's line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_breaker_opened_meanwhile_still_shares_its_answer() {
    let stand_in = StandIn::start().await;
    stand_in.always(Reply::Delay(
        Duration::from_millis(1500),
        Box::new(Reply::full_success()),
    ));
    let redis = Redis::start(&[]);
    let delay = Arc::new(AtomicU64::new(0));
    let proxy = adjustable_proxy(
        format!("127.0.0.1:{}", redis.port).parse().unwrap(),
        Arc::clone(&delay),
    )
    .await;
    let key = key_file(&redis.dir, 43);
    // A budget a loaded machine's round trip keeps within (at the default
    // 20 ms, CI once saw the follower's or the leader's join time out and go
    // alone), that the delayed round trip below (120 ms) still exceeds.
    let args = ["--redis-timeout", "100ms"];
    let mut leader = replica_at(&stand_in, &format!("redis://{proxy}"), &key, &args);
    let follower = replica(&stand_in, &redis, &key, &args);
    let addr = leader.addr;
    let leading = tokio::spawn(async move { call_with_request_id(addr, TOKEN).await });
    until_called(&stand_in, 1).await;
    let addr = follower.addr;
    let following = tokio::spawn(async move { call_with_request_id(addr, TOKEN).await });
    // The leader's Redis becomes slower than its calls' budget: its other
    // calls' lookups time out and open its calls' breaker while it leads.
    delay.store(60, Ordering::Relaxed);
    let mut others = JoinSet::new();
    for i in 0..12 {
        let addr = leader.addr;
        others.spawn(async move { call(addr, &format!("{TOKEN}other{i}")).await });
    }
    let (led_source, led) = leading.await.unwrap();
    let (source, followed) = following.await.unwrap();
    assert_eq!(led_source, "cognito");
    assert_eq!(source, "fleet_coalesced");
    assert_eq!(followed, led, "the leader's answer");
    while let Some(joined) = others.join_next().await {
        assert_eq!(joined.unwrap().0, USERNAME);
    }
    let opened = "cognito_facade_fleet_breaker_open_seconds_total";
    let opened = crate::quota::metric(&mut leader, opened).await;
    assert!(
        opened.unwrap_or(0.0) > 0.0,
        "the leader's breaker never opened"
    );
}

#[tokio::test]
async fn a_flights_answer_is_never_handed_on_past_the_tokens_exp() {
    let stand_in = StandIn::start().await;
    stand_in.always(Reply::Delay(
        Duration::from_millis(2500),
        Box::new(Reply::full_success()),
    ));
    let redis = Redis::start(&[]);
    let key = key_file(&redis.dir, 44);
    let args = ["--attempt-timeout", "4s", "--call-timeout", "4s"];
    let leader = replica(&stand_in, &redis, &key, &args);
    let follower = replica(&stand_in, &redis, &key, &args);
    // Expires 1 to 2 s from now; the leader's answer comes after 2.5 s.
    let token = token_expiring_in(2, "expiring");
    let (addr, lead_token) = (leader.addr, token.clone());
    let leading = tokio::spawn(async move { call(addr, &lead_token).await });
    until_called(&stand_in, 1).await;
    let (username, source) = call(follower.addr, &token).await;
    assert_eq!(username, USERNAME);
    assert_eq!(
        source, "cognito",
        "an answer past exp was handed to a follower"
    );
    assert_eq!(leading.await.unwrap().1, "cognito");
    assert_eq!(stand_in.received().len(), 2);
}
