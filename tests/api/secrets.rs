//! Logs of the real binary: one line per call with its span fields, and never
//! a token or a username, even at trace level with the SDK's, hyper's and h2's
//! own logs. (A subprocess, not an in-process subscriber: tracing caches
//! callsite interest globally, so a per-test subscriber can miss events that a
//! parallel test registered first.)

use serde_json::{Value, json};
use tonic::Code;

use crate::helpers::{Reply, Running, StandIn, TOKEN, USERNAME, request};

/// Starts the binary against a fresh stand-in with `RUST_LOG=filter`.
async fn start(filter: &str, format: &str) -> (Running, StandIn) {
    let stand_in = StandIn::start().await;
    let running = Running::against(
        &stand_in,
        &[],
        &[
            ("COGNITO_FACADE_LOG_FORMAT", format),
            ("COGNITO_FACADE_RETRY_BACKOFF", "5ms"),
            ("RUST_LOG", filter),
        ],
    );
    (running, stand_in)
}

/// Calls down every path: success through the field and through metadata,
/// Cognito errors, refused tokens, an unknown enum value, a broken body that
/// holds the username. Returns the logs once the binary has exited.
async fn logs_of_every_path(format: &str) -> String {
    let (mut running, stand_in) = start("trace", format).await;
    let mut client = running.client().await;
    client.get_user_auth_factors(request(TOKEN)).await.unwrap();
    let mut req = request("");
    req.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    client.get_user_auth_factors(req).await.unwrap();
    stand_in.then([Reply::revoked()]);
    // A token of its own: its refusal is remembered, and answered again
    // from memory.
    let revoked = format!("{TOKEN}0");
    for _ in 0..2 {
        client
            .get_user_auth_factors(request(&revoked))
            .await
            .unwrap_err();
    }
    stand_in.then(vec![Reply::error(500, "InternalErrorException", "boom"); 3]);
    client
        .get_user_auth_factors(request(TOKEN))
        .await
        .unwrap_err();
    client
        .get_user_auth_factors(request(&format!("{TOKEN}+")))
        .await
        .unwrap_err();
    let mut req = request(TOKEN);
    req.metadata_mut()
        .insert("authorization", "Bearer different.token".parse().unwrap());
    client.get_user_auth_factors(req).await.unwrap_err();
    stand_in.then([Reply::Success(json!({
        "Username": USERNAME,
        "ConfiguredUserAuthFactors": ["QUANTUM_KEY"],
    }))]);
    client.get_user_auth_factors(request(TOKEN)).await.unwrap();
    stand_in.then([Reply::Raw {
        status: 200,
        content_type: crate::helpers::AWS_JSON,
        body: format!("{{\"Username\": \"{USERNAME}\", \"Preferred"),
    }]);
    let status = client
        .get_user_auth_factors(request(TOKEN))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    drop(client);
    assert_eq!(running.terminate().await, Some(0));
    running.logs().join("\n")
}

fn assert_no_secrets(logs: &str) {
    // The capture really ran at trace, SDK and HTTP/2 internals included.
    for expected in [
        "aws_smithy_runtime",
        "h2::",
        "call finished",
        "TRACE",
        "memory",
    ] {
        assert!(logs.contains(expected), "the capture has no {expected:?}");
    }
    let leaks = [
        ("token segment 1", TOKEN.split('.').next().unwrap()),
        ("token segment 2", TOKEN.split('.').nth(1).unwrap()),
        ("token segment 3", TOKEN.split('.').nth(2).unwrap()),
        ("username", USERNAME),
        ("refused token", "different.token"),
    ];
    for (what, secret) in leaks {
        if let Some(line) = logs.lines().find(|l| l.contains(secret)) {
            panic!("the {what} leaked into the logs: {line}");
        }
    }
}

#[tokio::test]
async fn trace_level_json_logs_hold_no_token_and_no_username() {
    assert_no_secrets(&logs_of_every_path("json").await);
}

#[tokio::test]
async fn trace_level_text_logs_hold_no_token_and_no_username() {
    assert_no_secrets(&logs_of_every_path("text").await);
}

fn json_lines(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test]
async fn each_call_logs_one_line_with_code_latency_and_request_id() {
    let (mut running, stand_in) = start("info", "json").await;
    running.call().await.unwrap();
    stand_in.then([Reply::error(
        400,
        "UserNotFoundException",
        "User does not exist.",
    )]);
    running.call().await.unwrap_err();
    assert_eq!(running.terminate().await, Some(0));

    let lines = json_lines(&running.logs());
    let with_message = |message: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|l| l["fields"]["message"] == message)
            .collect()
    };
    let finished = with_message("call finished");
    assert_eq!(finished.len(), 1, "{lines:#?}");
    let fields = &finished[0]["fields"];
    assert_eq!(fields["rpc.method"], "GetUserAuthFactors");
    assert_eq!(fields["grpc.code"], "OK");
    assert_eq!(fields["aws_request_id"], StandIn::request_id(1));
    assert!(fields["latency_us"].as_u64().is_some(), "{fields}");

    let failed = with_message("call failed");
    assert_eq!(failed.len(), 1, "{lines:#?}");
    let fields = &failed[0]["fields"];
    assert_eq!(fields["rpc.method"], "GetUserAuthFactors");
    assert_eq!(fields["reason"], "USER_NOT_FOUND");
    assert_eq!(fields["grpc.code"], "NOT_FOUND");
    assert_eq!(fields["aws_request_id"], StandIn::request_id(2));
    assert!(fields["latency_us"].as_u64().is_some(), "{fields}");
}

/// The text log lines of the real binary at `filter` for one good call.
async fn text_logs_of_one_call(filter: &str) -> Vec<String> {
    let (mut running, _stand_in) = start(filter, "text").await;
    running.call().await.unwrap();
    assert_eq!(running.terminate().await, Some(0));
    running.logs()
}

/// The first line that `matches`, or a failure that shows all of them.
fn line_where<'l>(logs: &'l [String], what: &str, matches: impl Fn(&str) -> bool) -> &'l str {
    logs.iter()
        .find(|l| matches(l))
        .unwrap_or_else(|| panic!("no {what}: {logs:#?}"))
}

/// The call's span exists at `debug` and places the SDK's own events inside
/// the call; at `info` it is not created (docs/operations.md, "Logs").
#[tokio::test]
async fn the_call_span_is_there_at_debug_and_not_at_info() {
    let span = "rpc{rpc.service=";
    let logs = text_logs_of_one_call("debug").await;
    let sdk_in_call = line_where(&logs, "SDK event inside the call's span", |l| {
        l.contains("aws_smithy_runtime") && l.contains(span)
    });
    assert!(sdk_in_call.contains("GetUserAuthFactors"), "{sdk_in_call}");

    let logs = text_logs_of_one_call("info").await;
    let finished = line_where(&logs, "call line", |l| l.contains("call finished"));
    assert!(finished.contains("GetUserAuthFactors"), "{finished}");
    assert!(logs.iter().all(|l| !l.contains(span)), "{logs:#?}");
}

#[tokio::test]
async fn an_unknown_enum_value_is_named_in_a_warning() {
    let (mut running, stand_in) = start("warn,cognito_facade::server=info", "json").await;
    stand_in.always(Reply::Success(json!({
        "Username": USERNAME,
        "PreferredMfaSetting": "PASSKEY_MFA",
        "ConfiguredUserAuthFactors": ["QUANTUM_KEY"],
    })));
    running.call().await.unwrap();
    assert_eq!(running.terminate().await, Some(0));
    let lines = json_lines(&running.logs());
    let named = |value: &str| {
        lines
            .iter()
            .any(|l| l["level"] == "WARN" && l["fields"]["value"] == value)
    };
    assert!(named("PASSKEY_MFA"), "{lines:#?}");
    assert!(named("QUANTUM_KEY"), "{lines:#?}");
}
