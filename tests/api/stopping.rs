//! Stopping is clean for the fleet (issue 40, §4): a replica sent SIGTERM
//! while it leads a flight finishes it (its result published) before it
//! exits, within the shutdown grace; a flight whose call outlives the grace
//! has its lease released, so a follower on another replica leads at once
//! instead of waiting the lease out; a leader whose own caller goes still
//! finishes its flight. On replicas of the binary and a real
//! `redis-server`, with a real SIGTERM.

use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::{
    bad_day::until_called,
    fleet::{Redis, call, client, key_file, replica},
    helpers::{Reply, StandIn, TOKEN, USERNAME, request},
};

/// The leader's call to Cognito.
const CALL: Duration = Duration::from_millis(1200);
/// Followers on the other replica.
const FOLLOWERS: usize = 10;
/// The bound is the call + 0.5 s; this leaves a loaded CI machine
/// room, far short of the lease the followers waited out before (6.7 s).
const SLACK: Duration = Duration::from_secs(1);

/// A leader sent SIGTERM as its followers on another replica wait: their
/// sources, once all are answered, and how long after the leader's call
/// began the last one was; the leader's exit code.
async fn stop_the_leader(
    stand_in: &StandIn,
    leader_args: &[&str],
    salt: u8,
) -> (Vec<String>, Duration, Option<i32>) {
    stand_in.always(Reply::Delay(CALL, Box::new(Reply::full_success())));
    let redis = Redis::start(&[]);
    let key = key_file(&redis.dir, salt);
    let mut leader = replica(stand_in, &redis, &key, leader_args);
    let follower = replica(stand_in, &redis, &key, &[]);
    let addr = leader.addr;
    // Answered within the grace, or cut off by it.
    let leading = tokio::spawn(async move {
        client(addr)
            .await
            .get_user_auth_factors(request(TOKEN))
            .await
    });
    until_called(stand_in, 1).await;
    let started = Instant::now();
    let mut followers = JoinSet::new();
    for _ in 0..FOLLOWERS {
        let addr = follower.addr;
        followers.spawn(async move {
            let (username, source) = call(addr, TOKEN).await;
            assert_eq!(username, USERNAME);
            (source, started.elapsed())
        });
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    leader.send_sigterm();
    let mut sources = Vec::new();
    let mut last = Duration::ZERO;
    while let Some(answered) = followers.join_next().await {
        let (source, after) = answered.unwrap();
        sources.push(source);
        last = last.max(after);
    }
    let exit = leader.exit_code(Duration::from_secs(15)).await;
    let _ = leading.await.unwrap();
    (sources, last, exit)
}

#[tokio::test]
async fn a_leader_stopped_mid_flight_finishes_it_for_the_followers_elsewhere() {
    let stand_in = StandIn::start().await;
    // No drain delay: the process would exit right after its last call.
    let (sources, last, exit) = stop_the_leader(&stand_in, &["--drain-delay", "0s"], 51).await;
    eprintln!("the followers' last answer came {last:?} after the leader's call began");
    assert_eq!(exit, Some(0));
    assert_eq!(stand_in.received().len(), 1, "{sources:?}");
    // One follows the fleet's flight; the others, its flight on their replica.
    assert!(
        sources.iter().all(|s| s.ends_with("coalesced")),
        "{sources:?}"
    );
    assert!(last <= CALL + SLACK, "{last:?}");
}

#[tokio::test]
async fn a_leader_whose_grace_ends_mid_flight_releases_its_lease_to_a_follower() {
    let stand_in = StandIn::start().await;
    let grace = Duration::from_millis(300);
    let args = ["--drain-delay", "0s", "--shutdown-grace", "300ms"];
    let (sources, last, exit) = stop_the_leader(&stand_in, &args, 52).await;
    eprintln!("the followers' last answer came {last:?} after the leader's call began");
    assert_eq!(exit, Some(0));
    // The abandoned flight and the one follower that led after it.
    assert_eq!(stand_in.received().len(), 2, "{sources:?}");
    assert_eq!(sources.iter().filter(|s| *s == "cognito").count(), 1);
    // SIGTERM came 200 ms in; a follower led once the grace ended.
    let bound = Duration::from_millis(200) + grace + CALL + SLACK;
    assert!(last <= bound, "{last:?}");
}

#[tokio::test]
async fn a_leader_whose_caller_goes_still_finishes_its_flight_for_the_followers() {
    let stand_in = StandIn::start().await;
    stand_in.always(Reply::Delay(CALL, Box::new(Reply::full_success())));
    let redis = Redis::start(&[]);
    let key = key_file(&redis.dir, 53);
    let leader = replica(&stand_in, &redis, &key, &[]);
    let follower = replica(&stand_in, &redis, &key, &[]);
    let addr = leader.addr;
    let leading = tokio::spawn(async move { call(addr, TOKEN).await });
    until_called(&stand_in, 1).await;
    let started = Instant::now();
    let addr = follower.addr;
    let following = tokio::spawn(async move { call(addr, TOKEN).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The leader's caller goes (its stream reset): the call it started goes
    // on for the flight's followers.
    leading.abort();
    let (username, source) = following.await.unwrap();
    let after = started.elapsed();
    eprintln!("the follower was answered {after:?} after the leader's call began");
    assert_eq!(username, USERNAME);
    assert_eq!(source, "fleet_coalesced");
    assert_eq!(stand_in.received().len(), 1);
    assert!(after <= CALL + SLACK, "{after:?}");
}
