//! AdminGetUserAuthFactors: the release binary over real mutual TLS against
//! the stand-in, which checks every request's SigV4 signature with the AWS
//! SDK's own signer. Who may ask, the pools served, the username's rules,
//! the service's own credentials (present, wrong, expired, absent), every
//! row of the error table, single flight alone and across a fleet, and a
//! username that never reaches a log line. The error table and the
//! credentials' sources are in `admin_credentials`.

use std::time::Duration;

use cognito_facade::proto::{
    AdminGetUserAuthFactorsRequest, AuthFactorType, MfaType,
    identity_provider_service_client::IdentityProviderServiceClient,
};
use serde_json::Value;
use tokio::task::JoinSet;
use tonic::{Code, transport::Channel};
use tonic_types::StatusExt as _;

use crate::{
    fleet::{key_file, source_of},
    helpers::{
        ACCESS_KEY_ID, ADMIN_TARGET, Reply, Running, SECRET_ACCESS_KEY, StandIn, USERNAME, sample,
        scrape,
    },
    pki::{Pki, mtls},
    servers::{Redis, scratch_dir},
};

/// The pool served.
pub(crate) const POOL: &str = "eu-west-1_AdminPool1";
/// The caller allowed, and one that is not.
pub(crate) const SUPPORT: &str = "spiffe://cluster.local/ns/support/sa/console";
pub(crate) const BATCH: &str = "spiffe://cluster.local/ns/batch/sa/reindex";
/// The user asked about: personal data, never in a log line.
pub(crate) const ASKED: &str = "zoë.lookup@example.com";
/// The header a trusted proxy names the caller in.
const XFCC: &str = "x-forwarded-client-cert";

/// The stand-in's key pair, as the environment gives it to the default chain.
pub(crate) const CREDENTIALS: [(&str, &str); 2] = [
    ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID),
    ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
];

/// A request for `username` in `pool`.
pub(crate) fn asking(pool: &str, username: &str) -> tonic::Request<AdminGetUserAuthFactorsRequest> {
    tonic::Request::new(AdminGetUserAuthFactorsRequest {
        user_pool_id: pool.to_owned(),
        username: username.to_owned(),
    })
}

/// The same, from `caller` as a trusted proxy names it.
pub(crate) fn forwarded(
    caller: &str,
    username: &str,
) -> tonic::Request<AdminGetUserAuthFactorsRequest> {
    let mut request = asking(POOL, username);
    let xfcc = format!("URI={caller}").parse().unwrap();
    request.metadata_mut().insert(XFCC, xfcc);
    request
}

/// The binary serving [`POOL`] to [`SUPPORT`] (named by a trusted
/// `x-forwarded-client-cert`), with `envs` for its credentials.
pub(crate) fn behind_a_proxy(stand_in: &StandIn, args: &[&str], envs: &[(&str, &str)]) -> Running {
    let mut all = vec![
        "--user-pool-id",
        POOL,
        "--verify-tokens=false",
        "--admin-callers",
        SUPPORT,
        "--trust-forwarded-client-cert",
        "true",
        "--max-attempts",
        "1",
    ];
    all.extend_from_slice(args);
    Running::against(stand_in, &all, envs)
}

/// The status's code and ErrorInfo reason.
pub(crate) fn reason(status: &tonic::Status) -> (Code, String) {
    let info = status
        .get_details_error_info()
        .expect("every error carries ErrorInfo");
    (status.code(), info.reason)
}

/// How many AdminGetUserAuthFactors calls reached the stand-in.
pub(crate) fn admin_calls(stand_in: &StandIn) -> usize {
    stand_in
        .received()
        .iter()
        .filter(|r| r.target.as_deref() == Some(ADMIN_TARGET))
        .count()
}

pub(crate) async fn client(addr: std::net::SocketAddr) -> IdentityProviderServiceClient<Channel> {
    crate::fleet::client(addr).await
}

#[tokio::test]
async fn over_mtls_an_allowed_caller_gets_the_answer_and_no_one_else_reaches_cognito() {
    let pki = Pki::new();
    let (dir, tls) = pki.server_args("admin");
    let stand_in = StandIn::start().await;
    let mut args: Vec<&str> = tls.iter().map(String::as_str).collect();
    args.extend(["--user-pool-id", POOL, "--verify-tokens=false"]);
    args.extend(["--admin-callers", SUPPORT]);
    let mut running = Running::against(&stand_in, &args, &CREDENTIALS);
    let metrics = running.wait_for_addr("serving metrics");
    let support = pki.client(SUPPORT);
    let mut allowed = IdentityProviderServiceClient::new(mtls(running.addr, &pki, &support).await);

    let answer = allowed
        .admin_get_user_auth_factors(asking(POOL, ASKED))
        .await
        .expect("an allowed caller gets the answer");
    assert_eq!(source_of(answer.metadata()), "cognito");
    assert!(answer.metadata().get("x-amzn-requestid").is_some());
    let user = answer.into_inner();
    assert_eq!(user.username, USERNAME);
    assert_eq!(user.preferred_mfa_setting(), MfaType::SoftwareTokenMfa);
    assert!(
        user.configured_user_auth_factors()
            .any(|f| f == AuthFactorType::WebAuthn)
    );
    // Cognito got the pool and the username, signed by the service's key
    // (the stand-in verified the signature).
    let received = stand_in.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].target.as_deref(), Some(ADMIN_TARGET));
    assert_eq!(received[0].body["UserPoolId"], POOL);
    assert_eq!(received[0].body["Username"], ASKED);
    let authorization = received[0].authorization.as_deref().unwrap();
    assert!(
        authorization.starts_with(&format!("AWS4-HMAC-SHA256 Credential={ACCESS_KEY_ID}/"))
            && authorization.contains("/eu-west-1/cognito-idp/aws4_request"),
        "{authorization}"
    );

    // Refused here, none of them reaching Cognito: a caller not listed, a
    // pool not served, a username Cognito would refuse.
    let batch = pki.client(BATCH);
    let mut other = IdentityProviderServiceClient::new(mtls(running.addr, &pki, &batch).await);
    let status = other
        .admin_get_user_auth_factors(asking(POOL, ASKED))
        .await
        .unwrap_err();
    assert_eq!(
        reason(&status),
        (Code::PermissionDenied, "CALLER_NOT_ALLOWED".into())
    );
    assert_eq!(source_of(status.metadata()), "local");
    for pool in ["eu-west-1_OtherPool", "not a pool", ""] {
        let status = allowed
            .admin_get_user_auth_factors(asking(pool, ASKED))
            .await
            .unwrap_err();
        assert_eq!(
            reason(&status),
            (Code::PermissionDenied, "USER_POOL_NOT_ALLOWED".into()),
            "{pool:?}"
        );
    }
    for bad in ["", "zoë lookup", "tab\there", &"x".repeat(129)] {
        let status = allowed
            .admin_get_user_auth_factors(asking(POOL, bad))
            .await
            .unwrap_err();
        assert_eq!(
            reason(&status),
            (Code::InvalidArgument, "INVALID_USERNAME".into())
        );
        let violations = status.get_details_bad_request().unwrap().field_violations;
        assert_eq!(violations[0].field, "username");
        assert!(bad.is_empty() || !status.message().contains(bad));
    }
    assert_eq!(
        stand_in.received().len(),
        1,
        "a refused call reached Cognito"
    );

    // The method label, and the caller's, in the RPC metrics.
    let page = scrape(metrics).await;
    let series = r#"cognito_facade_rpc_requests_total{method="AdminGetUserAuthFactors",code="OK",source="cognito",caller="other"}"#;
    assert_eq!(sample(&page, series), Some(1.0), "{page}");
    assert_eq!(running.terminate().await, Some(0));
    let logs = running.logs();
    let calls: Vec<Value> = logs
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["fields"]["rpc.method"] == "AdminGetUserAuthFactors")
        .collect();
    assert_eq!(calls.len(), 9, "{logs:#?}");
    assert_eq!(calls[0]["fields"]["caller"], SUPPORT);
    assert_eq!(calls[0]["fields"]["pool_id"], POOL);
    assert_eq!(calls[1]["fields"]["caller"], BATCH);
    for line in &logs {
        assert!(!line.contains(ASKED) && !line.contains(USERNAME), "{line}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A certificate always wins over a forwarded header, even one that names
/// nobody: with mTLS, a trusted `x-forwarded-client-cert` and admin callers
/// all on, a client whose certificate names no one, or someone else, cannot
/// take an admin caller's name from the header.
#[tokio::test]
async fn with_mtls_the_certificate_wins_over_a_forwarded_header_even_one_that_names_nobody() {
    let pki = Pki::new();
    let (dir, tls) = pki.server_args("admin-trust");
    let stand_in = StandIn::start().await;
    let mut args: Vec<&str> = tls.iter().map(String::as_str).collect();
    args.extend(["--user-pool-id", POOL, "--verify-tokens=false"]);
    args.extend(["--admin-callers", SUPPORT]);
    args.extend(["--trust-forwarded-client-cert", "true"]);
    let mut running = Running::against(&stand_in, &args, &CREDENTIALS);

    for leaf in [pki.nameless(), pki.client(BATCH)] {
        let mut client = IdentityProviderServiceClient::new(mtls(running.addr, &pki, &leaf).await);
        let status = client
            .admin_get_user_auth_factors(forwarded(SUPPORT, ASKED))
            .await
            .unwrap_err();
        assert_eq!(
            reason(&status),
            (Code::PermissionDenied, "CALLER_NOT_ALLOWED".into())
        );
    }
    assert_eq!(admin_calls(&stand_in), 0, "a borrowed name reached Cognito");
    // And the other way round: the allowed certificate is not demoted by a
    // header naming someone else.
    let support = pki.client(SUPPORT);
    let mut allowed = IdentityProviderServiceClient::new(mtls(running.addr, &pki, &support).await);
    allowed
        .admin_get_user_auth_factors(forwarded(BATCH, ASKED))
        .await
        .expect("the certificate names an allowed caller");
    assert_eq!(admin_calls(&stand_in), 1);

    assert_eq!(running.terminate().await, Some(0));
    let callers: Vec<String> = running
        .logs()
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["fields"]["rpc.method"] == "AdminGetUserAuthFactors")
        .map(|line| line["fields"]["caller"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(callers, ["other", BATCH, SUPPORT]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// 50 concurrent lookups of one user, over `replicas`; where each answer
/// came from.
async fn fifty_lookups_of_one_user(replicas: &[&Running]) -> Vec<String> {
    let mut lookups = JoinSet::new();
    for n in 0..50 {
        let addr = replicas[n % replicas.len()].addr;
        lookups.spawn(async move {
            let answer = client(addr)
                .await
                .admin_get_user_auth_factors(forwarded(SUPPORT, ASKED))
                .await
                .unwrap();
            assert_eq!(answer.get_ref().username, USERNAME);
            source_of(answer.metadata())
        });
    }
    lookups.join_all().await
}

#[tokio::test]
async fn fifty_concurrent_lookups_of_one_user_make_one_cognito_call() {
    let stand_in = StandIn::start().await;
    stand_in.always(Reply::Delay(
        Duration::from_millis(300),
        Box::new(Reply::full_success()),
    ));
    let mut running = behind_a_proxy(&stand_in, &[], &CREDENTIALS);
    let sources = fifty_lookups_of_one_user(&[&running]).await;
    assert_eq!(admin_calls(&stand_in), 1);
    assert_eq!(sources.iter().filter(|s| *s == "cognito").count(), 1);
    assert_eq!(sources.iter().filter(|s| *s == "coalesced").count(), 49);
    // Another user is another flight.
    client(running.addr)
        .await
        .admin_get_user_auth_factors(forwarded(SUPPORT, "someone.else"))
        .await
        .unwrap();
    assert_eq!(admin_calls(&stand_in), 2);
    assert_eq!(running.terminate().await, Some(0));
}

#[tokio::test]
async fn across_two_replicas_on_redis_one_user_is_one_cognito_call_then_cached() {
    let redis = Redis::start(&[]);
    let key = key_file(&scratch_dir("admin-fleet"), 7);
    let stand_in = StandIn::start().await;
    stand_in.always(Reply::Delay(
        Duration::from_millis(300),
        Box::new(Reply::full_success()),
    ));
    let key_path = key.to_str().unwrap();
    let url = redis.url();
    let fleet = [
        "--redis-url",
        &url,
        "--fleet-key-file",
        key_path,
        "--cache-ttl",
        "30s",
    ];
    let mut a = behind_a_proxy(&stand_in, &fleet, &CREDENTIALS);
    let mut b = behind_a_proxy(&stand_in, &fleet, &CREDENTIALS);
    a.find_line("connected to the fleet store");
    b.find_line("connected to the fleet store");
    let sources = fifty_lookups_of_one_user(&[&a, &b]).await;
    assert_eq!(admin_calls(&stand_in), 1, "{sources:?}");
    assert!(
        sources.iter().any(|s| s == "fleet_coalesced"),
        "{sources:?}"
    );
    // Named in a key space of its own, by the naming key: neither the pool
    // nor the username is readable in Redis.
    let keys = redis.cli(&["--scan", "--pattern", "*"]);
    assert!(keys.lines().any(|k| k.starts_with("cf:u:{")), "{keys}");
    assert!(!keys.contains("zo") && !keys.contains(POOL), "{keys}");
    // The fleet's cache answers a replica that never asked.
    let mut c = behind_a_proxy(&stand_in, &fleet, &CREDENTIALS);
    c.find_line("connected to the fleet store");
    let answer = client(c.addr)
        .await
        .admin_get_user_auth_factors(forwarded(SUPPORT, ASKED))
        .await
        .unwrap();
    assert_eq!(source_of(answer.metadata()), "fleet_cache");
    assert_eq!(admin_calls(&stand_in), 1);
    for replica in [&mut a, &mut b, &mut c] {
        assert_eq!(replica.terminate().await, Some(0));
    }
}

#[tokio::test]
async fn at_trace_level_no_line_holds_the_username_or_the_session_token() {
    let stand_in = StandIn::start().await;
    let session = "session-token-SECRET";
    let mut running = behind_a_proxy(
        &stand_in,
        &[],
        &[
            CREDENTIALS[0],
            CREDENTIALS[1],
            ("AWS_SESSION_TOKEN", session),
            ("RUST_LOG", "trace"),
        ],
    );
    let mut client = client(running.addr).await;
    client
        .admin_get_user_auth_factors(forwarded(SUPPORT, ASKED))
        .await
        .unwrap();
    stand_in.then([Reply::error(
        400,
        "UserNotFoundException",
        "User does not exist.",
    )]);
    client
        .admin_get_user_auth_factors(forwarded(SUPPORT, "zoë.gone@example.com"))
        .await
        .unwrap_err();
    client
        .admin_get_user_auth_factors(forwarded(SUPPORT, "zoë bad"))
        .await
        .unwrap_err();
    assert_eq!(running.terminate().await, Some(0));
    let logs = running.logs();
    assert!(logs.len() > 20, "trace logs: {}", logs.len());
    for line in logs {
        for secret in ["zoë", "zo\\u00eb", USERNAME, session, SECRET_ACCESS_KEY] {
            assert!(!line.contains(secret), "{secret} in {line}");
        }
    }
}

#[tokio::test]
async fn the_cache_stale_answers_and_the_rate_limit_serve_a_named_user_as_a_token() {
    let stand_in = StandIn::start().await;
    // The cache: --cache-ttl is the whole bound of a user's answer.
    let mut cached = behind_a_proxy(&stand_in, &["--cache-ttl", "30s"], &CREDENTIALS);
    let mut client_of = client(cached.addr).await;
    let mut sources = Vec::new();
    for _ in 0..2 {
        let answer = client_of
            .admin_get_user_auth_factors(forwarded(SUPPORT, ASKED))
            .await
            .unwrap();
        sources.push(source_of(answer.metadata()));
    }
    assert_eq!(sources, ["cognito", "cache"]);
    assert_eq!(admin_calls(&stand_in), 1);
    assert_eq!(cached.terminate().await, Some(0));

    // Cognito unavailable: the user's kept answer stands in, marked stale.
    let mut kept = behind_a_proxy(&stand_in, &["--stale-if-error", "60s"], &CREDENTIALS);
    let mut client_of = client(kept.addr).await;
    client_of
        .admin_get_user_auth_factors(forwarded(SUPPORT, ASKED))
        .await
        .unwrap();
    stand_in.then([Reply::error(500, "InternalErrorException", "boom")]);
    let answer = client_of
        .admin_get_user_auth_factors(forwarded(SUPPORT, ASKED))
        .await
        .expect("the kept answer stands in");
    assert_eq!(source_of(answer.metadata()), "stale");
    assert!(
        answer
            .metadata()
            .get("x-cognito-facade-age-seconds")
            .is_some()
    );
    assert_eq!(answer.into_inner().username, USERNAME);
    assert_eq!(kept.terminate().await, Some(0));

    // The upstream rate limit: a burst of lookups of many users gets turns
    // as the limit allows, the rest refused before they reach Cognito.
    let before = admin_calls(&stand_in);
    let limit = [
        "--upstream-rate-limit",
        "2",
        "--upstream-queue-timeout",
        "20ms",
    ];
    let mut limited = behind_a_proxy(&stand_in, &limit, &CREDENTIALS);
    let mut lookups = JoinSet::new();
    for n in 0..20 {
        let mut client = client(limited.addr).await;
        lookups.spawn(async move {
            client
                .admin_get_user_auth_factors(forwarded(SUPPORT, &format!("burst.{n}")))
                .await
                .map(drop)
                .map_err(|status| reason(&status))
        });
    }
    let outcomes = lookups.join_all().await;
    let answered = outcomes.iter().filter(|o| o.is_ok()).count();
    let refused = outcomes
        .iter()
        .filter(|o| matches!(o, Err((Code::ResourceExhausted, r)) if r == "UPSTREAM_RATE_LIMITED"))
        .count();
    assert_eq!(answered + refused, 20, "{outcomes:?}");
    assert!(refused >= 10, "{outcomes:?}");
    assert_eq!(admin_calls(&stand_in) - before, answered);
    assert_eq!(limited.terminate().await, Some(0));
}
