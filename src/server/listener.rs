//! The gRPC listener's front door, before tonic sees a connection: the
//! connection cap, a back-off when `accept` fails (out of descriptors or
//! memory), and a deadline for each connection's handshake (TLS when on, then
//! the HTTP/2 preface and the client's first SETTINGS). Also the process's
//! file-descriptor limit, raised to the hard one at start as Go's runtime does.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf as _, Bytes, BytesMut};
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::{Stream, StreamExt as _, wrappers::ReceiverStream};
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::{bodies::ConnectionShare, tls::Peer};
use crate::{
    base::metric_names::{
        ACCEPT_ERRORS, CONNECTIONS_OPEN, CONNECTIONS_REFUSED, HANDSHAKE_TIMEOUTS, MAX_CONNECTIONS,
    },
    base::telemetry::Every,
};

/// Default time a new connection gets to finish TLS (when on) and send the
/// HTTP/2 preface and its SETTINGS; grpc-go's `ConnectionTimeout` is 120 s,
/// nginx's `client_header_timeout` 60 s. A gRPC client does all of it in one
/// or two round trips, so 10 s is generous on any network a client of this
/// service sits on.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Descriptors the default connection cap keeps back beyond one per upstream
/// call the limiter admits (`--max-concurrent-requests`): the listeners, the
/// JWKS and OTLP clients' sockets, the standard streams, the allocator's and
/// the runtime's own.
pub(crate) const FD_RESERVE_BASE: u64 = 64;

/// Least time between two warnings of the same kind (refusals at the cap,
/// `accept` failing): an attacker can cause thousands a second.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// First back-off after `accept` fails for want of a resource; doubled per
/// failure up to [`ACCEPT_BACKOFF_MAX`], as Go's `net/http` does (5 ms to 1 s).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Longest back-off between two failing `accept`s (hyper's old accept loop
/// slept 1 s).
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Connections whose handshake is done, waiting for tonic to take them.
const HANDED_OVER: usize = 64;

/// The client connection preface of HTTP/2 (RFC 9113, section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The length of an HTTP/2 frame header.
const FRAME_HEADER: usize = 9;
/// The frame type of SETTINGS.
const SETTINGS: u8 = 0x4;
/// The largest frame HTTP/2 allows before SETTINGS raise it: a longer first
/// frame is an error that hyper reports itself.
const MAX_FIRST_FRAME: usize = 16_384;

/// How many connections the listener holds, and how long a handshake may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnectionLimits {
    /// Most client connections open at once, handshakes included.
    pub max_connections: usize,
    /// Time from `accept` to the end of the client's first SETTINGS frame.
    pub handshake_timeout: Duration,
    /// Each connection's share of the request bytes in flight.
    pub request_bytes_per_connection: usize,
}

/// The process's file-descriptor limit (`RLIMIT_NOFILE`) at start; `None`
/// is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit found at start.
    pub soft_was: Option<u64>,
    /// The soft limit now.
    pub soft: Option<u64>,
    /// The hard limit.
    pub hard: Option<u64>,
}

/// Raises the soft file-descriptor limit to the hard one, as Go's runtime
/// does at start: the soft limit is often 1024 for compatibility with
/// `select(2)`, which nothing here uses. A refusal leaves it as it was.
pub fn raise_fd_limit() -> FdLimit {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    let mut limit = FdLimit {
        soft_was: current,
        soft: current,
        hard: maximum,
    };
    // An unlimited hard limit cannot be the soft one on Linux (it must stay
    // under fs.nr_open); keep the soft one then.
    if let Some(hard) = maximum
        && current.is_some_and(|soft| soft < hard)
    {
        let raised = Rlimit {
            current: Some(hard),
            maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => limit.soft = Some(hard),
            Err(err) => {
                tracing::warn!(error = %err, hard, "cannot raise the file-descriptor limit")
            }
        }
    }
    limit
}

/// The default connection cap for a soft descriptor limit of `fd_soft`:
/// every descriptor but one per upstream call the limiter admits and
/// [`FD_RESERVE_BASE`] more, yet at least half of them. Unlimited: no cap
/// beyond what the kernel allows.
pub(crate) fn default_max_connections(
    fd_soft: Option<u64>,
    max_concurrent_requests: usize,
) -> usize {
    let Some(soft) = fd_soft else {
        return Semaphore::MAX_PERMITS;
    };
    let reserve = (max_concurrent_requests as u64)
        .saturating_add(FD_RESERVE_BASE)
        .min(soft / 2);
    usize::try_from(soft - reserve)
        .unwrap_or(usize::MAX)
        .clamp(1, Semaphore::MAX_PERMITS)
}

/// The connections to serve: accepted within the cap, handshake done, in the
/// order their handshakes finished. Accepting runs on a task of its own until
/// the stream is dropped, which closes the listening socket.
pub(crate) fn incoming(
    listener: TcpListener,
    limits: ConnectionLimits,
    tls: Option<TlsAcceptor>,
) -> impl Stream<Item = io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(HANDED_OVER);
    let max_connections = limits.max_connections.min(Semaphore::MAX_PERMITS);
    let admission = Admission {
        slots: Arc::new(Semaphore::new(max_connections)),
        max_connections,
        handshake_timeout: limits.handshake_timeout,
        request_bytes_per_connection: limits.request_bytes_per_connection,
        tls,
        tx,
        refusals_warned: Every::new(WARN_INTERVAL),
    };
    metrics::gauge!(MAX_CONNECTIONS).set(max_connections as f64);
    tokio::spawn(admission.accept_until_closed(listener));
    ReceiverStream::new(rx).map(Ok)
}

/// What admits connections.
struct Admission {
    slots: Arc<Semaphore>,
    max_connections: usize,
    handshake_timeout: Duration,
    request_bytes_per_connection: usize,
    tls: Option<TlsAcceptor>,
    tx: mpsc::Sender<Conn>,
    refusals_warned: Every,
}

impl Admission {
    /// Accepts until the receiving side is dropped. A failing `accept` backs
    /// off rather than spinning: out of descriptors, the listener stays
    /// readable and would fail again at once.
    async fn accept_until_closed(self, listener: TcpListener) {
        let mut backoff = ACCEPT_BACKOFF_MIN;
        let failures_warned = Every::new(WARN_INTERVAL);
        loop {
            let accepted = tokio::select! {
                biased;
                () = self.tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, _)) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    self.admit(stream);
                }
                // The peer gave up between SYN and accept: nothing to wait for.
                Err(err) if is_about_one_connection(&err) => {}
                Err(err) => {
                    let kind = accept_error_kind(&err);
                    metrics::counter!(ACCEPT_ERRORS, "error" => kind).increment(1);
                    if let Some(suppressed) = failures_warned.ready() {
                        tracing::warn!(
                            error = %err,
                            kind,
                            backoff = ?backoff,
                            suppressed,
                            "accepting connections failed; backing off"
                        );
                    }
                    tokio::select! {
                        () = self.tx.closed() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
            }
        }
    }

    /// Takes a slot for `stream` and runs its handshake on a task of its own,
    /// or closes it at once when every slot is taken.
    fn admit(&self, stream: TcpStream) {
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            drop(stream);
            metrics::counter!(CONNECTIONS_REFUSED).increment(1);
            if let Some(suppressed) = self.refusals_warned.ready() {
                tracing::warn!(
                    max_connections = self.max_connections,
                    suppressed,
                    "connection refused: at the connection cap (--max-connections)"
                );
            }
            return;
        };
        let slot = Slot::new(permit);
        let _ = stream.set_nodelay(true);
        let info = ConnInfo {
            tcp: stream.connect_info(),
            share: ConnectionShare::new(self.request_bytes_per_connection),
            peer: Peer::Uncertified,
        };
        let handshake = Handshake {
            timeout: self.handshake_timeout,
            tls: self.tls.clone(),
            tx: self.tx.clone(),
        };
        tokio::spawn(handshake.run(stream, info, slot));
    }
}

/// One connection's handshake.
struct Handshake {
    timeout: Duration,
    tls: Option<TlsAcceptor>,
    tx: mpsc::Sender<Conn>,
}

impl Handshake {
    /// Finishes TLS and reads the client's opening within the deadline, then
    /// hands the connection over; closes it otherwise.
    async fn run(self, stream: TcpStream, info: ConnInfo, slot: Slot) {
        let opened = tokio::time::timeout(self.timeout, open(stream, self.tls)).await;
        match opened {
            Ok(Ok((io, opening))) => {
                let mut info = info;
                if let Transport::Tls(tls) = &io {
                    let leaf = tls.get_ref().1.peer_certificates().and_then(<[_]>::first);
                    if let Some(leaf) = leaf {
                        info.peer = Peer::of(leaf);
                    }
                }
                let conn = Conn {
                    opening,
                    io,
                    info,
                    served: false,
                    _slot: slot,
                };
                // An error means the server stopped accepting: the connection
                // is reset (see `Conn`'s drop).
                let _ = self.tx.send(conn).await;
            }
            Ok(Err(err)) => tracing::debug!(error = %err, "handshake failed"),
            Err(_) => {
                metrics::counter!(HANDSHAKE_TIMEOUTS).increment(1);
                tracing::debug!(timeout = ?self.timeout, "handshake timed out; connection closed");
            }
        }
    }
}

/// TLS (when on), then the client's opening bytes.
async fn open(stream: TcpStream, tls: Option<TlsAcceptor>) -> io::Result<(Transport, Bytes)> {
    let mut io = match tls {
        Some(acceptor) => Transport::Tls(Box::new(acceptor.accept(stream).await?)),
        None => Transport::Plain(stream),
    };
    let mut opening = BytesMut::with_capacity(PREFACE.len() + FRAME_HEADER + 64);
    while !opening_read(&opening) {
        if io.read_buf(&mut opening).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok((io, opening.freeze()))
}

/// Whether `bytes` hold the client's whole opening (the preface and a SETTINGS
/// frame), or enough to tell they never will: then hyper gets them, and
/// refuses the connection as it always has.
fn opening_read(bytes: &[u8]) -> bool {
    let seen = bytes.len().min(PREFACE.len());
    if bytes[..seen] != PREFACE[..seen] {
        return true;
    }
    let Some(header) = bytes.get(PREFACE.len()..PREFACE.len() + FRAME_HEADER) else {
        return false;
    };
    let length =
        usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
    if header[3] != SETTINGS || length > MAX_FIRST_FRAME {
        return true;
    }
    bytes.len() >= PREFACE.len() + FRAME_HEADER + length
}

/// Per-connection `accept` errors: the next `accept` may well succeed.
fn is_about_one_connection(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// The metric label of an `accept` error.
fn accept_error_kind(err: &io::Error) -> &'static str {
    use rustix::io::Errno;
    match err.raw_os_error().map(Errno::from_raw_os_error) {
        Some(Errno::MFILE) => "EMFILE",
        Some(Errno::NFILE) => "ENFILE",
        Some(Errno::NOMEM) => "ENOMEM",
        Some(Errno::NOBUFS) => "ENOBUFS",
        _ => "other",
    }
}

/// A slot under the cap, given back (and the gauge lowered) when its
/// connection closes.
#[derive(Debug)]
struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit) -> Self {
        metrics::gauge!(CONNECTIONS_OPEN).increment(1.0);
        Self { _permit: permit }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        metrics::gauge!(CONNECTIONS_OPEN).decrement(1.0);
    }
}

/// The byte stream under a connection: TCP, or TLS over TCP.
#[derive(Debug)]
enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// A client connection past its handshake: what tonic serves. The opening
/// bytes read during the handshake are read again first, by hyper.
#[derive(Debug)]
pub(crate) struct Conn {
    opening: Bytes,
    io: Transport,
    info: ConnInfo,
    /// Whether hyper has read from it.
    served: bool,
    _slot: Slot,
}

/// A connection the server never served (it stopped accepting with the
/// connection on its way to hyper) is reset, not closed: its client may
/// have sent a call already, and a reset tells it, as the kernel does for
/// connections left in a closed listener's backlog, that nothing was
/// processed (UNAVAILABLE), where a clean close mid-call reads as a
/// protocol error.
impl Drop for Conn {
    fn drop(&mut self) {
        if self.served {
            return;
        }
        let tcp = match &self.io {
            Transport::Plain(tcp) => tcp,
            Transport::Tls(tls) => tls.get_ref().0,
        };
        // A zero linger never blocks: the close sends RST at once.
        let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
    }
}

/// What each request of a connection finds in its extensions.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    /// The peer's and our addresses.
    #[expect(dead_code, reason = "kept for what tonic's own connect info gives")]
    pub(crate) tcp: TcpConnectInfo,
    /// What its verified client certificate says (mTLS).
    pub(crate) peer: Peer,
    /// The connection's share of the request bytes in flight.
    pub(crate) share: ConnectionShare,
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.served = true;
        if !self.opening.is_empty() {
            let n = self.opening.len().min(buf.remaining());
            buf.put_slice(&self.opening[..n]);
            self.opening.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.served = true;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.served = true;
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Runs `$call` on whichever stream the transport holds.
macro_rules! either {
    ($self:expr, $io:ident => $call:expr) => {
        match $self {
            Transport::Plain($io) => $call,
            Transport::Tls($io) => $call,
        }
    };
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        either!(self.get_mut(), io => Pin::new(io).poll_read(cx, buf))
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        either!(self.get_mut(), io => Pin::new(io).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        either!(self.get_mut(), io => Pin::new(io).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        either!(self, io => io.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        either!(self.get_mut(), io => Pin::new(io).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        either!(self.get_mut(), io => Pin::new(io).poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real client's opening: the preface, then SETTINGS with two entries.
    fn opening() -> Vec<u8> {
        let mut bytes = PREFACE.to_vec();
        bytes.extend_from_slice(&[0, 0, 12, SETTINGS, 0, 0, 0, 0, 0]);
        bytes.extend_from_slice(&[0, 2, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]);
        bytes
    }

    #[test]
    fn the_opening_is_read_to_the_end_of_the_first_settings_frame() {
        let whole = opening();
        for cut in 0..whole.len() {
            assert!(!opening_read(&whole[..cut]), "done after {cut} bytes");
        }
        assert!(opening_read(&whole));
        // An empty SETTINGS frame is a whole opening too.
        let mut empty = PREFACE.to_vec();
        empty.extend_from_slice(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0]);
        assert!(opening_read(&empty));
    }

    #[test]
    fn what_is_not_an_http2_opening_goes_to_hyper_at_once() {
        assert!(opening_read(b"GET / HTTP/1.1\r\n"));
        assert!(
            opening_read(b"\x16\x03\x01"),
            "a ClientHello on a plaintext port"
        );
        let mut headers_first = PREFACE.to_vec();
        headers_first.extend_from_slice(&[0, 0, 4, 0x1, 0, 0, 0, 0, 1]);
        assert!(opening_read(&headers_first));
        let mut huge = PREFACE.to_vec();
        huge.extend_from_slice(&[0x01, 0, 0, SETTINGS, 0, 0, 0, 0, 0]);
        assert!(opening_read(&huge), "a first frame over 16 KiB");
    }

    #[test]
    fn the_default_cap_keeps_a_reserve_for_upstream_sockets() {
        assert_eq!(default_max_connections(Some(1_048_576), 1000), 1_047_512);
        assert_eq!(default_max_connections(Some(65_536), 1000), 64_472);
        // Never more than half the descriptors for the reserve.
        assert_eq!(default_max_connections(Some(600), 1000), 300);
        assert_eq!(default_max_connections(Some(1), 1000), 1);
        assert_eq!(default_max_connections(None, 1000), Semaphore::MAX_PERMITS);
    }

    #[test]
    fn resource_errors_are_named_and_connection_errors_skipped() {
        use rustix::io::Errno;
        let os = |errno: Errno| io::Error::from_raw_os_error(errno.raw_os_error());
        assert_eq!(accept_error_kind(&os(Errno::MFILE)), "EMFILE");
        assert_eq!(accept_error_kind(&os(Errno::NFILE)), "ENFILE");
        assert_eq!(accept_error_kind(&os(Errno::NOMEM)), "ENOMEM");
        assert!(!is_about_one_connection(&os(Errno::MFILE)));
        assert!(is_about_one_connection(&os(Errno::CONNABORTED)));
    }
}
