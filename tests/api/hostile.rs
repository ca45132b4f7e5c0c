//! Hostile callers: each gets a clear status or a clean refusal of the
//! connection, and the server stays SERVING.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::metadata::MetadataValue;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::{TOKEN, TestApp, request, spawn_app};

/// The server still answers SERVING on a fresh connection.
async fn still_serving(app: &TestApp) {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status();
    assert_eq!(status, ServingStatus::Serving);
}

#[tokio::test]
async fn an_http1_request_on_the_grpc_port_is_refused_cleanly() {
    let app = spawn_app().await;
    let mut socket = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    socket
        .write_all(b"GET / HTTP/1.1\r\nHost: facade\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    // The server closes the connection (after at most an HTTP/2 GOAWAY): the
    // read ends, it does not hang.
    let read = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection was left hanging");
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"));
    still_serving(&app).await;
}

#[tokio::test]
async fn garbage_bytes_are_refused_cleanly() {
    let app = spawn_app().await;
    let mut socket = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let _ = socket.write_all(&[0xff; 4096]).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection was left hanging");
    still_serving(&app).await;
}

#[tokio::test]
async fn a_megabyte_of_metadata_is_refused() {
    let mut app = spawn_app().await;
    let mut req = request(TOKEN);
    let huge: MetadataValue<_> = "a".repeat(1024 * 1024).parse().unwrap();
    req.metadata_mut().insert("x-padding", huge);
    let result = app.client.get_user_auth_factors(req).await;
    assert!(
        result.is_err(),
        "a 1 MiB header block is over the 64 KiB limit"
    );
    assert!(app.stand_in.received().is_empty());
    still_serving(&app).await;
}

#[tokio::test]
async fn a_megabyte_bearer_token_is_refused() {
    let mut app = spawn_app().await;
    let mut req = request("");
    let huge: MetadataValue<_> = format!("Bearer {}", "a".repeat(1024 * 1024))
        .parse()
        .unwrap();
    req.metadata_mut().insert("authorization", huge);
    assert!(app.client.get_user_auth_factors(req).await.is_err());
    assert!(app.stand_in.received().is_empty());
    still_serving(&app).await;
}
