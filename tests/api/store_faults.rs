//! The fleet store on its bad days (issue 40, §6), on replicas of the
//! binary and real `redis-server`s: a failover (a replica promoted with
//! `REPLICAOF NO ONE`, the old master demoted, so writes answer READONLY)
//! is followed to the new master within 5 s, or, while the address leads
//! only to a replica, the fleet is skipped without flapping; a store at
//! `maxmemory` with `noeviction` (`-OOM`) leaves flights and the rate
//! limit per replica, with no breaker opening.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::net::{TcpListener, TcpStream};

use crate::{
    fleet::{Redis, call, key_file, replica, replica_at, token_expiring_in},
    helpers::{Reply, Running, StandIn, USERNAME},
    quota::metric,
};

/// A TCP proxy whose new connections go to the address in `target` (as a
/// Kubernetes Service or a DNS name does after a failover); connections
/// already open stay where they were.
async fn switchable_proxy(target: Arc<Mutex<SocketAddr>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let to = *target.lock().unwrap();
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    addr
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A master and a replica of it, in sync.
fn master_and_replica() -> (Redis, Redis) {
    let master = Redis::start(&[]);
    let replica = Redis::start(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !replica
        .cli(&["INFO", "replication"])
        .contains("master_link_status:up")
    {
        assert!(Instant::now() < deadline, "the replica never synced");
        std::thread::sleep(Duration::from_millis(20));
    }
    (master, replica)
}

/// `replica` promoted and `master` made its replica, as a failover does.
fn fail_over(master: &Redis, replica: &Redis) {
    assert_eq!(replica.cli(&["REPLICAOF", "NO", "ONE"]).trim(), "OK");
    let port = replica.port.to_string();
    assert_eq!(master.cli(&["REPLICAOF", "127.0.0.1", &port]).trim(), "OK");
}

/// A series of `replica`'s metrics, 0 when absent.
async fn series(replica: &mut Running, name: &str) -> f64 {
    metric(replica, name).await.unwrap_or(0.0)
}

const JOINED: &str = r#"cognito_facade_fleet_redis_ops_total{op="join",outcome="ok"}"#;
const READONLY: &str = r#"cognito_facade_fleet_redis_ops_total{op="join",outcome="readonly"}"#;

/// Calls `replica` with fresh tokens until one of its joins after now
/// works on the store; how long that took (failing past `bound`).
async fn until_it_joins(replica: &mut Running, salt: &str, bound: Duration) -> Duration {
    let started = Instant::now();
    let before = series(replica, JOINED).await;
    for n in 0.. {
        let (username, _) =
            call(replica.addr, &token_expiring_in(600, &format!("{salt}{n}"))).await;
        assert_eq!(username, USERNAME);
        if series(replica, JOINED).await > before {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < bound,
            "no join on the store within {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_failover_the_fleet_reaches_the_new_master_within_five_seconds() {
    let stand_in = StandIn::start().await;
    stand_in.always(Reply::full_success());
    let (old, new) = master_and_replica();
    let target = Arc::new(Mutex::new(local(old.port)));
    let url = format!("redis://{}", switchable_proxy(target.clone()).await);
    let key = key_file(&old.dir, 43);
    let mut a = replica_at(&stand_in, &url, &key, &[]);
    let mut b = replica_at(&stand_in, &url, &key, &[]);
    until_it_joins(&mut a, "before-a", Duration::from_secs(5)).await;
    until_it_joins(&mut b, "before-b", Duration::from_secs(5)).await;

    fail_over(&old, &new);
    *target.lock().unwrap() = local(new.port);
    let took_a = until_it_joins(&mut a, "after-a", Duration::from_secs(5)).await;
    let took_b = until_it_joins(&mut b, "after-b", Duration::from_secs(5)).await;
    eprintln!("the new master reached after {took_a:?} and {took_b:?}");
    for replica in [&mut a, &mut b] {
        assert!(series(replica, READONLY).await >= 1.0);
        assert!(replica.find_line("READONLY").contains("WARN"));
    }
    // The fleet works on the new master: two replicas' calls of one token
    // make one Cognito call.
    stand_in.always(Reply::Delay(
        Duration::from_millis(400),
        Box::new(Reply::full_success()),
    ));
    let before = stand_in.received().len();
    let token = token_expiring_in(600, "shared");
    let (first, second) = tokio::join!(call(a.addr, &token), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        call(b.addr, &token).await
    });
    assert_eq!(
        (first.1.as_str(), second.1.as_str()),
        ("cognito", "fleet_coalesced")
    );
    assert_eq!(stand_in.received().len() - before, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_that_stays_a_replica_is_skipped_without_flapping_until_it_is_a_master() {
    let stand_in = StandIn::start().await;
    stand_in.always(Reply::full_success());
    let (old, new) = master_and_replica();
    let key = key_file(&old.dir, 44);
    let mut a = replica(&stand_in, &old, &key, &[]);
    until_it_joins(&mut a, "before", Duration::from_secs(5)).await;

    // The address still leads to the old master, a replica now.
    fail_over(&old, &new);
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let (username, source) = call(a.addr, &token_expiring_in(600, &format!("r{n}"))).await;
        assert_eq!((username.as_str(), source.as_str()), (USERNAME, "cognito"));
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One READONLY, then every call skips the store, named: no breaker
    // opening and closing on it.
    assert_eq!(series(&mut a, READONLY).await, 1.0);
    let skipped = r#"cognito_facade_fleet_skipped_total{reason="readonly"}"#;
    assert!(
        series(&mut a, skipped).await >= f64::from(n - 1),
        "{n} calls"
    );
    let breaker = "cognito_facade_fleet_breaker_open_seconds_total";
    assert_eq!(series(&mut a, breaker).await, 0.0);

    // The old master is one again: found within 5 s.
    assert_eq!(old.cli(&["REPLICAOF", "NO", "ONE"]).trim(), "OK");
    let took = until_it_joins(&mut a, "after", Duration::from_secs(5)).await;
    eprintln!("the master found again after {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_out_of_memory_leaves_flights_and_the_limit_per_replica_with_no_breaker() {
    let stand_in = StandIn::start().await;
    stand_in.always(Reply::full_success());
    let redis = Redis::start(&[]);
    let key = key_file(&redis.dir, 45);
    let args = ["--upstream-rate-limit", "40", "--fleet-size-hint", "2"];
    let mut a = replica(&stand_in, &redis, &key, &args);
    let mut b = replica(&stand_in, &redis, &key, &args);
    until_it_joins(&mut a, "before", Duration::from_secs(5)).await;

    assert_eq!(
        redis
            .cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
            .trim(),
        "OK"
    );
    assert_eq!(redis.cli(&["CONFIG", "SET", "maxmemory", "1"]).trim(), "OK");
    // 20 calls a second on each, within each replica's share (20/s).
    for n in 0..30 {
        for (replica, name) in [(&a, "a"), (&b, "b")] {
            let token = token_expiring_in(600, &format!("oom-{name}{n}"));
            let (username, source) = call(replica.addr, &token).await;
            assert_eq!((username.as_str(), source.as_str()), (USERNAME, "cognito"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for replica in [&mut a, &mut b] {
        let oom = r#"cognito_facade_fleet_redis_ops_total{op="join",outcome="oom"}"#;
        assert!(series(replica, oom).await >= 30.0);
        let quota = r#"cognito_facade_fleet_redis_ops_total{op="quota",outcome="oom"}"#;
        assert!(series(replica, quota).await >= 1.0);
        let breaker = "cognito_facade_fleet_breaker_open_seconds_total";
        assert_eq!(series(replica, breaker).await, 0.0);
        assert!(replica.find_line("out of memory").contains("OOM"));
    }
    assert_eq!(redis.cli(&["CONFIG", "SET", "maxmemory", "0"]).trim(), "OK");
    until_it_joins(&mut a, "after", Duration::from_secs(2)).await;
}

/// Held today, kept as a test: Redis's connections killed (`CLIENT KILL`,
/// the calls' and the subscriptions') while 30 calls on one replica follow
/// another replica's flight: every call is answered, and each replica
/// calls Cognito at most once.
#[tokio::test(flavor = "multi_thread")]
async fn connections_killed_while_thirty_calls_follow_leave_every_call_answered() {
    let stand_in = StandIn::start().await;
    stand_in.always(Reply::Delay(
        Duration::from_millis(1500),
        Box::new(Reply::full_success()),
    ));
    let redis = Redis::start(&[]);
    let key = key_file(&redis.dir, 46);
    let leader = replica(&stand_in, &redis, &key, &[]);
    let follower = replica(&stand_in, &redis, &key, &[]);
    let token = token_expiring_in(600, "killed");
    let leading = {
        let (addr, token) = (leader.addr, token.clone());
        tokio::spawn(async move { call(addr, &token).await })
    };
    crate::bad_day::until_called(&stand_in, 1).await;
    let mut followers = tokio::task::JoinSet::new();
    for _ in 0..30 {
        let (addr, token) = (follower.addr, token.clone());
        followers.spawn(async move { call(addr, &token).await });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Both replicas' connections, whatever their type (a RESP3 one that
    // subscribed counts as pubsub).
    let killed: u32 = ["normal", "pubsub"]
        .iter()
        .map(|kind| {
            let killed = redis.cli(&["CLIENT", "KILL", "TYPE", kind]);
            killed.trim().parse::<u32>().unwrap()
        })
        .sum();
    assert!(killed >= 2, "{killed} connections killed");
    assert_eq!(leading.await.unwrap().0, USERNAME);
    while let Some(answered) = followers.join_next().await {
        assert_eq!(answered.unwrap().0, USERNAME);
    }
    let calls = stand_in.received().len();
    assert!(calls <= 2, "{calls} Cognito calls: at most one per replica");
}
