//! `--stale-if-error`: a token's kept answer stands in while Cognito is
//! unavailable (every call answered 500, or throttled), marked stale with its
//! age; never for a token not seen or past its `exp`, never over Cognito's
//! definitive refusal, and not at all with the setting off. The real server
//! in process, against the stand-in.

use std::time::Duration;

use tokio::task::JoinSet;
use tonic::Code;

use crate::{
    fleet::token_expiring_in,
    helpers::{Reply, StandIn, TestApp, USERNAME, request, spawn_app_with, test_config},
};

/// The app with `--stale-if-error 10m` (and the cache off).
async fn app_with_grace(grace: Option<Duration>) -> TestApp {
    let stand_in = StandIn::start().await;
    let mut config = test_config(&stand_in.endpoint);
    config.economy.stale_if_error = grace;
    spawn_app_with(stand_in, config).await
}

/// One call: the username or the status, the source and the age metadata.
async fn call(app: &TestApp, token: &str) -> (Result<String, Code>, String, Option<u64>) {
    let result = app
        .client
        .clone()
        .get_user_auth_factors(request(token))
        .await;
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
