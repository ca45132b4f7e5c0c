//! A misbehaving Cognito: each fault gets its documented status within a
//! bound, and the very next good call succeeds.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::helpers::{
    AWS_JSON, LocalMetrics, Reply, StandIn, TOKEN, TestApp, request, spawn_app, spawn_app_with,
    test_config,
};

/// Calls once, checks code, reason and that it came within `bound`.
async fn expect(app: &mut TestApp, code: Code, reason: &str, bound: Duration) {
    let started = Instant::now();
    let status = app
        .client
        .get_user_auth_factors(request(TOKEN))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < bound,
        "{reason} took {:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(status.get_details_error_info().unwrap().reason, reason);
}

/// Points the server at `endpoint` with the given attempt and call timeouts
/// and expects UPSTREAM_TIMEOUT well within a few seconds, with nothing left
/// in flight.
async fn expect_timeout(endpoint: &str, attempt: Duration, call: Duration) {
    let metrics = LocalMetrics::install();
    let mut config = test_config(endpoint);
    config.upstream.attempt_timeout = attempt;
    config.upstream.call_timeout = call;
    let mut app = spawn_app_with(StandIn::start().await, config).await;
    expect(
        &mut app,
        Code::DeadlineExceeded,
        "UPSTREAM_TIMEOUT",
        Duration::from_secs(3),
    )
    .await;
    metrics.until_nothing_in_flight().await;
}

async fn next_call_succeeds(app: &mut TestApp) {
    app.stand_in.always(Reply::full_success());
    app.client
        .get_user_auth_factors(request(TOKEN))
        .await
        .expect("the next good call succeeds");
}

#[tokio::test]
async fn a_ten_megabyte_body_is_a_bad_response() {
    let metrics = LocalMetrics::install();
    let mut app = spawn_app().await;
    app.stand_in.then([Reply::Raw {
        status: 200,
        content_type: AWS_JSON,
        body: format!("{{\"Username\": \"{}\"", "x".repeat(10 * 1024 * 1024)),
    }]);
    expect(
        &mut app,
        Code::Internal,
        "UPSTREAM_BAD_RESPONSE",
        Duration::from_secs(5),
    )
    .await;
    next_call_succeeds(&mut app).await;
    metrics.until_nothing_in_flight().await;
}

#[tokio::test]
async fn a_burst_of_throttling_is_retried_away() {
    let metrics = LocalMetrics::install();
    let mut app = spawn_app().await;
    app.stand_in.then([
        Reply::error(400, "TooManyRequestsException", "Rate exceeded"),
        Reply::error(400, "TooManyRequestsException", "Rate exceeded"),
    ]);
    app.client
        .get_user_auth_factors(request(TOKEN))
        .await
        .unwrap();
    assert_eq!(
        app.stand_in.received().len(),
        3,
        "two throttled attempts, then success"
    );
    metrics.until_nothing_in_flight().await;
}

#[tokio::test]
async fn a_slow_drip_of_bytes_times_out() {
    // Answers headers, then one body byte every 100 ms, forever.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {AWS_JSON}\r\ncontent-length: 100000\r\n\r\n"
                );
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for _ in 0..600 {
                    if socket.write_all(b" ").await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        }
    });
    expect_timeout(
        &endpoint,
        Duration::from_millis(500),
        Duration::from_secs(1),
    )
    .await;
}

#[tokio::test]
async fn nothing_at_all_times_out() {
    // Accepts, reads, never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    expect_timeout(
        &endpoint,
        Duration::from_millis(300),
        Duration::from_millis(800),
    )
    .await;
}

#[tokio::test]
async fn a_success_with_the_wrong_content_type_is_judged_by_its_body() {
    // The SDK parses the body whatever the content type says; the service
    // keeps it that way (a proxy that relabels a good answer should not break
    // sign-in), so a valid body is an answer and anything else a bad response.
    let metrics = LocalMetrics::install();
    let mut app = spawn_app().await;
    app.stand_in.then([Reply::Raw {
        status: 200,
        content_type: "text/html",
        body: "<html>Welcome to nginx!</html>".to_owned(),
    }]);
    expect(
        &mut app,
        Code::Internal,
        "UPSTREAM_BAD_RESPONSE",
        Duration::from_secs(3),
    )
    .await;
    app.stand_in.then([Reply::Raw {
        status: 200,
        content_type: "text/plain",
        body: format!("{{\"Username\":\"{}\"}}", crate::helpers::USERNAME),
    }]);
    let answer = app
        .client
        .get_user_auth_factors(request(TOKEN))
        .await
        .expect("a valid body is an answer");
    assert_eq!(answer.get_ref().username, crate::helpers::USERNAME);
    next_call_succeeds(&mut app).await;
    metrics.until_nothing_in_flight().await;
}
