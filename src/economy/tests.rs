//! How long a revocation lasts: a token's until its `exp`, a named user's
//! only minutes, here and as the fleet tells it.

use std::time::{Duration, Instant, SystemTime};

use super::{Economy, EconomyConfig, Ticket};
use crate::{
    base::expiring::TokenKeyer,
    error::{Error, UpstreamError, UpstreamErrorKind},
    proto::GetUserAuthFactorsResponse,
    token::{
        AccessToken, LONGEST_LIFETIME,
        user::{Subject, USER_REVOCATION, Username},
    },
    upstream::Answer,
};

/// An economy that keeps copies (so it marks revocations).
fn economy() -> std::sync::Arc<Economy> {
    let config = EconomyConfig {
        cache_ttl: Some(Duration::from_secs(60)),
        stale_if_error: Some(Duration::from_secs(3600)),
        ..EconomyConfig::default()
    };
    Economy::new(config, TokenKeyer::random().unwrap())
}

fn user() -> Subject {
    let pool = "eu-west-1_AdminPool1".parse().unwrap();
    Subject::User(pool, Username::parse("zoe").unwrap())
}

fn refused() -> Error {
    Error::Upstream(UpstreamError::new(UpstreamErrorKind::UserNotFound))
}

fn answer() -> Answer {
    Answer {
        response: GetUserAuthFactorsResponse::default(),
        request_id: None,
        fresh_until: None,
        kept_since: None,
        given_at: None,
    }
}

/// The lead of a call for `subject` (expiring at `exp`).
fn lead(
    economy: &std::sync::Arc<Economy>,
    subject: &Subject,
    exp: Option<SystemTime>,
) -> super::Leader {
    match economy.ticket(subject, || exp) {
        Ticket::Lead(leader) => leader,
        _ => panic!("nothing is known of it yet"),
    }
}

/// How long from now the revocation mark of `subject` lasts.
fn marked_for(economy: &Economy, subject: &Subject) -> Duration {
    let (_, until) = economy
        .revoked
        .take(&economy.key(subject), Instant::now())
        .expect("a definitive refusal marks it");
    until.saturating_duration_since(Instant::now())
}

/// Within a second of `expected` (the time the test itself takes).
fn about(actual: Duration, expected: Duration) -> bool {
    actual <= expected && expected - actual < Duration::from_secs(1)
}

#[test]
fn a_named_users_refusal_marks_it_for_minutes_and_a_tokens_until_its_exp() {
    let economy = economy();
    let user = user();
    lead(&economy, &user, None).abandon(Err(refused()));
    let marked = marked_for(&economy, &user);
    assert!(about(marked, USER_REVOCATION), "{marked:?}");

    let exp = SystemTime::now() + Duration::from_secs(3000);
    let token = Subject::Token(AccessToken::for_tests("a.token.text"));
    lead(&economy, &token, Some(exp)).abandon(Err(refused()));
    let marked = marked_for(&economy, &token);
    assert!(about(marked, Duration::from_secs(3000)), "{marked:?}");

    let unknown_exp = Subject::Token(AccessToken::for_tests("another.token.text"));
    lead(&economy, &unknown_exp, None).abandon(Err(refused()));
    let marked = marked_for(&economy, &unknown_exp);
    assert!(about(marked, LONGEST_LIFETIME), "{marked:?}");
}

#[test]
fn a_revocation_the_fleet_tells_of_marks_a_user_for_minutes_and_reaches_its_kept_copy() {
    let economy = economy();
    let user = user();
    let mut leader = lead(&economy, &user, None);
    leader.share_as("user-tag");
    leader.abandon(Ok(answer()));
    assert!(matches!(economy.ticket(&user, || None), Ticket::Cached(_)));

    economy.heard_revoked("user-tag");
    let marked = marked_for(&economy, &user);
    assert!(about(marked, USER_REVOCATION), "{marked:?}");
    assert!(
        economy
            .kept
            .get(&economy.key(&user), Instant::now())
            .is_none()
    );
    assert!(matches!(economy.ticket(&user, || None), Ticket::Lead(_)));
}
