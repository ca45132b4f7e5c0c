//! Knowing the token: pools and regions from the issuer, local verification
//! with keys made here, JWKS handling, and a cache that never outlives a
//! token. (`moto.rs` does the same against a real token issuer.)

use std::time::{Duration, Instant};

use cognito_facade::config::{Config, TokenConfig};
use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::{
    helpers::{
        LocalMetrics, Reply, StandIn, TOKEN, TestApp, USERNAME, request, spawn_app_with,
        test_config,
    },
    jwt::{SigningKey, access_claims, jwks, now, tamper},
};

/// The pool the tests serve, and one they do not.
const POOL: &str = "eu-west-1_TestPool1";
const OTHER_POOL: &str = "eu-west-1_SomeoneElse";

/// The configuration that serves [`POOL`] against the stand-in, with a
/// refresh interval longer than any test.
fn pool_config(stand_in: &StandIn) -> Config {
    let mut config = test_config(&stand_in.endpoint);
    config.tokens = TokenConfig {
        pools: vec![POOL.parse().unwrap()],
        jwks_refresh_interval: Duration::from_secs(3600),
        ..TokenConfig::default()
    };
    config
}

/// A stand-in that publishes `keys` for every pool, and the server serving
/// [`POOL`] with `config` changed by `tweak`.
async fn pool_app(keys: &[&SigningKey], tweak: impl FnOnce(&mut Config)) -> TestApp {
    let stand_in = StandIn::start().await;
    stand_in.serve_jwks(Reply::Success(jwks(keys)));
    let mut config = pool_config(&stand_in);
    tweak(&mut config);
    spawn_app_with(stand_in, config).await
}

/// A stand-in whose key set is unreachable: every JWKS fetch answers 503.
async fn stand_in_without_keys() -> StandIn {
    let stand_in = StandIn::start().await;
    stand_in.serve_jwks(Reply::Raw {
        status: 503,
        content_type: "text/html",
        body: "<html>down</html>".to_owned(),
    });
    stand_in
}

/// A call with `token`: the username, or the code and ErrorInfo reason.
async fn call(app: &TestApp, token: &str) -> Result<String, (Code, String)> {
    app.client
        .clone()
        .get_user_auth_factors(request(token))
        .await
        .map(|r| r.into_inner().username)
        .map_err(|status| {
            let reason = status.get_details_error_info().expect("ErrorInfo").reason;
            (status.code(), reason)
        })
}

/// The `x-cognito-facade-source` of a successful call with `token`.
async fn source_of(app: &TestApp, token: &str) -> String {
    let response = app
        .client
        .clone()
        .get_user_auth_factors(request(token))
        .await
        .unwrap();
    response
        .metadata()
        .get("x-cognito-facade-source")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_valid_token_is_verified_and_answered_by_cognito() {
    let key = SigningKey::generate("k1");
    let app = pool_app(&[&key], |_| {}).await;
    let token = key.sign(&access_claims(POOL, 3600));
    assert_eq!(call(&app, &token).await.as_deref(), Ok(USERNAME));
    let received = app.stand_in.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].body["AccessToken"], token.as_str());
    assert_eq!(
        app.stand_in.jwks_requests(),
        [format!("/{POOL}/.well-known/jwks.json")]
    );
}

#[tokio::test]
async fn each_local_refusal_has_its_code_and_reason_and_costs_no_cognito_call() {
    let key = SigningKey::generate("k1");
    let impostor = SigningKey::generate("k1");
    let stranger = SigningKey::generate("k-unknown");
    let metrics = LocalMetrics::install();
    let app = pool_app(&[&key], |config| {
        config.tokens.client_ids = vec!["testclient1".to_owned(), "another".to_owned()];
    })
    .await;
    let good = key.sign(&access_claims(POOL, 3600));
    let with = |change: &dyn Fn(&mut serde_json::Value)| {
        let mut claims = access_claims(POOL, 3600);
        change(&mut claims);
        key.sign(&claims)
    };
    let unsigned = |alg: &str| {
        let mut token = key.sign_with_header(
            &json!({"alg": alg, "kid": "k1"}),
            &access_claims(POOL, 3600),
        );
        if alg == "none" {
            token.truncate(token.rfind('.').unwrap() + 1);
        }
        token
    };
    let unauthenticated = Code::Unauthenticated;
    let denied = Code::PermissionDenied;
    let cases: Vec<(&str, String, Code, &str)> = vec![
        (
            "not a JWT",
            "opaque-not-a-jwt".to_owned(),
            unauthenticated,
            "TOKEN_MALFORMED",
        ),
        (
            "a payload that is not JSON",
            format!(
                "{}.bm90IGpzb24.c2ln",
                base64::Engine::encode(
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                    r#"{"alg":"RS256"}"#
                )
            ),
            unauthenticated,
            "TOKEN_MALFORMED",
        ),
        (
            "alg none",
            unsigned("none"),
            unauthenticated,
            "TOKEN_ALGORITHM_NOT_ALLOWED",
        ),
        (
            "alg HS256",
            unsigned("HS256"),
            unauthenticated,
            "TOKEN_ALGORITHM_NOT_ALLOWED",
        ),
        (
            "an unknown kid",
            stranger.sign(&access_claims(POOL, 3600)),
            unauthenticated,
            "TOKEN_KEY_UNKNOWN",
        ),
        (
            "another key under a known kid",
            impostor.sign(&access_claims(POOL, 3600)),
            unauthenticated,
            "TOKEN_SIGNATURE_INVALID",
        ),
        (
            "a tampered payload",
            tamper(&good),
            unauthenticated,
            "TOKEN_SIGNATURE_INVALID",
        ),
        (
            "an ID token",
            with(&|c| {
                c["token_use"] = json!("id");
            }),
            unauthenticated,
            "TOKEN_NOT_ACCESS",
        ),
        (
            "an expired token",
            key.sign(&access_claims(POOL, -120)),
            unauthenticated,
            "TOKEN_EXPIRED",
        ),
        (
            "no admin scope",
            with(&|c| {
                c["scope"] = json!("openid email");
            }),
            unauthenticated,
            "TOKEN_SCOPE_MISSING",
        ),
        (
            "another pool",
            key.sign(&access_claims(OTHER_POOL, 3600)),
            denied,
            "USER_POOL_NOT_ALLOWED",
        ),
        (
            "another app client",
            with(&|c| {
                c["client_id"] = json!("intruder");
            }),
            denied,
            "CLIENT_NOT_ALLOWED",
        ),
    ];
    for (what, token, code, reason) in &cases {
        let seen = app.stand_in.received().len();
        let started = Instant::now();
        assert_eq!(
            call(&app, token).await,
            Err((*code, (*reason).to_owned())),
            "{what}"
        );
        assert!(started.elapsed() < Duration::from_secs(2), "{what}");
        assert_eq!(
            app.stand_in.received().len(),
            seen,
            "{what}: Cognito was called"
        );
        assert_eq!(
            call(&app, &good).await.as_deref(),
            Ok(USERNAME),
            "after {what}"
        );
    }
    // Every good call reached Cognito; no refused one did.
    assert_eq!(app.stand_in.received().len(), cases.len());
    let page = metrics.render();
    for (_, _, _, reason) in &cases {
        let series = format!("cognito_facade_token_refusals_total{{reason=\"{reason}\"}}");
        assert!(
            crate::helpers::sample(&page, &series).is_some_and(|n| n >= 1.0),
            "{series}: {page}"
        );
    }
}

#[tokio::test]
async fn verification_can_be_turned_off_and_cognito_decides() {
    let key = SigningKey::generate("k1");
    let impostor = SigningKey::generate("k1");
    let app = pool_app(&[&key], |config| config.tokens.verify = false).await;
    let forged = impostor.sign(&access_claims(POOL, 3600));
    assert_eq!(call(&app, &forged).await.as_deref(), Ok(USERNAME));
    assert_eq!(app.stand_in.received().len(), 1);
    assert!(
        app.stand_in.jwks_requests().is_empty(),
        "no keys are fetched"
    );
    // Routing still needs the issuer of a configured pool.
    let stranger = key.sign(&access_claims(OTHER_POOL, 3600));
    assert_eq!(
        call(&app, &stranger).await,
        Err((Code::PermissionDenied, "USER_POOL_NOT_ALLOWED".to_owned()))
    );
}

#[tokio::test]
async fn a_new_key_is_fetched_once_and_its_tokens_pass() {
    let old = SigningKey::generate("k-old");
    let new = SigningKey::generate("k-new");
    let app = pool_app(&[&old], |_| {}).await;
    assert!(
        call(&app, &old.sign(&access_claims(POOL, 3600)))
            .await
            .is_ok()
    );
    assert_eq!(app.stand_in.jwks_requests().len(), 1);
    // Cognito rotates: the JWKS now holds both keys.
    app.stand_in.serve_jwks(Reply::Success(jwks(&[&old, &new])));
    assert_eq!(
        call(&app, &new.sign(&access_claims(POOL, 3600)))
            .await
            .as_deref(),
        Ok(USERNAME)
    );
    assert_eq!(app.stand_in.jwks_requests().len(), 2);
    assert!(
        call(&app, &old.sign(&access_claims(POOL, 3600)))
            .await
            .is_ok()
    );
    assert_eq!(
        app.stand_in.jwks_requests().len(),
        2,
        "both keys are cached"
    );
}

#[tokio::test]
async fn random_kids_refresh_the_keys_at_most_once_per_interval() {
    let key = SigningKey::generate("k1");
    let app = pool_app(&[&key], |_| {}).await;
    assert!(
        call(&app, &key.sign(&access_claims(POOL, 3600)))
            .await
            .is_ok()
    );
    let claims = access_claims(POOL, 3600);
    let calls: Vec<_> = (0..1000)
        .map(|n| {
            let token = key.sign_with_header(
                &json!({"alg": "RS256", "kid": format!("invented-{n}")}),
                &claims,
            );
            let mut client = app.client.clone();
            tokio::spawn(async move { client.get_user_auth_factors(request(&token)).await })
        })
        .collect();
    for call in calls {
        let status = call.await.unwrap().unwrap_err();
        assert_eq!(
            status.get_details_error_info().unwrap().reason,
            "TOKEN_KEY_UNKNOWN"
        );
    }
    // The fetch at start-up, then one refresh in this interval.
    assert_eq!(app.stand_in.jwks_requests().len(), 2);
    assert_eq!(
        app.stand_in.received().len(),
        1,
        "only the valid call reached Cognito"
    );
}

/// With the key set unreachable, every check that needs no signature still
/// applies: a token of an app client not served, an expired one, one
/// without the admin scope and an ID token are refused here as when
/// verified, without a Cognito call; one that passes them is let through,
/// counted and logged as unverified.
#[tokio::test]
async fn without_keys_every_check_but_the_signature_still_refuses() {
    let key = SigningKey::generate("k1");
    let metrics = LocalMetrics::install();
    let stand_in = stand_in_without_keys().await;
    let mut config = pool_config(&stand_in);
    config.tokens.client_ids = vec![crate::jwt::CLIENT_ID.to_owned()];
    let app = spawn_app_with(stand_in, config).await;
    let with = |change: &dyn Fn(&mut serde_json::Value)| {
        let mut claims = access_claims(POOL, 3600);
        change(&mut claims);
        key.sign(&claims)
    };
    let unauthenticated = Code::Unauthenticated;
    let cases = [
        (
            "another app client",
            with(&|c| c["client_id"] = json!("another-client")),
            Code::PermissionDenied,
            "CLIENT_NOT_ALLOWED",
        ),
        (
            "no client at all",
            with(&|c| {
                c.as_object_mut().unwrap().remove("client_id");
            }),
            Code::PermissionDenied,
            "CLIENT_NOT_ALLOWED",
        ),
        (
            "an expired token",
            key.sign(&access_claims(POOL, -120)),
            unauthenticated,
            "TOKEN_EXPIRED",
        ),
        (
            "no admin scope",
            with(&|c| c["scope"] = json!("openid email")),
            unauthenticated,
            "TOKEN_SCOPE_MISSING",
        ),
        (
            "an ID token",
            with(&|c| c["token_use"] = json!("id")),
            unauthenticated,
            "TOKEN_NOT_ACCESS",
        ),
        (
            "no exp",
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            unauthenticated,
            "TOKEN_MALFORMED",
        ),
    ];
    for (what, token, code, reason) in &cases {
        assert_eq!(
            call(&app, token).await,
            Err((*code, (*reason).to_owned())),
            "{what}"
        );
    }
    assert!(
        app.stand_in.received().is_empty(),
        "a refused token reached Cognito"
    );
    assert!(
        !app.stand_in.jwks_requests().is_empty(),
        "the keys were asked for"
    );
    // A token that passes every claim goes to Cognito, which verifies it.
    assert_eq!(
        call(&app, &key.sign(&access_claims(POOL, 3600)))
            .await
            .as_deref(),
        Ok(USERNAME)
    );
    assert_eq!(app.stand_in.received().len(), 1);
    let unverified = format!("cognito_facade_tokens_unverified_total{{pool=\"{POOL}\"}}");
    assert_eq!(
        crate::helpers::sample(&metrics.render(), &unverified),
        Some(1.0)
    );
}

/// The binary's line for a token let through unverified says so.
#[tokio::test]
async fn a_token_let_through_unverified_is_logged_so() {
    let key = SigningKey::generate("k1");
    let stand_in = stand_in_without_keys().await;
    let mut running = crate::helpers::Running::against(&stand_in, &["--user-pool-id", POOL], &[]);
    let mut client = running.client().await;
    let answer = client
        .get_user_auth_factors(request(&key.sign(&access_claims(POOL, 3600))))
        .await;
    assert!(answer.is_ok(), "{answer:?}");
    let line = running.wait_for_line("call finished");
    assert!(line.contains(r#""verification":"unverified""#), "{line}");
}

#[tokio::test]
async fn without_keys_valid_tokens_are_still_answered_through_cognito() {
    let key = SigningKey::generate("k1");
    let metrics = LocalMetrics::install();
    let stand_in = stand_in_without_keys().await;
    let mut config = pool_config(&stand_in);
    config.tokens.jwks_refresh_interval = Duration::from_millis(100);
    let app = spawn_app_with(stand_in, config).await;
    for _ in 0..3 {
        assert_eq!(
            call(&app, &key.sign(&access_claims(POOL, 3600)))
                .await
                .as_deref(),
            Ok(USERNAME)
        );
    }
    // Cognito is still the authority: what it refuses stays refused.
    app.stand_in.then([Reply::error(
        400,
        "NotAuthorizedException",
        "Invalid Access Token",
    )]);
    let forged = SigningKey::generate("k1").sign(&access_claims(POOL, 3600));
    assert_eq!(
        call(&app, &forged).await,
        Err((Code::Unauthenticated, "NOT_AUTHORIZED".to_owned()))
    );
    assert_eq!(app.stand_in.received().len(), 4);
    let page = metrics.render();
    let unavailable = format!("cognito_facade_jwks_unavailable_total{{pool=\"{POOL}\"}}");
    assert!(
        crate::helpers::sample(&page, &unavailable).is_some_and(|n| n >= 4.0),
        "{page}"
    );
    let failed =
        format!("cognito_facade_jwks_fetches_total{{pool=\"{POOL}\",outcome=\"bad_status\"}}");
    assert!(
        crate::helpers::sample(&page, &failed).is_some_and(|n| n >= 1.0),
        "{page}"
    );

    // The keys come back: the next refresh (rate-limited) finds them.
    app.stand_in.serve_jwks(Reply::Success(jwks(&[&key])));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let forged = SigningKey::generate("k1").sign(&access_claims(POOL, 3600));
    assert_eq!(
        call(&app, &forged).await,
        Err((Code::Unauthenticated, "TOKEN_SIGNATURE_INVALID".to_owned()))
    );
}

#[tokio::test]
async fn calls_before_the_keys_wait_for_one_shared_fetch() {
    let key = SigningKey::generate("k1");
    let stand_in = StandIn::start().await;
    stand_in.serve_jwks(Reply::Delay(
        Duration::from_millis(400),
        Box::new(Reply::Success(jwks(&[&key]))),
    ));
    let app = spawn_app_with(stand_in.clone(), pool_config(&stand_in)).await;
    let token = key.sign(&access_claims(POOL, 3600));
    let calls: Vec<_> = (0..8)
        .map(|n| {
            let mut client = app.client.clone();
            let token = if n == 0 {
                token.clone()
            } else {
                key.sign(&access_claims(POOL, 3600 + n))
            };
            tokio::spawn(async move { client.get_user_auth_factors(request(&token)).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().expect("answered once the keys arrive");
    }
    assert_eq!(app.stand_in.jwks_requests().len(), 1);
}

#[tokio::test]
async fn a_cached_answer_never_outlives_its_token() {
    let key = SigningKey::generate("k1");
    let app = pool_app(&[&key], |config| {
        config.economy.cache_ttl = Some(Duration::from_secs(600));
    })
    .await;
    let claims = access_claims(POOL, 2);
    let token = key.sign(&claims);
    assert_eq!(source_of(&app, &token).await, "cognito");
    assert_eq!(source_of(&app, &token).await, "cache");
    // Past `exp` (within the leeway Cognito would still be asked).
    let exp = claims["exp"].as_i64().unwrap();
    let wait = (exp - now() + 1).max(0) as u64;
    tokio::time::sleep(Duration::from_millis(wait * 1000 + 100)).await;
    assert_eq!(source_of(&app, &token).await, "cognito");
    assert_eq!(app.stand_in.received().len(), 2);
}

#[tokio::test]
async fn in_opaque_mode_the_cache_still_stops_at_the_tokens_exp() {
    let key = SigningKey::generate("k1");
    let stand_in = StandIn::start().await;
    let mut config = test_config(&stand_in.endpoint);
    config.economy.cache_ttl = Some(Duration::from_secs(600));
    let app = spawn_app_with(stand_in, config).await;
    let token = key.sign(&access_claims(POOL, 2));
    assert_eq!(source_of(&app, &token).await, "cognito");
    assert_eq!(source_of(&app, &token).await, "cache");
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(source_of(&app, &token).await, "cognito");
    // A token that is no JWT is cached for the TTL, as before.
    assert_eq!(source_of(&app, TOKEN).await, "cognito");
    assert_eq!(source_of(&app, TOKEN).await, "cache");
}

#[tokio::test]
async fn each_pool_is_served_in_its_own_region() {
    const WEST: &str = "eu-west-1_WestPool";
    const EAST: &str = "us-east-1_EastPool";
    let key = SigningKey::generate("k1");
    let west = StandIn::start().await;
    let east = StandIn::start().await;
    for stand_in in [&west, &east] {
        stand_in.serve_jwks(Reply::Success(jwks(&[&key])));
    }
    let mut config = test_config(&west.endpoint);
    config.upstream.region = None;
    config.upstream.endpoint = None;
    config.upstream.region_endpoints = [
        ("eu-west-1".to_owned(), west.endpoint.clone()),
        ("us-east-1".to_owned(), east.endpoint.clone()),
    ]
    .into();
    config.tokens = TokenConfig {
        pools: vec![WEST.parse().unwrap(), EAST.parse().unwrap()],
        ..TokenConfig::default()
    };
    let app = spawn_app_with(west.clone(), config).await;
    let west_token = key.sign(&access_claims(WEST, 3600));
    let east_token = key.sign(&access_claims(EAST, 3600));
    assert!(call(&app, &east_token).await.is_ok());
    assert!(call(&app, &west_token).await.is_ok());
    assert!(call(&app, &east_token).await.is_ok());
    let tokens = |stand_in: &StandIn| -> Vec<String> {
        stand_in
            .received()
            .iter()
            .map(|r| r.body["AccessToken"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(tokens(&west), [west_token]);
    assert_eq!(tokens(&east), [east_token.clone(), east_token]);
    assert_eq!(
        west.jwks_requests(),
        [format!("/{WEST}/.well-known/jwks.json")]
    );
    assert_eq!(
        east.jwks_requests(),
        [format!("/{EAST}/.well-known/jwks.json")]
    );
}
