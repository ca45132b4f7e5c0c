//! A misbehaving Cognito: each fault gets its documented status within a
//! bound, nothing is left in flight, and once Cognito behaves again the very
//! next call succeeds.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tonic::Code;

use crate::helpers::{
    AWS_JSON, LocalMetrics, Reply, StandIn, TOKEN, TestApp, failed_call, next_call_succeeds,
    request, spawn_app, spawn_app_with, test_config,
};

/// What a broken Cognito endpoint does with each connection.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Nothing listens: connection refused.
    Refuse,
    /// Reads the request and closes without a byte of answer.
    HangUp,
    /// Reads the request and never answers.
    Silence,
    /// Answers the headers, then one body byte every 100 ms.
    Drip,
    /// Answers the headers and half the body, then resets the connection.
    ResetMidBody,
}

/// A Cognito endpoint with a [`Fault`] until [`Faulty::heal`], after which
/// every new connection is passed through to the stand-in.
struct Faulty {
    addr: SocketAddr,
    endpoint: String,
    healed: Arc<AtomicBool>,
    upstream: SocketAddr,
    fault: Fault,
}

impl Faulty {
    async fn start(fault: Fault, stand_in: &StandIn) -> Self {
        let upstream: SocketAddr = stand_in
            .endpoint
            .trim_start_matches("http://")
            .parse()
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let faulty = Self {
            addr,
            endpoint: format!("http://{addr}"),
            healed: Arc::new(AtomicBool::new(false)),
            upstream,
            fault,
        };
        match fault {
            // Free the port: connecting to it is refused until `heal`.
            Fault::Refuse => drop(listener),
            _ => faulty.serve(listener),
        }
        faulty
    }

    fn serve(&self, listener: TcpListener) {
        let (healed, upstream, fault) = (Arc::clone(&self.healed), self.upstream, self.fault);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                if healed.load(Ordering::SeqCst) {
                    tokio::spawn(pass_through(socket, upstream));
                } else {
                    tokio::spawn(misbehave(socket, fault));
                }
            }
        });
    }

    /// From now on, new connections reach the stand-in.
    async fn heal(&self) {
        self.healed.store(true, Ordering::SeqCst);
        if let Fault::Refuse = self.fault {
            self.serve(TcpListener::bind(self.addr).await.unwrap());
        }
    }
}

async fn pass_through(mut socket: TcpStream, upstream: SocketAddr) {
    if let Ok(mut upstream) = TcpStream::connect(upstream).await {
        let _ = tokio::io::copy_bidirectional(&mut socket, &mut upstream).await;
    }
}

async fn misbehave(mut socket: TcpStream, fault: Fault) {
    let mut request = [0u8; 4096];
    let _ = socket.read(&mut request).await;
    let head = |length: usize| {
        format!("HTTP/1.1 200 OK\r\ncontent-type: {AWS_JSON}\r\ncontent-length: {length}\r\n\r\n")
    };
    match fault {
        Fault::Refuse | Fault::HangUp => {}
        Fault::Silence => {
            // Held open, never answered, until the client gives up.
            let _ = socket.read(&mut request).await;
        }
        Fault::Drip => {
            if socket.write_all(head(100_000).as_bytes()).await.is_err() {
                return;
            }
            for _ in 0..600 {
                if socket.write_all(b" ").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Fault::ResetMidBody => {
            let body = "{\"Username\": \"alice\", \"ConfiguredUserAuthFactors\": [\"PASS";
            let _ = socket.write_all(head(body.len() * 2).as_bytes()).await;
            let _ = socket.write_all(body.as_bytes()).await;
            // Linger 0: close with RST, not FIN.
            let _ = socket.set_zero_linger();
        }
    }
}

/// The whole story for one fault: the documented code and reason within
/// `bound`, nothing left in flight, and after healing the next call succeeds.
async fn fault_then_recovery(fault: Fault, code: Code, reason: &str, bound: Duration) {
    let metrics = LocalMetrics::install();
    let stand_in = StandIn::start().await;
    stand_in.always(Reply::full_success());
    let faulty = Faulty::start(fault, &stand_in).await;
    let mut config = test_config(&faulty.endpoint);
    config.upstream.attempt_timeout = Duration::from_millis(300);
    config.upstream.call_timeout = Duration::from_millis(800);
    let mut app = spawn_app_with(stand_in, config).await;
    expect(&mut app, code, reason, bound).await;
    assert!(
        app.stand_in.received().is_empty(),
        "{fault:?} reached the stand-in"
    );
    metrics.until_nothing_in_flight().await;
    faulty.heal().await;
    next_call_succeeds(&mut app).await;
    metrics.until_nothing_in_flight().await;
}

#[tokio::test]
async fn refused_connections_are_unavailable_then_recover() {
    fault_then_recovery(
        Fault::Refuse,
        Code::Unavailable,
        "UPSTREAM_UNREACHABLE",
        Duration::from_secs(3),
    )
    .await;
}

#[tokio::test]
async fn a_hang_up_without_an_answer_is_unavailable_then_recovers() {
    fault_then_recovery(
        Fault::HangUp,
        Code::Unavailable,
        "UPSTREAM_UNREACHABLE",
        Duration::from_secs(3),
    )
    .await;
}

#[tokio::test]
async fn a_reset_in_the_middle_of_the_body_is_unavailable_then_recovers() {
    fault_then_recovery(
        Fault::ResetMidBody,
        Code::Unavailable,
        "UPSTREAM_UNREACHABLE",
        Duration::from_secs(3),
    )
    .await;
}

#[tokio::test]
async fn silence_times_out_then_recovers() {
    fault_then_recovery(
        Fault::Silence,
        Code::DeadlineExceeded,
        "UPSTREAM_TIMEOUT",
        Duration::from_secs(3),
    )
    .await;
}

#[tokio::test]
async fn a_slow_drip_of_bytes_times_out_then_recovers() {
    fault_then_recovery(
        Fault::Drip,
        Code::DeadlineExceeded,
        "UPSTREAM_TIMEOUT",
        Duration::from_secs(3),
    )
    .await;
}

/// Calls once, checks code, reason and that it came within `bound`.
async fn expect(app: &mut TestApp, code: Code, reason: &str, bound: Duration) {
    let (status, info) = failed_call(app, bound).await;
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(info.reason, reason);
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
