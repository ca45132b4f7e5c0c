//! Behind a real Envoy (`crate::mesh`): Envoy's ext_authz filter asks the
//! facade about each HTTP request, per route, in front of an upstream that
//! echoes the headers it received; and Envoy's own gRPC health check of the
//! facade.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::{
    helpers::{Reply, Running, StandIn},
    mesh::{Echo, Envoy, PASSWORD_ONLY, TOTP, bearer, envoy_binary, get, mesh, tempdir},
};

#[tokio::test]
async fn a_route_requiring_mfa_lets_a_totp_user_through_with_the_factors_and_stops_a_password_only_one()
 {
    let (_app, envoy, echo) = mesh(|_| {}).await;
    let through = get(envoy.listener, "/mfa", &[("authorization", &bearer(TOTP))]).await;
    assert_eq!(through.status, 200, "{through:?}");
    let seen: Value = serde_json::from_str(&through.body).unwrap();
    assert_eq!(
        seen["x-cognito-mfa"],
        "SMS_MFA,SOFTWARE_TOKEN_MFA,EMAIL_OTP"
    );
    assert_eq!(seen["x-cognito-preferred-mfa"], "SOFTWARE_TOKEN_MFA");
    assert_eq!(
        seen["x-cognito-auth-factors"],
        "PASSWORD,WEB_AUTHN,SOFTWARE_TOKEN,EMAIL_OTP,SMS_OTP"
    );
    assert_eq!(seen["authorization"], bearer(TOTP), "kept by default");
    assert!(
        !through.body.contains("alice.example"),
        "the username went upstream: {}",
        through.body
    );
    for path in ["/totp-or-sms", "/passkey", "/"] {
        let through = get(envoy.listener, path, &[("authorization", &bearer(TOTP))]).await;
        assert_eq!(through.status, 200, "{path}: {through:?}");
    }

    let before = echo.seen().len();
    for path in ["/mfa", "/totp-or-sms", "/passkey"] {
        let stopped = get(
            envoy.listener,
            path,
            &[("authorization", &bearer(PASSWORD_ONLY))],
        )
        .await;
        assert_eq!(stopped.status, 403, "{path}: {stopped:?}");
        let body: Value = serde_json::from_str(&stopped.body).unwrap();
        assert!(
            body["error"].as_str().unwrap().ends_with("_required"),
            "{body}"
        );
        assert!(body["any_of"].is_array(), "{body}");
    }
    assert_eq!(
        echo.seen().len(),
        before,
        "the upstream saw a denied request"
    );
    // No requirement: a valid token suffices; what the client claims about
    // its factors never reaches the upstream.
    let open = get(
        envoy.listener,
        "/",
        &[
            ("authorization", &bearer(PASSWORD_ONLY)),
            ("x-cognito-mfa", "SOFTWARE_TOKEN_MFA"),
            ("x-cognito-preferred-mfa", "SOFTWARE_TOKEN_MFA"),
        ],
    )
    .await;
    assert_eq!(open.status, 200, "{open:?}");
    let seen: Value = serde_json::from_str(&open.body).unwrap();
    assert_eq!(seen["x-cognito-mfa"], Value::Null, "{seen}");
    assert_eq!(seen["x-cognito-preferred-mfa"], Value::Null, "{seen}");
    assert_eq!(seen["x-cognito-auth-factors"], "PASSWORD");
}

#[tokio::test]
async fn revoked_forged_and_missing_tokens_get_401_and_reach_nothing() {
    let (_app, envoy, echo) = mesh(|_| {}).await;
    for (token, challenge) in [
        (Some("revoked.token"), r#"Bearer error="invalid_token""#),
        (Some("not a token!"), r#"Bearer error="invalid_token""#),
        (None, "Bearer"),
    ] {
        let header = token.map(bearer);
        let headers: Vec<(&str, &str)> = header
            .iter()
            .map(|value| ("authorization", value.as_str()))
            .collect();
        let denied = get(envoy.listener, "/", &headers).await;
        assert_eq!(denied.status, 401, "{token:?}: {denied:?}");
        assert_eq!(
            denied.header("www-authenticate"),
            Some(challenge),
            "{denied:?}"
        );
        let body: Value = serde_json::from_str(&denied.body).unwrap();
        assert_eq!(body["error"], "unauthenticated");
    }
    assert!(echo.seen().is_empty(), "{:?}", echo.seen());
}

#[tokio::test]
async fn a_cognito_outage_is_envoys_status_on_error_never_a_denial() {
    let (app, envoy, echo) = mesh(|_| {}).await;
    app.stand_in
        .always(Reply::error(500, "InternalErrorException", "down"));
    let started = Instant::now();
    let answer = get(envoy.listener, "/mfa", &[("authorization", &bearer(TOTP))]).await;
    assert_eq!(answer.status, 503, "{answer:?}");
    // The facade's error, not Envoy's 3 s timeout.
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    assert!(echo.seen().is_empty());
}

#[tokio::test]
async fn a_route_configured_wrong_is_denied_500_and_never_allowed() {
    let (_app, envoy, echo) = mesh(|_| {}).await;
    let answer = get(
        envoy.listener,
        "/wrong",
        &[("authorization", &bearer(TOTP))],
    )
    .await;
    assert_eq!(answer.status, 500, "{answer:?}");
    let body: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(
        body,
        json!({"error": "configuration"}),
        "the operator's detail stays in the log"
    );
    assert!(echo.seen().is_empty());
}

#[tokio::test]
async fn fifty_requests_of_one_token_through_envoy_make_one_cognito_call() {
    let (app, envoy, echo) = mesh(|config| {
        config.economy.cache_ttl = Some(Duration::from_secs(60));
    })
    .await;
    app.stand_in.always(Reply::Delay(
        Duration::from_millis(200),
        Box::new(Reply::full_success()),
    ));
    let mut requests = JoinSet::new();
    for _ in 0..50 {
        let listener = envoy.listener;
        requests.spawn(async move {
            get(listener, "/mfa", &[("authorization", &bearer("one.token"))]).await
        });
    }
    while let Some(answer) = requests.join_next().await {
        assert_eq!(answer.unwrap().status, 200);
    }
    assert_eq!(app.stand_in.received().len(), 1, "Cognito calls");
    assert_eq!(echo.seen().len(), 50);
}

#[tokio::test]
async fn envoys_health_check_sees_a_draining_replica_at_once_and_sends_it_nothing_new() {
    // Two replicas of the binary, each with its own stand-in, so each one's
    // Cognito calls (one per Check: no cache) say where Envoy sent requests.
    let (first_cognito, second_cognito) = (StandIn::start().await, StandIn::start().await);
    let first = Running::against(&first_cognito, &["--drain-delay", "5s"], &[]);
    let mut second = Running::against(&second_cognito, &["--drain-delay", "5s"], &[]);
    let metrics = second.wait_for_addr("serving metrics");
    let (echo, echo_addr) = Echo::start().await;
    let envoy = Envoy::start(&[first.addr, second.addr], echo_addr);
    envoy.until_healthy(2).await;
    all_pass(&envoy, "both", 10).await;
    assert!(!first_cognito.received().is_empty() && !second_cognito.received().is_empty());

    first.send_sigterm();
    let signalled = Instant::now();
    let first_addr = first.addr.to_string();
    loop {
        let health = envoy.facade_health();
        if health
            .iter()
            .any(|(addr, healthy)| *addr == first_addr && !healthy)
        {
            break;
        }
        assert!(signalled.elapsed() < Duration::from_secs(5), "{health:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen_after = signalled.elapsed();
    // One health-check interval (500 ms; measured here about 450 ms), plus
    // slack for the check's own round trip and this loop's polling on a
    // loaded machine.
    assert!(seen_after < Duration::from_millis(1500), "{seen_after:?}");

    // Still draining (5 s), still answering; Envoy sends it nothing new.
    let (first_before, second_before) = (
        first_cognito.received().len(),
        second_cognito.received().len(),
    );
    all_pass(&envoy, "draining", 20).await;
    assert_eq!(
        first_cognito.received().len(),
        first_before,
        "sent to the draining replica"
    );
    assert_eq!(second_cognito.received().len(), second_before + 20);
    assert_eq!(echo.seen().len(), 30);
    eprintln!("Envoy saw NOT_SERVING {seen_after:?} after SIGTERM");

    // Checks are in the metrics and the call log line, with their decision.
    let denied = get(envoy.listener, "/mfa", &[]).await;
    assert_eq!(denied.status, 401);
    let scraped = crate::helpers::scrape(metrics).await;
    for series in [
        r#"cognito_facade_ext_authz_decisions_total{decision="allowed"}"#,
        r#"cognito_facade_ext_authz_decisions_total{decision="denied_unauthenticated"} 1"#,
        r#"cognito_facade_rpc_requests_total{method="Check",code="OK",source="cognito",caller="anonymous"}"#,
    ] {
        assert!(
            scraped.contains(series),
            "{series} missing from:\n{scraped}"
        );
    }
    let line = second.find_line(r#""decision":"denied_unauthenticated""#);
    assert!(line.contains(r#""rpc.method":"Check""#), "{line}");
    assert!(
        line.contains(r#""reason":"MISSING_ACCESS_TOKEN""#),
        "{line}"
    );
}

#[tokio::test]
async fn the_operator_may_pass_the_username_upstream_and_drop_the_authorization_header() {
    let (_app, envoy, _echo) = mesh(|config| {
        config.service.ext_authz.username_header = Some("x-user".to_owned());
        config.service.ext_authz.remove_authorization = true;
    })
    .await;
    let through = get(
        envoy.listener,
        "/",
        &[("authorization", &bearer(TOTP)), ("x-user", "mallory")],
    )
    .await;
    assert_eq!(through.status, 200, "{through:?}");
    let seen: Value = serde_json::from_str(&through.body).unwrap();
    assert_eq!(seen["x-user"], "alice.example", "{seen}");
    assert_eq!(seen["authorization"], Value::Null, "{seen}");
}

/// The Envoy configuration in `docs/envoy.md` is one Envoy accepts.
#[test]
fn the_documented_envoy_config_is_one_envoy_accepts() {
    let guide =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/envoy.md")).unwrap();
    let yaml = guide
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a yaml block");
    assert!(yaml.contains("envoy.filters.http.ext_authz"), "{yaml}");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("envoy-docs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _dir = tempdir::Dir(dir.clone());
    let config = dir.join("envoy.yaml");
    std::fs::write(&config, yaml).unwrap();
    let out = Command::new(envoy_binary())
        .args(["--mode", "validate", "--use-dynamic-base-id", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Envoy puts the path in a Check twice: a long URL (within Envoy's own
/// 60 KiB header limit) is checked like any other, never an error that
/// `failure_mode_allow` could turn into an allow.
#[tokio::test]
async fn a_long_url_is_checked_like_any_other() {
    let (_app, envoy, _echo) = mesh(|_| {}).await;
    let path = format!("/?q={}", "a".repeat(45 * 1024));
    let allowed = get(envoy.listener, &path, &[("authorization", &bearer(TOTP))]).await;
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    let denied = get(envoy.listener, &path, &[]).await;
    assert_eq!(denied.status, 401, "{}", denied.body);
}

/// `n` requests through `envoy`'s MFA route, each with a token of its own
/// named after `prefix`, all passed.
async fn all_pass(envoy: &Envoy, prefix: &str, n: usize) {
    for i in 0..n {
        let token = format!("{prefix}.{i}");
        let answer = get(
            envoy.listener,
            "/mfa",
            &[("authorization", &bearer(&token))],
        )
        .await;
        assert_eq!(answer.status, 200, "{answer:?}");
    }
}
