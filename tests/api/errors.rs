//! Every row of the error table, end to end through the stand-in, and the
//! README's table checked against the code's.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use cognito_facade::test_support::{
    ERROR_DOMAIN, Error, Refusal, TokenError, TokenSource, UpstreamError, UpstreamErrorKind,
    UsernameError, code_name,
};
use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::helpers::{
    AWS_JSON, LocalMetrics, Reply, StandIn, TOKEN, TestApp, failed_call, next_call_succeeds,
    request, spawn_app, spawn_app_with, test_config,
};

/// What a failed call answered.
struct Seen {
    status: tonic::Status,
    reason: String,
    metadata: std::collections::HashMap<String, String>,
}

/// How long any failure may take to be answered in these tests: the test
/// configuration's call timeout with room to spare, so a hang fails the test.
const ANSWER_BOUND: std::time::Duration = std::time::Duration::from_secs(5);

/// One call that must fail, answered within [`ANSWER_BOUND`].
async fn call(app: &mut TestApp) -> Seen {
    let (status, info) = failed_call(app, ANSWER_BOUND).await;
    assert_eq!(info.domain, ERROR_DOMAIN);
    Seen {
        reason: info.reason,
        metadata: info.metadata,
        status,
    }
}

/// Every modeled Cognito error: code, reason, Cognito's message, its code and
/// request id in ErrorInfo.
#[tokio::test]
async fn modeled_errors_map_as_documented() {
    let rows = [
        (
            400,
            "NotAuthorizedException",
            Code::Unauthenticated,
            "NOT_AUTHORIZED",
        ),
        (
            400,
            "InvalidParameterException",
            Code::InvalidArgument,
            "INVALID_PARAMETER",
        ),
        (
            400,
            "ResourceNotFoundException",
            Code::NotFound,
            "RESOURCE_NOT_FOUND",
        ),
        (
            400,
            "UserNotFoundException",
            Code::NotFound,
            "USER_NOT_FOUND",
        ),
        (
            400,
            "UserNotConfirmedException",
            Code::FailedPrecondition,
            "USER_NOT_CONFIRMED",
        ),
        (
            400,
            "PasswordResetRequiredException",
            Code::FailedPrecondition,
            "PASSWORD_RESET_REQUIRED",
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
            403,
            "ForbiddenException",
            Code::PermissionDenied,
            "FORBIDDEN",
        ),
    ];
    let mut app = spawn_app().await;
    for (http_status, aws_type, code, reason) in rows {
        let message = format!("Cognito says {aws_type}");
        app.stand_in
            .always(Reply::error(http_status, aws_type, &message));
        let before = app.stand_in.received().len();
        let seen = call(&mut app).await;
        let calls = app.stand_in.received().len() - before;
        assert_eq!(seen.status.code(), code, "{aws_type}");
        assert_eq!(seen.reason, reason, "{aws_type}");
        assert_eq!(
            seen.status.message(),
            message,
            "{aws_type}: Cognito's message passes through"
        );
        assert_eq!(seen.metadata["aws_error_code"], aws_type);
        assert_eq!(
            seen.metadata["aws_request_id"],
            StandIn::request_id(u64::try_from(before + calls).unwrap()),
            "{aws_type}: the last attempt's request id"
        );
        let retried = aws_type == "TooManyRequestsException";
        assert_eq!(
            calls,
            if retried { 3 } else { 1 },
            "{aws_type}: SDK retries only throttling"
        );
        assert_eq!(
            seen.status.get_details_retry_info().is_some(),
            retried,
            "{aws_type}"
        );
    }
}

#[tokio::test]
async fn throttling_tells_the_caller_when_to_retry() {
    let mut app = spawn_app().await;
    app.stand_in.always(Reply::error(
        400,
        "TooManyRequestsException",
        "Rate exceeded",
    ));
    let seen = call(&mut app).await;
    let retry = seen.status.get_details_retry_info().unwrap();
    assert_eq!(
        retry.retry_delay,
        Some(cognito_facade::test_support::THROTTLE_RETRY_DELAY)
    );
}

#[tokio::test]
async fn invalid_parameter_reason_code_reaches_error_info() {
    let mut app = spawn_app().await;
    app.stand_in.always(Reply::Error {
        status: 400,
        aws_type: "InvalidParameterException".to_owned(),
        body: json!({ "message": "Invalid token use", "reasonCode": "INVALID_TOKEN_USE" }),
    });
    let seen = call(&mut app).await;
    assert_eq!(seen.metadata["reason_code"], "INVALID_TOKEN_USE");
}

#[tokio::test]
async fn internal_error_is_retried_then_unavailable_with_a_generic_message() {
    let metrics = LocalMetrics::install();
    let mut app = spawn_app().await;
    app.stand_in.always(Reply::error(
        500,
        "InternalErrorException",
        "secret internals",
    ));
    let seen = call(&mut app).await;
    assert_eq!(seen.status.code(), Code::Unavailable);
    assert_eq!(seen.reason, "COGNITO_INTERNAL_ERROR");
    assert_eq!(seen.metadata["aws_error_code"], "InternalErrorException");
    assert!(!seen.status.message().contains("secret internals"));
    assert_eq!(app.stand_in.received().len(), 3, "the SDK's three attempts");
    next_call_succeeds(&mut app).await;
    metrics.until_nothing_in_flight().await;
}

#[tokio::test]
async fn internal_error_then_success_succeeds() {
    let metrics = LocalMetrics::install();
    let mut app = spawn_app().await;
    app.stand_in
        .then([Reply::error(500, "InternalErrorException", "blip")]);
    app.client
        .get_user_auth_factors(request(TOKEN))
        .await
        .unwrap();
    assert_eq!(app.stand_in.received().len(), 2);
    metrics.until_nothing_in_flight().await;
}

#[tokio::test]
async fn an_unmodeled_4xx_is_unknown_and_names_the_code() {
    let mut app = spawn_app().await;
    app.stand_in.always(Reply::error(
        400,
        "LimitExceededException",
        "not in the model",
    ));
    let seen = call(&mut app).await;
    assert_eq!(seen.status.code(), Code::Unknown);
    assert_eq!(seen.reason, "UNMODELED_ERROR");
    assert_eq!(seen.metadata["aws_error_code"], "LimitExceededException");
}

/// Error codes as Cognito and AWS's front ends really write them: a
/// namespaced `__type`, the `x-amzn-ErrorType` header with its `:namespace`
/// tail, or no code at all. Each lands in its documented row with the bare
/// code in ErrorInfo.
#[tokio::test]
async fn the_real_wire_forms_of_error_codes_land_in_their_rows() {
    const NS: &str = ":http://internal.amazon.com/coral/com.amazonaws.cognito.identity.idp.model/";
    let header = |status, error_type: &'static str| Reply::ErrorHeader {
        status,
        error_type,
        body: serde_json::json!({ "message": "from the header form" }),
    };
    let rows: [(Reply, Code, &str, &str); 7] = [
        (
            Reply::error(
                400,
                "com.amazonaws.cognito.identity.idp.model#NotAuthorizedException",
                "Access Token has been revoked",
            ),
            Code::Unauthenticated,
            "NOT_AUTHORIZED",
            "NotAuthorizedException",
        ),
        (
            header(400, leak(format!("NotAuthorizedException{NS}"))),
            Code::Unauthenticated,
            "NOT_AUTHORIZED",
            "NotAuthorizedException",
        ),
        (
            header(400, leak(format!("UserNotFoundException{NS}"))),
            Code::NotFound,
            "USER_NOT_FOUND",
            "UserNotFoundException",
        ),
        (
            Reply::error(
                400,
                "com.amazon.coral.service#UnrecognizedClientException",
                "The security token included in the request is invalid.",
            ),
            // Not the service's credentials: the token RPC is unsigned, so
            // AWS's refusal of a signature is a proxy's, and unmodeled.
            Code::Unknown,
            "UNMODELED_ERROR",
            "UnrecognizedClientException",
        ),
        (
            header(
                403,
                "AccessDeniedException:http://internal.amazon.com/coral/com.amazon.coral.service/",
            ),
            Code::Unknown,
            "UNMODELED_ERROR",
            "AccessDeniedException",
        ),
        (
            Reply::error(
                503,
                "com.amazon.coral.availability#ThrottlingException",
                "Rate exceeded",
            ),
            Code::Unavailable,
            "UPSTREAM_UNAVAILABLE",
            "ThrottlingException",
        ),
        (
            Reply::Raw {
                status: 400,
                content_type: AWS_JSON,
                body: "{}".to_owned(),
            },
            Code::Unavailable,
            "UPSTREAM_UNAVAILABLE",
            "",
        ),
    ];
    let mut app = spawn_app().await;
    for (reply, code, reason, aws_code) in rows {
        app.stand_in.always(reply.clone());
        let seen = call(&mut app).await;
        assert_eq!(seen.status.code(), code, "{reply:?}");
        assert_eq!(seen.reason, reason, "{reply:?}");
        assert_eq!(
            seen.metadata
                .get("aws_error_code")
                .map_or("", String::as_str),
            aws_code,
            "{reply:?}"
        );
    }
    next_call_succeeds(&mut app).await;
}

/// A `'static` header value for the stand-in.
fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}

#[tokio::test]
async fn an_unmodeled_5xx_and_an_html_error_page_are_unavailable() {
    let metrics = LocalMetrics::install();
    let mut app = spawn_app().await;
    for reply in [
        Reply::error(503, "ServiceUnavailableException", "down"),
        Reply::Raw {
            status: 502,
            content_type: "text/html",
            body: "<html><body>Bad Gateway</body></html>".to_owned(),
        },
        Reply::Raw {
            status: 403,
            content_type: "text/html",
            body: "<html><body>Request blocked</body></html>".to_owned(),
        },
    ] {
        app.stand_in.always(reply.clone());
        let seen = call(&mut app).await;
        assert_eq!(seen.status.code(), Code::Unavailable, "{reply:?}");
        assert_eq!(seen.reason, "UPSTREAM_UNAVAILABLE", "{reply:?}");
        assert_eq!(seen.status.message(), "Cognito is unavailable");
    }
    next_call_succeeds(&mut app).await;
    metrics.until_nothing_in_flight().await;
}

#[tokio::test]
async fn an_unparseable_success_is_internal() {
    let metrics = LocalMetrics::install();
    let mut app = spawn_app().await;
    for reply in [
        Reply::Raw {
            status: 200,
            content_type: crate::helpers::AWS_JSON,
            body: "{\"Username\": \"ali".to_owned(),
        },
        Reply::Success(json!({ "ConfiguredUserAuthFactors": ["PASSWORD"] })),
        Reply::Success(json!({ "Username": 42 })),
    ] {
        app.stand_in.always(reply.clone());
        let seen = call(&mut app).await;
        assert_eq!(seen.status.code(), Code::Internal, "{reply:?}");
        assert_eq!(seen.reason, "UPSTREAM_BAD_RESPONSE", "{reply:?}");
    }
    next_call_succeeds(&mut app).await;
    metrics.until_nothing_in_flight().await;
}

#[tokio::test]
async fn an_unreachable_cognito_is_unavailable() {
    let metrics = LocalMetrics::install();
    // A port that was just free: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let stand_in = StandIn::start().await;
    let mut app = spawn_app_with(stand_in, test_config(&endpoint)).await;
    let seen = call(&mut app).await;
    assert_eq!(seen.status.code(), Code::Unavailable);
    assert_eq!(seen.reason, "UPSTREAM_UNREACHABLE");
    assert_eq!(seen.status.message(), "Cognito could not be reached");
    assert!(!seen.metadata.contains_key("aws_request_id"));
    metrics.until_nothing_in_flight().await;
}

#[tokio::test]
async fn a_connection_closed_without_an_answer_is_unavailable() {
    let metrics = LocalMetrics::install();
    // A server that reads the request and hangs up.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 1024];
            let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut buf).await;
            drop(socket);
        }
    });
    let mut app = spawn_app_with(StandIn::start().await, test_config(&endpoint)).await;
    let seen = call(&mut app).await;
    assert_eq!(seen.status.code(), Code::Unavailable);
    assert_eq!(seen.reason, "UPSTREAM_UNREACHABLE");
    metrics.until_nothing_in_flight().await;
}

#[tokio::test]
async fn an_absurdly_long_deadline_is_no_deadline() {
    let mut app = spawn_app().await;
    let mut req = request(TOKEN);
    req.metadata_mut()
        .insert("grpc-timeout", "99999999H".parse().unwrap());
    app.client.get_user_auth_factors(req).await.unwrap();
}

#[tokio::test]
async fn the_callers_deadline_caps_the_upstream_call() {
    let mut app = spawn_app().await;
    app.stand_in.always(Reply::Delay(
        Duration::from_secs(10),
        Box::new(Reply::full_success()),
    ));
    // A 1 s deadline: the server answers 50 ms before it, a margin that
    // holds on a loaded machine.
    let mut req = request(TOKEN);
    req.set_timeout(Duration::from_millis(1000));
    let started = Instant::now();
    let status = app.client.get_user_auth_factors(req).await.unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "UPSTREAM_TIMEOUT"
    );
    assert!(
        elapsed < Duration::from_secs(2),
        "answered after {elapsed:?}"
    );
}

#[tokio::test]
async fn the_call_timeout_bounds_a_slow_cognito() {
    let stand_in = StandIn::start().await;
    let mut config = test_config(&stand_in.endpoint);
    config.upstream.attempt_timeout = Duration::from_millis(200);
    config.upstream.call_timeout = Duration::from_millis(400);
    config.upstream.max_attempts = 1;
    stand_in.always(Reply::Delay(
        Duration::from_secs(10),
        Box::new(Reply::full_success()),
    ));
    let mut app = spawn_app_with(stand_in, config).await;
    let started = Instant::now();
    let seen = call(&mut app).await;
    assert_eq!(seen.status.code(), Code::DeadlineExceeded);
    assert_eq!(seen.reason, "UPSTREAM_TIMEOUT");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// Every error a row of the README's error tables stands for: Cognito's
/// outcomes, the request's problems, the service's refusals, shedding.
fn every_tabled_error() -> Vec<Error> {
    let mut errors: Vec<Error> = UpstreamErrorKind::ALL
        .iter()
        .map(|&kind| Error::from(UpstreamError::new(kind)))
        .collect();
    errors.extend(
        [
            TokenError::Missing,
            TokenError::Conflicting,
            TokenError::MalformedAuthorization,
            TokenError::InvalidCharacters {
                origin: TokenSource::Field,
            },
        ]
        .map(Error::from),
    );
    errors.extend(Refusal::ALL.iter().map(|&refusal| Error::from(refusal)));
    errors.extend([
        Error::Overloaded,
        Error::RequestTooLarge,
        Error::RequestBytesExhausted,
        Error::RequestBodyTimeout,
        Error::MalformedForwardedClientCert("it is empty"),
        Error::CallerNotAllowed,
        Error::UserPoolNotAllowed,
        Error::InvalidUsername(UsernameError::Missing),
    ]);
    errors
}

/// The cells of the README's error tables' rows, for rows whose reason
/// cell is a name: `| outcome | `CODE` | `REASON` | notes | retry |`.
fn readme_error_rows() -> Vec<Vec<String>> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Errors\n"))
        .expect("an Errors section")
        .to_owned();
    let is_name = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_uppercase() || c == '_');
    section
        .lines()
        .map(|line| {
            line.split('|')
                .map(|cell| cell.trim().trim_matches('`').to_owned())
                .collect::<Vec<_>>()
        })
        .filter(|cells| cells.len() > 3 && is_name(&cells[2]) && is_name(&cells[3]))
        .collect()
}

/// The README's error tables name exactly the (code, reason) pairs the code
/// produces.
#[test]
fn the_readme_documents_every_row() {
    let documented: BTreeSet<(String, String)> = readme_error_rows()
        .into_iter()
        .map(|cells| (cells[2].clone(), cells[3].clone()))
        .collect();
    let produced: BTreeSet<(String, String)> = every_tabled_error()
        .iter()
        .map(|err| {
            let (code, reason) = err.status();
            (code_name(code).to_owned(), reason.to_owned())
        })
        .collect();
    assert_eq!(documented, produced);
}

/// The README's retry column, which the example clients follow, agrees with
/// the service: every row says `yes` or `no`; Cognito's outcomes are `yes`
/// exactly when they are transient (Cognito unavailable, throttled, the
/// rate limit), and shedding is `yes`; every refusal of the token or the
/// request is `no` (a retry must never turn a revoked token into an answer,
/// nor a bad request into a good one). Whatever carries `RetryInfo` is `yes`.
#[test]
fn the_readme_retry_column_agrees_with_the_service() {
    let retry: std::collections::HashMap<String, bool> = readme_error_rows()
        .into_iter()
        .map(|cells| {
            let yes = match cells.get(5).map(String::as_str) {
                Some("yes") => true,
                Some("no") => false,
                other => panic!("{}: a retry cell of {other:?}, not yes or no", cells[3]),
            };
            (cells[3].clone(), yes)
        })
        .collect();
    for err in every_tabled_error() {
        let (_, reason) = err.status();
        let transient = match &err {
            Error::Upstream(up) => up.kind.is_transient(),
            Error::Overloaded | Error::RequestBytesExhausted => true,
            Error::Token(_)
            | Error::Refused(_)
            | Error::RequestTooLarge
            | Error::RequestBodyTimeout
            | Error::MalformedForwardedClientCert(_)
            | Error::CallerNotAllowed
            | Error::UserPoolNotAllowed
            | Error::InvalidUsername(_) => false,
        };
        assert_eq!(retry[reason], transient, "the retry cell of {reason}");
        if err.to_status().get_details_retry_info().is_some() {
            assert!(
                retry[reason],
                "{reason} carries RetryInfo but is not retryable"
            );
        }
    }
}

/// Sends `message` (any protobuf) to `path` and returns the status.
async fn raw_call<M: prost::Message + Default + std::fmt::Debug + Send + Sync + 'static>(
    app: &TestApp,
    path: &'static str,
    message: M,
) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(app.channel.clone());
    grpc.ready().await.unwrap();
    grpc.unary(
        tonic::Request::new(message),
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        tonic_prost::ProstCodec::<M, M>::default(),
    )
    .await
    .unwrap_err()
}

#[tokio::test]
async fn malformed_protobuf_is_internal_and_an_unknown_method_unimplemented() {
    let app = spawn_app().await;
    // Field 1 as a varint where the contract has a string: not decodable.
    let malformed = prost_types::Duration {
        seconds: 5,
        nanos: 0,
    };
    let status = raw_call(
        &app,
        "/cognito.idp.v1.IdentityProviderService/GetUserAuthFactors",
        malformed,
    )
    .await;
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    let status = raw_call(
        &app,
        "/cognito.idp.v1.IdentityProviderService/DeleteUser",
        prost_types::Duration::default(),
    )
    .await;
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert!(app.stand_in.received().is_empty());
}
