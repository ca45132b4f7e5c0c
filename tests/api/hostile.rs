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

#[tokio::test]
async fn a_request_that_is_not_grpc_gets_415_and_invalid_argument() {
    use tonic::codegen::http;
    use tower::ServiceExt as _;

    let app = spawn_app().await;
    for (path, content_type) in [
        (
            "/cognito.idp.v1.IdentityProviderService/GetUserAuthFactors",
            Some("application/json"),
        ),
        (
            "/cognito.idp.v1.IdentityProviderService/GetUserAuthFactors",
            None,
        ),
        ("/grpc.health.v1.Health/Check", Some("text/plain")),
    ] {
        let mut builder = http::Request::builder()
            .method("POST")
            .uri(format!("http://{}{path}", app.addr))
            .header("te", "trailers");
        if let Some(content_type) = content_type {
            builder = builder.header("content-type", content_type);
        }
        let body = format!("{{\"access_token\":\"{TOKEN}\"}}");
        let raw_request = builder.body(tonic::body::Body::new(body)).unwrap();
        let response = tokio::time::timeout(
            Duration::from_secs(5),
            app.channel.clone().oneshot(raw_request),
        )
        .await
        .expect("answered")
        .expect("an HTTP response");
        assert_eq!(
            response.status(),
            http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{path} {content_type:?}"
        );
        assert_eq!(response.headers()["grpc-status"], "3", "{path}");
    }
    assert!(app.stand_in.received().is_empty());
    still_serving(&app).await;
}

/// A bare HTTP/2 client that writes frames by hand, to do what a well-behaved
/// client library refuses to: open more streams than the server allows, or
/// send bytes a header value must not hold.
struct RawH2 {
    socket: tokio::net::TcpStream,
}

/// HTTP/2 frame types and flags used here (RFC 9113).
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
/// RST_STREAM error codes.
const PROTOCOL_ERROR: u32 = 0x1;
const REFUSED_STREAM: u32 = 0x7;

impl RawH2 {
    async fn connect(app: &TestApp) -> Self {
        let mut socket = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        socket
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut raw = Self { socket };
        raw.frame(SETTINGS, 0, 0, &[]).await;
        raw
    }

    async fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut frame = vec![len[1], len[2], len[3], kind, flags];
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        self.socket.write_all(&frame).await.unwrap();
    }

    /// A HEADERS frame for a GetUserAuthFactors call with `extra` headers,
    /// every field a literal without indexing (so no HPACK state).
    async fn call(&mut self, stream: u32, extra: &[(&[u8], &[u8])], end_stream: bool) {
        let mut block = Vec::new();
        let path: &[u8] = b"/cognito.idp.v1.IdentityProviderService/GetUserAuthFactors";
        let fields: [(&[u8], &[u8]); 5] = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ];
        for (name, value) in fields.iter().chain(extra) {
            block.push(0x00);
            hpack_length(&mut block, name.len());
            block.extend_from_slice(name);
            hpack_length(&mut block, value.len());
            block.extend_from_slice(value);
        }
        let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
        self.frame(HEADERS, flags, stream, &block).await;
    }

    /// Reads frames for at most `bound`, acknowledging the server's SETTINGS,
    /// until `done` says so or the connection ends; returns every
    /// (type, stream, error code) of RST_STREAM and GOAWAY frames seen.
    async fn resets(
        &mut self,
        bound: Duration,
        done: impl Fn(&[(u8, u32, u32)]) -> bool,
    ) -> Vec<(u8, u32, u32)> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + bound;
        while !done(&seen) {
            let mut head = [0u8; 9];
            match tokio::time::timeout_at(deadline, self.socket.read_exact(&mut head)).await {
                Ok(Ok(_)) => {}
                _ => break,
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            if self.socket.read_exact(&mut payload).await.is_err() {
                break;
            }
            let code =
                |at: usize| u32::from_be_bytes(payload[at..at + 4].try_into().expect("four bytes"));
            match kind {
                SETTINGS if flags & ACK == 0 => self.frame(SETTINGS, ACK, 0, &[]).await,
                RST_STREAM => seen.push((kind, stream, code(0))),
                GOAWAY => seen.push((kind, stream, code(4))),
                _ => {}
            }
        }
        seen
    }
}

/// An HPACK string length with a 7-bit prefix and no Huffman coding.
fn hpack_length(block: &mut Vec<u8>, mut len: usize) {
    if len < 127 {
        block.push(u8::try_from(len).unwrap());
        return;
    }
    block.push(127);
    len -= 127;
    while len >= 128 {
        block.push(u8::try_from(len % 128).unwrap() | 0x80);
        len /= 128;
    }
    block.push(u8::try_from(len).unwrap());
}

#[tokio::test]
async fn streams_over_the_limit_are_refused_and_the_rest_keep_working() {
    // Room for every stream's body, so the stream limit is what refuses.
    let stand_in = crate::helpers::StandIn::start().await;
    let mut config = crate::helpers::test_config(&stand_in.endpoint);
    config.server.bodies.per_connection = 64 << 20;
    config.server.bodies.in_flight = 64 << 20;
    let app = crate::helpers::spawn_app_with(stand_in, config).await;
    let mut raw = RawH2::connect(&app).await;
    // Let the server's SETTINGS (with its stream limit) be acknowledged.
    raw.resets(Duration::from_millis(200), |_| false).await;
    let limit = 256;
    let over = 8;
    // Every stream is left open (headers, no body), so each counts.
    for n in 0..(limit + over) {
        raw.call(2 * n + 1, &[], false).await;
    }
    let refused = raw
        .resets(Duration::from_secs(10), |seen| seen.len() >= over as usize)
        .await;
    assert_eq!(
        refused.len(),
        over as usize,
        "one refusal per stream over the limit: {refused:?}"
    );
    for (kind, stream, code) in &refused {
        assert_eq!(
            (*kind, *code),
            (RST_STREAM, REFUSED_STREAM),
            "stream {stream}"
        );
        assert!(*stream > 2 * limit, "stream {stream} was within the limit");
    }
    assert!(app.stand_in.received().is_empty());
    still_serving(&app).await;
}

#[tokio::test]
async fn control_characters_in_metadata_reset_the_stream() {
    let app = spawn_app().await;
    let mut raw = RawH2::connect(&app).await;
    raw.call(1, &[(b"authorization", b"Bearer tok\x01en")], true)
        .await;
    raw.call(3, &[(b"x-note", b"line\r\nbreak")], true).await;
    let resets = raw
        .resets(Duration::from_secs(5), |seen| {
            seen.len() >= 2 || seen.iter().any(|(kind, ..)| *kind == GOAWAY)
        })
        .await;
    assert!(!resets.is_empty(), "no refusal at all");
    for (kind, stream, code) in &resets {
        assert_eq!(*code, PROTOCOL_ERROR, "{kind} on stream {stream}");
    }
    assert!(app.stand_in.received().is_empty());
    still_serving(&app).await;
}

#[tokio::test]
async fn non_ascii_bearer_metadata_is_malformed_authorization() {
    use tonic::codegen::http;
    use tower::ServiceExt as _;

    let mut app = spawn_app().await;
    // UTF-8 is legal in an HTTP/2 header value (obs-text), not in a token.
    let raw_request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{}/cognito.idp.v1.IdentityProviderService/GetUserAuthFactors",
            app.addr
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header(
            "authorization",
            http::HeaderValue::from_bytes("Bearer tökén".as_bytes()).unwrap(),
        )
        // One gRPC frame holding the empty request message.
        .body(tonic::body::Body::new(String::from("\0\0\0\0\0")))
        .unwrap();
    let response = app.channel.clone().oneshot(raw_request).await.unwrap();
    let status = tonic::Status::from_header_map(response.headers()).expect("trailers-only");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let reason = tonic_types::StatusExt::get_details_error_info(&status)
        .unwrap()
        .reason;
    assert_eq!(reason, "MALFORMED_AUTHORIZATION_METADATA");
    assert!(app.stand_in.received().is_empty());
    // And the same connection still carries good calls.
    app.stand_in.always(crate::helpers::Reply::full_success());
    app.client
        .get_user_auth_factors(request(TOKEN))
        .await
        .unwrap();
    still_serving(&app).await;
}
