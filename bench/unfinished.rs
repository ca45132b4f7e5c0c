//! A hostile HTTP/2 client, shared by the tests (`tests/api/bodies.rs`) and
//! the benchmark's memory probe (`loadgen --mode hold`): it opens calls
//! whose gRPC message announces more bytes than it ever sends, sends as
//! much of it as the server's flow control lets it (never buffering any in
//! this process), and never ends them. Built on the `h2` crate, the HTTP/2
//! implementation under hyper.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use bytes::{BufMut as _, Bytes, BytesMut};
use tokio::{net::TcpStream, task::JoinSet};

/// How long a call waits for room under the server's stream limit before
/// it is left unopened.
const OPEN_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// What the server did to the held calls so far.
#[derive(Debug, Default)]
pub(crate) struct Held {
    /// Calls opened (their headers sent).
    pub(crate) opened: AtomicUsize,
    /// Calls left unopened: the server's stream limit
    /// (`SETTINGS_MAX_CONCURRENT_STREAMS`) had no room for them.
    pub(crate) unopened: AtomicUsize,
    /// Body bytes the server's flow control let this client send.
    pub(crate) sent_bytes: AtomicUsize,
    /// Calls the server answered (with a status) before the body ended.
    pub(crate) answered: AtomicUsize,
    /// Calls the server reset without an answer.
    pub(crate) reset: AtomicUsize,
    /// Answers that have ended (their trailers, a reset or a trailers-only
    /// answer): a streamed answer's headers come first, and its call stays
    /// open until then.
    pub(crate) ended: AtomicUsize,
    /// The `grpc-status` in the trailers of each streamed answer that ended
    /// with them.
    pub(crate) trailer_codes: std::sync::Mutex<Vec<String>>,
    /// The `grpc-status` of each answer (empty when it had none).
    pub(crate) codes: std::sync::Mutex<Vec<String>>,
}

/// Calls held open on `connections` connections to `addr`, `calls` each, on
/// `path`: each announces `announced` message bytes and offers `offered` of
/// them. Dropping it closes every connection.
#[derive(Debug)]
pub(crate) struct Holding {
    /// What happened to the calls.
    pub(crate) held: Arc<Held>,
    tasks: JoinSet<()>,
}

impl Holding {
    /// Opens the calls; returns once every call has been opened (its
    /// headers sent and the gRPC frame's prefix queued).
    pub(crate) async fn open(
        addr: SocketAddr,
        path: &str,
        connections: usize,
        calls: usize,
        announced: u32,
        offered: usize,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let held = Arc::new(Held::default());
        let mut tasks = JoinSet::new();
        for _ in 0..connections {
            let tcp = TcpStream::connect(addr).await?;
            let (mut sender, connection) = h2::client::handshake(tcp).await?;
            tasks.spawn(async move {
                let _ = connection.await;
            });
            for n in 0..calls {
                // Calls the server's stream limit has no room for would wait
                // in this client until a held one ends: left unopened.
                let ready = std::future::poll_fn(|cx| sender.poll_ready(cx));
                match tokio::time::timeout(OPEN_WAIT, ready).await {
                    Ok(ready) => ready?,
                    Err(_) => {
                        held.unopened.fetch_add(calls - n, Ordering::Relaxed);
                        break;
                    }
                }
                let request = tonic::codegen::http::Request::post(format!("http://{addr}{path}"))
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .body(())
                    .expect("a valid request");
                let (response, stream) = sender.send_request(request, false)?;
                held.opened.fetch_add(1, Ordering::Relaxed);
                let held = held.clone();
                tasks.spawn(async move {
                    let pump = pump(stream, announced, offered, &held.sent_bytes);
                    tokio::pin!(response, pump);
                    // The pump ends only when the server stops the stream.
                    let mut pumped = false;
                    let answer = tokio::select! {
                        answer = &mut response => answer,
                        () = &mut pump => {
                            pumped = true;
                            response.await
                        }
                    };
                    let Ok(answer) = answer else {
                        held.reset.fetch_add(1, Ordering::Relaxed);
                        held.ended.fetch_add(1, Ordering::Relaxed);
                        return;
                    };
                    let code = answer.headers().get("grpc-status");
                    let code = code.and_then(|c| c.to_str().ok()).unwrap_or_default();
                    held.codes.lock().unwrap().push(code.to_owned());
                    held.answered.fetch_add(1, Ordering::Relaxed);
                    // Still sending (never ending) while the answer streams.
                    let mut body = answer.into_body();
                    let drained = async {
                        while let Some(Ok(data)) = body.data().await {
                            let _ = body.flow_control().release_capacity(data.len());
                        }
                        if let Ok(Some(trailers)) = body.trailers().await {
                            let code = trailers.get("grpc-status");
                            let code = code.and_then(|c| c.to_str().ok()).unwrap_or_default();
                            held.trailer_codes.lock().unwrap().push(code.to_owned());
                        }
                    };
                    tokio::select! {
                        () = drained => {}
                        () = &mut pump, if !pumped => {}
                    }
                    held.ended.fetch_add(1, Ordering::Relaxed);
                });
            }
        }
        Ok(Self { held, tasks })
    }

    /// How many calls are still held (neither answered nor reset).
    pub(crate) fn still_held(&self) -> usize {
        let held = &self.held;
        held.opened.load(Ordering::Relaxed)
            - held.answered.load(Ordering::Relaxed)
            - held.reset.load(Ordering::Relaxed)
    }

    /// Closes every connection.
    pub(crate) fn close(mut self) {
        self.tasks.abort_all();
    }
}

/// Sends the message's prefix, then zeros as the stream's send window
/// opens, up to `offered` bytes; then holds the stream open for ever.
async fn pump(
    mut stream: h2::SendStream<Bytes>,
    announced: u32,
    offered: usize,
    sent: &AtomicUsize,
) {
    // The prefix and the message's first bytes in one frame, as gRPC
    // clients send them.
    let zeros = Bytes::from(vec![0u8; 16 * 1024]);
    let first = offered.min(zeros.len() - 5);
    let mut opening = BytesMut::with_capacity(5 + first);
    opening.put_u8(0);
    opening.put_u32(announced);
    opening.put_slice(&zeros[..first]);
    if stream.send_data(opening.freeze(), false).is_err() {
        return;
    }
    sent.fetch_add(first, Ordering::Relaxed);
    let mut left = offered - first;
    while left > 0 {
        stream.reserve_capacity(left.min(zeros.len()));
        let granted = match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
            Some(Ok(granted)) if granted > 0 => granted.min(left),
            Some(Ok(_)) => continue,
            _ => return,
        };
        if stream.send_data(zeros.slice(..granted), false).is_err() {
            return;
        }
        sent.fetch_add(granted, Ordering::Relaxed);
        left -= granted;
    }
    std::future::pending::<()>().await;
}
