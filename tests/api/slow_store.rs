//! The store on a slow day: a Redis far away, or near the call's budget so
//! that some lookups time out and others do not, replicas started while
//! Redis is away, and replicas whose limits differ. Replicas of the
//! real binary on a real `redis-server`, behind a latency proxy written
//! here (Linux `netem` is not in this kernel).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use crate::{
    fleet::{Redis, call, key_file, replica, replica_at},
    helpers::{Running, StandIn, TOKEN},
    quota::{self, LIMIT, Load, addrs, metric, rate_between, until_they_know_the_fleets_size},
};

/// How long the proxy holds the next chunk.
type Delay = Arc<dyn Fn() -> Duration + Send + Sync>;

/// A TCP proxy to `to` that holds every chunk `delay` in each direction
/// (order kept), as a Redis far away would be: on loopback, stopping when
/// dropped with its runtime's tasks.
pub(crate) async fn latency_proxy(to: SocketAddr, delay: Duration) -> SocketAddr {
    proxy(to, Arc::new(move || delay)).await
}

/// [`latency_proxy`] whose delay (ms) may change while it runs.
pub(crate) async fn adjustable_proxy(to: SocketAddr, delay: Arc<AtomicU64>) -> SocketAddr {
    proxy(
        to,
        Arc::new(move || Duration::from_millis(delay.load(Ordering::Relaxed))),
    )
    .await
}

/// [`latency_proxy`] whose delay, once `wavering` is set, alternates:
/// `fast` for 140 ms of every 200, then `slow` for 60 (a store whose round
/// trip straddles a budget).
async fn wavering_proxy(
    to: SocketAddr,
    fast: Duration,
    slow: Duration,
    wavering: Arc<AtomicBool>,
) -> SocketAddr {
    let started = Instant::now();
    let delay = move || {
        let phase = started.elapsed().as_millis() % 200;
        match wavering.load(Ordering::Relaxed) && phase >= 140 {
            true => slow,
            false => fast,
        }
    };
    proxy(to, Arc::new(delay)).await
}

async fn proxy(to: SocketAddr, delay: Delay) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = TcpStream::connect(to).await else {
                continue;
            };
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            tokio::spawn(delayed(in_read, out_write, Arc::clone(&delay)));
            tokio::spawn(delayed(out_read, in_write, Arc::clone(&delay)));
        }
    });
    addr
}

async fn delayed(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Delay,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(4096);
    tokio::spawn(async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut buffer = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buffer).await {
        let at = tokio::time::Instant::now() + delay();
        if n == 0 || tx.send((at, buffer[..n].to_vec())).await.is_err() {
            return;
        }
    }
}

/// The fleet's rate at the stand-in under 24 callers, over seconds 1 to 5.
async fn rate_under_load(stand_in: &StandIn, replicas: &[Running], salt: &str) -> f64 {
    let (rate, tally) =
        quota::rate_under_load(stand_in, &addrs(replicas), salt, Duration::from_secs(5)).await;
    eprintln!("{salt}: {rate:.1} calls/s at the stand-in, {tally:?}");
    assert!(tally.other.is_empty(), "{tally:?}");
    rate
}

// Two workers: the proxy serves while the test waits for a replica's line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_slower_than_the_call_budget_still_splits_the_limit() {
    let stand_in = StandIn::start().await;
    let redis = Redis::start(&[]);
    let far = latency_proxy(
        format!("127.0.0.1:{}", redis.port).parse().unwrap(),
        Duration::from_millis(30),
    )
    .await;
    let key = key_file(&redis.dir, 38);
    let url = format!("redis://{far}");
    // --redis-timeout stays at its 20 ms: every call's lookup times out.
    let mut replicas: Vec<Running> = (0..3)
        .map(|_| replica_at(&stand_in, &url, &key, &["--upstream-rate-limit", "40"]))
        .collect();
    until_they_know_the_fleets_size(&mut replicas).await;
    let rate = rate_under_load(&stand_in, &replicas, "far").await;
    assert!(rate <= 1.15 * LIMIT, "{rate:.1} calls/s");
    assert!(rate >= 0.5 * LIMIT, "{rate:.1} calls/s");
}

// Two workers: the proxy serves while the test waits for the replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_near_the_call_budget_spends_one_limit_not_two() {
    let stand_in = StandIn::start().await;
    let redis = Redis::start(&[]);
    // A round trip of 4 ms, then 50 ms (longer than the replicas' 30 ms
    // --redis-timeout, with room for a loaded machine either way) for 60 ms
    // of every 200: too few lookups time out to open the breaker. A take
    // that timed out may have given a fleet turn, and the replica's own
    // share decides it anew.
    let wavering = Arc::new(AtomicBool::new(false));
    let near = wavering_proxy(
        format!("127.0.0.1:{}", redis.port).parse().unwrap(),
        Duration::from_millis(2),
        Duration::from_millis(25),
        Arc::clone(&wavering),
    )
    .await;
    let key = key_file(&redis.dir, 45);
    let url = format!("redis://{near}");
    let mut replicas: Vec<Running> = (0..3)
        .map(|_| {
            let args = ["--upstream-rate-limit", "40", "--redis-timeout", "30ms"];
            replica_at(&stand_in, &url, &key, &args)
        })
        .collect();
    until_they_know_the_fleets_size(&mut replicas).await;
    // The store wavers once the load is under way: a quiet start, where a
    // few timeouts are a large share, would open the breaker.
    let started = Instant::now();
    let load = Load::start(&addrs(&replicas), 24, "near").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    wavering.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let rate = rate_between(
        &stand_in,
        started + Duration::from_secs(1),
        started + Duration::from_secs(5),
    );
    let tally = load.stop().await;
    eprintln!("near: {rate:.1} calls/s at the stand-in, {tally:?}");
    assert!(tally.other.is_empty(), "{tally:?}");
    let mut timed_out = 0.0;
    let mut answered = 0.0;
    for replica in &mut replicas {
        let ops = "cognito_facade_fleet_redis_ops_total{op=\"quota\",outcome=";
        timed_out += metric(replica, &format!("{ops}\"timeout\"}}"))
            .await
            .unwrap_or(0.0);
        answered += metric(replica, &format!("{ops}\"ok\"}}"))
            .await
            .unwrap_or(0.0);
    }
    eprintln!("near: {timed_out} takes timed out, {answered} answered in time");
    assert!(
        timed_out >= 0.05 * (timed_out + answered) && answered >= 0.05 * (timed_out + answered),
        "not the mixed day this test is for: {timed_out} timed out, {answered} in time"
    );
    assert!(rate <= 1.15 * LIMIT, "{rate:.1} calls/s");
    assert!(rate >= 0.5 * LIMIT, "{rate:.1} calls/s");
}

#[tokio::test]
async fn replicas_started_while_redis_is_away_keep_the_hinted_share() {
    let stand_in = StandIn::start().await;
    let dir = std::env::temp_dir().join(format!("cognito-facade-hint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = key_file(&dir, 39);
    // Nothing listens there.
    let away = {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("redis://{}", held.local_addr().unwrap())
    };
    let args = [
        "--redis-url",
        away.as_str(),
        "--fleet-key-file",
        key.to_str().unwrap(),
        "--upstream-rate-limit",
        "40",
        "--fleet-size-hint",
        "3",
    ];
    let mut replicas: Vec<Running> = (0..3)
        .map(|_| Running::against(&stand_in, &args, &[]))
        .collect();
    for replica in &mut replicas {
        replica.find_line("cannot reach the fleet store yet");
    }
    let rate = rate_under_load(&stand_in, &replicas, "hint").await;
    assert!(rate <= 1.15 * LIMIT, "{rate:.1} calls/s");
    assert!(rate >= 0.5 * LIMIT, "{rate:.1} calls/s");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn replicas_with_different_limits_share_one_state() {
    let stand_in = StandIn::start().await;
    let redis = Redis::start(&[]);
    let key = key_file(&redis.dir, 40);
    let ten = replica(&stand_in, &redis, &key, &["--upstream-rate-limit", "10"]);
    let forty = replica(&stand_in, &redis, &key, &["--upstream-rate-limit", "40"]);
    call(ten.addr, &format!("{TOKEN}ten")).await;
    call(forty.addr, &format!("{TOKEN}forty")).await;
    let limiters = redis.cli(&["--scan", "--pattern", "*:q"]);
    // One hash per region, whatever the limit: a rolling change of the
    // limit spends one budget (quota::a_rolling_change_of_the_limit_*).
    assert_eq!(limiters.lines().count(), 1, "{limiters}");
}
