//! AdminGetUserAuthFactors and the service's own AWS credentials: every row
//! of the error table Cognito and AWS can answer with, signatures the
//! stand-in refuses as AWS would, and the default chain's sources (none, a
//! container endpoint that answers, one that fails or hangs).

use std::time::{Duration, Instant};

use tonic::Code;
use tonic_types::StatusExt as _;

use crate::{
    admin::{
        ASKED, BATCH, CREDENTIALS, POOL, SUPPORT, admin_calls, behind_a_proxy, client, forwarded,
        reason,
    },
    helpers::{
        ACCESS_KEY_ID, EXPIRED_SESSION_TOKEN, Reply, SECRET_ACCESS_KEY, StandIn, USERNAME, request,
    },
    jwt::{SigningKey, access_claims},
};

/// Every row of the error table that AdminGetUserAuthFactors can meet, from
/// Cognito's answer (its modeled exceptions, and AWS refusing a request it
/// cannot authorise).
#[tokio::test]
async fn every_modeled_exception_and_refusal_of_the_credentials_maps_as_documented() {
    let rows = [
        (
            400,
            "ResourceNotFoundException",
            Code::NotFound,
            "RESOURCE_NOT_FOUND",
        ),
        (
            400,
            "InvalidParameterException",
            Code::InvalidArgument,
            "INVALID_PARAMETER",
        ),
        (
            400,
            "NotAuthorizedException",
            Code::FailedPrecondition,
            "USER_NOT_AUTHORIZED",
        ),
        (
            400,
            "OperationNotEnabledException",
            Code::FailedPrecondition,
            "OPERATION_NOT_ENABLED",
        ),
        (
            400,
            "TooManyRequestsException",
            Code::ResourceExhausted,
            "TOO_MANY_REQUESTS",
        ),
        (
            400,
            "UserNotFoundException",
            Code::NotFound,
            "USER_NOT_FOUND",
        ),
        (
            500,
            "InternalErrorException",
            Code::Unavailable,
            "COGNITO_INTERNAL_ERROR",
        ),
        (
            400,
            "AccessDeniedException",
            Code::Internal,
            "SERVICE_ACCESS_DENIED",
        ),
        (
            400,
            "UnrecognizedClientException",
            Code::Internal,
            "SERVICE_CREDENTIALS_UNRECOGNIZED",
        ),
        (
            400,
            "InvalidSignatureException",
            Code::Internal,
            "SERVICE_SIGNATURE_INVALID",
        ),
        (
            400,
            "ExpiredTokenException",
            Code::Internal,
            "SERVICE_CREDENTIALS_EXPIRED",
        ),
        (
            400,
            "MissingAuthenticationTokenException",
            Code::Internal,
            "SERVICE_SIGNATURE_MISSING",
        ),
    ];
    let stand_in = StandIn::start().await;
    let mut running = behind_a_proxy(&stand_in, &[], &CREDENTIALS);
    let mut client = client(running.addr).await;
    for (n, (http, aws_type, code, expected)) in rows.into_iter().enumerate() {
        stand_in.then([Reply::error(http, aws_type, "stand-in says no")]);
        let status = client
            .admin_get_user_auth_factors(forwarded(SUPPORT, &format!("user.{n}")))
            .await
            .unwrap_err();
        assert_eq!(reason(&status), (code, expected.to_owned()), "{aws_type}");
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.metadata["aws_error_code"], aws_type);
        // The service's own credentials refused: not the caller's fault,
        // and nothing of AWS's message (it can name the role) passes.
        if code == Code::Internal {
            assert!(status.message().contains("misconfigured"), "{status:?}");
            assert!(!status.message().contains("stand-in"), "{status:?}");
        }
    }
    assert_eq!(admin_calls(&stand_in), 12);
    assert_eq!(running.terminate().await, Some(0));
}

/// The stand-in's own check of the signature refuses what AWS would: a
/// wrong secret key, an access key it does not know, an expired session;
/// the service says which.
#[tokio::test]
async fn a_signature_aws_would_refuse_is_told_apart_from_a_refusal_of_the_caller() {
    let stand_in = StandIn::start().await;
    let cases = [
        (
            [
                ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID),
                ("AWS_SECRET_ACCESS_KEY", "not-the-secret"),
            ],
            None,
            "SERVICE_SIGNATURE_INVALID",
        ),
        (
            [
                ("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000"),
                ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
            ],
            None,
            "SERVICE_CREDENTIALS_UNRECOGNIZED",
        ),
        (
            CREDENTIALS,
            Some(EXPIRED_SESSION_TOKEN),
            "SERVICE_CREDENTIALS_EXPIRED",
        ),
    ];
    for (credentials, session, expected) in cases {
        let mut envs = credentials.to_vec();
        if let Some(session) = session {
            envs.push(("AWS_SESSION_TOKEN", session));
        }
        let mut running = behind_a_proxy(&stand_in, &[], &envs);
        let status = client(running.addr)
            .await
            .admin_get_user_auth_factors(forwarded(SUPPORT, ASKED))
            .await
            .unwrap_err();
        assert_eq!(reason(&status), (Code::Internal, expected.to_owned()));
        // A caller who may not ask is told so, differently.
        let status = client(running.addr)
            .await
            .admin_get_user_auth_factors(forwarded(BATCH, ASKED))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied);
        assert_eq!(running.terminate().await, Some(0));
    }
}

#[tokio::test]
async fn without_credentials_the_admin_rpc_says_so_in_time_and_the_token_rpc_still_answers() {
    let stand_in = StandIn::start().await;
    // No key in the environment, no profile (HOME is empty), no web
    // identity, no container endpoint, and the instance metadata service
    // off: the default chain has nothing to give.
    let mut running = behind_a_proxy(&stand_in, &[], &[("AWS_EC2_METADATA_DISABLED", "true")]);
    let mut client = client(running.addr).await;
    for _ in 0..2 {
        let started = Instant::now();
        let mut request = forwarded(SUPPORT, ASKED);
        request.set_timeout(Duration::from_secs(3));
        let status = client
            .admin_get_user_auth_factors(request)
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(
            reason(&status),
            (Code::Internal, "CREDENTIALS_UNAVAILABLE".into())
        );
        assert!(
            status.message().contains("no AWS credentials"),
            "{status:?}"
        );
    }
    assert_eq!(admin_calls(&stand_in), 0);
    let token = SigningKey::generate("k1").sign(&access_claims(POOL, 3600));
    let answer = client
        .get_user_auth_factors(request(&token))
        .await
        .expect("the token RPC needs no credentials");
    assert_eq!(answer.into_inner().username, USERNAME);
    assert_eq!(running.terminate().await, Some(0));
}

/// The binary behind a proxy, its credentials from the container endpoint
/// at `url` alone (the instance metadata service off).
fn from_the_container(stand_in: &StandIn, url: &str) -> crate::helpers::Running {
    behind_a_proxy(
        stand_in,
        &[],
        &[
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", url),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    )
}

/// A container credentials endpoint (what ECS and EKS Pod Identity serve)
/// on loopback, handing out the stand-in's key pair with a session token;
/// how many times it was asked.
async fn container_credentials() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    container_credentials_after(Duration::ZERO).await
}

/// The same, each answer `delay` late.
async fn container_credentials_after(
    delay: Duration,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::{Arc, atomic::AtomicUsize, atomic::Ordering};
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&asked);
    let expiration = std::time::SystemTime::now() + Duration::from_secs(3600);
    let expiration = humantime::format_rfc3339_seconds(expiration).to_string();
    let app = axum::Router::new().route(
        "/credentials",
        axum::routing::get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let body = serde_json::json!({
                "AccessKeyId": ACCESS_KEY_ID,
                "SecretAccessKey": SECRET_ACCESS_KEY,
                "Token": "container-session-token",
                "Expiration": expiration,
            });
            let headers = [(axum::http::header::CONTENT_TYPE, "application/json")];
            async move {
                tokio::time::sleep(delay).await;
                (headers, body.to_string())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/credentials", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, asked)
}

/// A source slower than the bound fails the first call in time, and its
/// load goes on: a later call gets its credentials, from that one load.
#[tokio::test]
async fn a_source_slower_than_the_bound_still_gives_credentials_one_call_later() {
    use std::sync::atomic::Ordering;
    let (url, asked) = container_credentials_after(Duration::from_millis(1500)).await;
    let stand_in = StandIn::start().await;
    let mut running = from_the_container(&stand_in, &url);
    let mut client = client(running.addr).await;
    let status = client
        .admin_get_user_auth_factors(forwarded(SUPPORT, ASKED))
        .await
        .unwrap_err();
    assert_eq!(
        reason(&status),
        (Code::Unavailable, "CREDENTIALS_SOURCE_FAILED".into())
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let answer = client
        .admin_get_user_auth_factors(forwarded(SUPPORT, ASKED))
        .await
        .expect("the load that outlived the first call gave credentials");
    assert_eq!(answer.into_inner().username, USERNAME);
    assert_eq!(
        asked.load(Ordering::SeqCst),
        1,
        "one load, not one per call"
    );
    assert_eq!(admin_calls(&stand_in), 1);
    assert_eq!(running.terminate().await, Some(0));
}

#[tokio::test]
async fn credentials_come_from_the_default_chain_on_first_use_never_at_start_up() {
    use std::sync::atomic::Ordering;
    let (url, asked) = container_credentials().await;
    let stand_in = StandIn::start().await;
    let mut running = from_the_container(&stand_in, &url);
    // Serving, and a while after: nothing asked for credentials.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        asked.load(Ordering::SeqCst),
        0,
        "start-up made a network call"
    );
    let mut client = client(running.addr).await;
    for username in [ASKED, "someone.else"] {
        let answer = client
            .admin_get_user_auth_factors(forwarded(SUPPORT, username))
            .await
            .expect("signed with the container's credentials");
        assert_eq!(answer.into_inner().username, USERNAME);
    }
    // Loaded once and cached by the SDK until near their expiry.
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    let received = stand_in.received();
    assert!(
        received
            .iter()
            .all(|r| r.authorization.as_deref().unwrap().contains(ACCESS_KEY_ID))
    );
    assert_eq!(running.terminate().await, Some(0));
}

/// A loopback endpoint that accepts connections and never answers; how
/// many it accepted.
async fn never_answering() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::{Arc, atomic::AtomicUsize, atomic::Ordering};
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    (format!("http://{addr}"), accepted)
}

/// A container credentials endpoint that answers every request with 500.
async fn failing_credentials() -> String {
    let app = axum::Router::new().route(
        "/credentials",
        axum::routing::get(|| {
            std::future::ready((axum::http::StatusCode::INTERNAL_SERVER_ERROR, "down"))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/credentials", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn a_credential_source_that_fails_or_hangs_is_named_within_its_bound_not_as_cognitos_timeout()
{
    let (hanging, accepted) = never_answering().await;
    let failing = failing_credentials().await;
    let stand_in = StandIn::start().await;
    for url in [format!("{hanging}/credentials"), failing] {
        let mut running = from_the_container(&stand_in, &url);
        let mut client = client(running.addr).await;
        let started = Instant::now();
        let mut asked = forwarded(SUPPORT, ASKED);
        asked.set_timeout(Duration::from_secs(4));
        let status = client.admin_get_user_auth_factors(asked).await.unwrap_err();
        // The bound is 1 s (the attempt timeout is 2 s): well inside the
        // caller's 4 s, and not the attempt's timeout.
        assert!(
            started.elapsed() < Duration::from_millis(1900),
            "{url}: {:?}",
            started.elapsed()
        );
        assert_eq!(
            reason(&status),
            (Code::Unavailable, "CREDENTIALS_SOURCE_FAILED".into()),
            "{url}: {status:?}"
        );
        // The token RPC is not held up by the admin RPC's credentials.
        let token = SigningKey::generate("k1").sign(&access_claims(POOL, 3600));
        client
            .get_user_auth_factors(request(&token))
            .await
            .expect("the token RPC answers");
        assert_eq!(running.terminate().await, Some(0));
    }
    assert!(
        accepted.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "the hanging source was asked"
    );
    assert_eq!(admin_calls(&stand_in), 0);
}

#[tokio::test]
async fn without_a_region_in_the_environment_start_up_asks_no_instance_metadata() {
    use std::sync::atomic::Ordering;
    let (imds, accepted) = never_answering().await;
    let stand_in = StandIn::start().await;
    // No AWS_REGION: the region comes from the pool. IMDS is on, at an
    // address that counts who connects.
    let mut running = crate::helpers::Running::start(
        &[
            "--user-pool-id",
            POOL,
            "--verify-tokens=false",
            "--admin-callers",
            SUPPORT,
            "--trust-forwarded-client-cert",
            "true",
        ],
        &[
            (
                "AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER",
                stand_in.endpoint.as_str(),
            ),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
        ],
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "start-up asked IMDS");
    let mut client = client(running.addr).await;
    let answer = client
        .admin_get_user_auth_factors(forwarded(SUPPORT, ASKED))
        .await
        .expect("the environment's keys sign it");
    assert_eq!(answer.into_inner().username, USERNAME);
    let token = SigningKey::generate("k1").sign(&access_claims(POOL, 3600));
    client
        .get_user_auth_factors(request(&token))
        .await
        .expect("the token RPC answers");
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "a call asked IMDS");
    assert_eq!(running.terminate().await, Some(0));
}
