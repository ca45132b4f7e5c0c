//! Upstream-call economy: single flight for concurrent identical calls, and
//! the opt-in cache.

use std::time::{Duration, Instant};

use tonic::Code;
use tonic_types::StatusExt as _;

use crate::helpers::{
    Reply, StandIn, TOKEN, TestApp, USERNAME, request, spawn_app, spawn_app_with, spawn_call,
    test_config, until_received,
};

/// Starts `n` concurrent calls with `token` and returns their results.
async fn concurrent_calls(
    app: &TestApp,
    token: &str,
    n: usize,
) -> Vec<Result<String, tonic::Status>> {
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let mut client = app.client.clone();
            let token = token.to_owned();
            tokio::spawn(async move {
                client
                    .get_user_auth_factors(request(&token))
                    .await
                    .map(|r| r.into_inner().username)
            })
        })
        .collect();
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await.unwrap());
    }
    results
}

fn slow(reply: Reply) -> Reply {
    Reply::Delay(Duration::from_millis(300), Box::new(reply))
}

#[tokio::test]
async fn concurrent_identical_calls_share_one_upstream_call() {
    let app = spawn_app().await;
    app.stand_in.always(slow(Reply::full_success()));
    let results = concurrent_calls(&app, TOKEN, 20).await;
    assert!(
        results.iter().all(|r| r.as_deref().ok() == Some(USERNAME)),
        "{results:?}"
    );
    assert_eq!(app.stand_in.received().len(), 1);

    // Distinct tokens are distinct calls.
    let other = concurrent_calls(&app, "another.token", 3).await;
    assert!(other.iter().all(Result::is_ok));
    assert_eq!(app.stand_in.received().len(), 2);
}

#[tokio::test]
async fn every_waiter_gets_the_same_error() {
    let app = spawn_app().await;
    app.stand_in
        .always(slow(Reply::error(400, "NotAuthorizedException", "revoked")));
    let results = concurrent_calls(&app, TOKEN, 10).await;
    for result in &results {
        let status = result.as_ref().unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(
            status.get_details_error_info().unwrap().reason,
            "NOT_AUTHORIZED"
        );
    }
    assert_eq!(app.stand_in.received().len(), 1);
}

#[tokio::test]
async fn coalescing_can_be_turned_off() {
    let stand_in = StandIn::start().await;
    let mut config = test_config(&stand_in.endpoint);
    config.economy.coalesce = false;
    stand_in.always(slow(Reply::full_success()));
    let app = spawn_app_with(stand_in, config).await;
    let results = concurrent_calls(&app, TOKEN, 10).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(app.stand_in.received().len(), 10);
}

#[tokio::test]
async fn a_waiters_own_deadline_applies_to_it_alone() {
    let app = spawn_app().await;
    app.stand_in.always(Reply::Delay(
        Duration::from_millis(1500),
        Box::new(Reply::full_success()),
    ));
    let leader = spawn_call(&app, TOKEN);
    until_received(&app.stand_in, 1).await;
    // A 1 s deadline: the server's answer comes 50 ms before it, a margin
    // that holds on a loaded machine (tonic's own timer at the deadline
    // would answer CANCELLED).
    let mut hurried = request(TOKEN);
    hurried.set_timeout(Duration::from_millis(1000));
    let started = Instant::now();
    let status = app
        .client
        .clone()
        .get_user_auth_factors(hurried)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        leader.await.unwrap().unwrap().into_inner().username,
        USERNAME
    );
    assert_eq!(app.stand_in.received().len(), 1);
}

#[tokio::test]
async fn a_leader_out_of_time_leaves_the_call_running_for_the_others() {
    let app = spawn_app().await;
    // A 1 s deadline: the server answers 50 ms before it (its margin is a
    // twentieth of the deadline), enough to beat the caller's own timer on
    // a loaded machine (at 250 ms the margin was 12.5 ms, and a fresh-clone
    // CI run once saw the caller's CANCELLED first).
    app.stand_in.always(Reply::Delay(
        Duration::from_millis(1600),
        Box::new(Reply::full_success()),
    ));
    let mut hurried = request(TOKEN);
    hurried.set_timeout(Duration::from_secs(1));
    let mut client = app.client.clone();
    let leader = tokio::spawn(async move { client.get_user_auth_factors(hurried).await });
    until_received(&app.stand_in, 1).await;
    let patient = spawn_call(&app, TOKEN);
    let status = leader.await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    let answer = patient.await.unwrap().expect("the shared call carries on");
    assert_eq!(answer.into_inner().username, USERNAME);
    assert_eq!(app.stand_in.received().len(), 1);
}

#[tokio::test]
async fn a_cancelled_first_caller_does_not_fail_the_others() {
    let app = spawn_app().await;
    app.stand_in.always(Reply::Delay(
        Duration::from_millis(500),
        Box::new(Reply::full_success()),
    ));
    let first = spawn_call(&app, TOKEN);
    until_received(&app.stand_in, 1).await;
    let second = spawn_call(&app, TOKEN);
    tokio::time::sleep(Duration::from_millis(50)).await;
    first.abort();
    let answer = second.await.unwrap().expect("the shared call carries on");
    assert_eq!(answer.into_inner().username, USERNAME);
    assert_eq!(app.stand_in.received().len(), 1);
}

#[tokio::test]
async fn the_cache_answers_repeats_until_the_ttl_and_never_errors() {
    let stand_in = StandIn::start().await;
    let mut config = test_config(&stand_in.endpoint);
    config.economy.cache_ttl = Some(Duration::from_millis(400));
    let mut app = spawn_app_with(stand_in, config).await;

    app.client
        .get_user_auth_factors(request(TOKEN))
        .await
        .unwrap();
    app.client
        .get_user_auth_factors(request(TOKEN))
        .await
        .unwrap();
    assert_eq!(
        app.stand_in.received().len(),
        1,
        "the repeat came from the cache"
    );
    app.client
        .get_user_auth_factors(request("other.token"))
        .await
        .unwrap();
    assert_eq!(app.stand_in.received().len(), 2);

    // After the TTL the answer is fetched again.
    tokio::time::sleep(Duration::from_millis(450)).await;
    app.client
        .get_user_auth_factors(request(TOKEN))
        .await
        .unwrap();
    assert_eq!(app.stand_in.received().len(), 3);

    // Errors are not cached.
    app.stand_in
        .always(Reply::error(400, "NotAuthorizedException", "revoked"));
    for _ in 0..2 {
        app.client
            .get_user_auth_factors(request("revoked.token"))
            .await
            .unwrap_err();
    }
    assert_eq!(app.stand_in.received().len(), 5);
}

#[tokio::test]
async fn without_a_ttl_nothing_is_cached() {
    let mut app = spawn_app().await;
    for _ in 0..3 {
        app.client
            .get_user_auth_factors(request(TOKEN))
            .await
            .unwrap();
    }
    assert_eq!(app.stand_in.received().len(), 3);
}
