//! The request bytes in flight: how much of the request bodies still
//! arriving the server holds, and for how long. Envoy's
//! `per_connection_buffer_limit_bytes` and overload manager are the model.
//!
//! - **Admitted before tonic.** A unary request's body (every RPC but
//!   reflection's stream) is read whole here, each byte charged to a budget
//!   across all connections (`--max-request-bytes-in-flight`) and to its
//!   connection's share of it (`--max-connection-request-bytes`), and only
//!   then handed to tonic, whole. The room goes back at that moment: past
//!   it, the call's message is bounded by the method's size limit and the
//!   calls by `--max-concurrent-requests`.
//! - **Refused, never waited for.** A frame that finds no room in either
//!   fails its call with `REQUEST_BYTES_EXHAUSTED` at once, and the stream
//!   is reset, its data dropped. A body waiting for room would leave its
//!   frames unread, holding HTTP/2's connection window, and the bodies that
//!   hold room would stall behind it. A stream is charged from its first
//!   frame: one not yet sending costs only its headers, bounded by the
//!   stream limit, so a burst of small calls on one connection is never
//!   refused for the bodies of its neighbours.
//! - **Health has a reserve of its own** ([`HEALTH_RESERVE_BYTES`]) in
//!   place of the budget, so a flood that holds the whole budget does not
//!   also fail the probes of kubelet and the load balancers.
//! - **Reflection** (a bidirectional stream) passes through, its messages
//!   bounded by its decoder's limit, at most [`REFLECTION_STREAMS`] at once,
//!   each ended at the read timeout with `DEADLINE_EXCEEDED`.
//! - **A body read timeout** (`--request-body-timeout`): a body not arrived
//!   whole that long after its request fails the call with
//!   `DEADLINE_EXCEEDED` and `REQUEST_BODY_TIMEOUT`, and the stream is
//!   reset. Only the bytes are charged, and only from a stream's first
//!   frame: the state of streams not yet sending (a few KiB each, at most
//!   256 per connection) is bounded by the stream limit alone.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Status, body::Body, codegen::http};
use tower::{Layer, Service};

use crate::{
    base::metric_names::{REQUEST_BODY_BYTES, REQUEST_BODY_REFUSALS, REQUEST_BODY_TIMEOUTS},
    error::Error,
    rpc::call::CallContext,
};

/// 1 MiB.
const MIB: usize = 1024 * 1024;

/// Default budget for request bytes in flight across all connections:
/// with 16 connections each at its share (32 MiB) it leaves room for every
/// other caller (BENCHMARKS.md, the memory probe: 16 flooding connections
/// add 48 MiB to the RSS, 32 add 63 MiB, the rest of it the streams' state
/// this does not count).
pub const DEFAULT_REQUEST_BYTES_IN_FLIGHT: usize = 40 * MIB;

/// Default share of one connection: room for the largest message (a 1 MiB
/// Check) and its frames, twice over.
pub const DEFAULT_CONNECTION_REQUEST_BYTES: usize = 2 * MIB;

/// Default time a request's body gets to arrive whole: gRPC clients send a
/// unary request at once, so 10 s is generous on any network a caller of
/// this service sits on (nginx's `client_body_timeout` is 60 s between two
/// reads; this bounds the whole body).
pub const DEFAULT_REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest DATA frame the server accepts (`SETTINGS_MAX_FRAME_SIZE`,
/// set to HTTP/2's initial value).
pub(crate) const MAX_FRAME_BYTES: u32 = 16 * 1024;

/// What a body still arriving costs the server besides its bytes, charged
/// from its first frame to its end: its stream's state in HTTP/2 and
/// hyper, its task and this layer's future. Without it, thousands of
/// bodies each holding a few bytes would cost far more than the budget.
pub(crate) const STREAM_BYTES: usize = 4 * 1024;

/// The least share a connection may have: the largest message the server
/// decodes, its 5-byte prefix, a frame and a stream's cost.
pub const MIN_CONNECTION_REQUEST_BYTES: usize =
    super::MAX_CHECK_REQUEST_BYTES + 5 + MAX_FRAME_BYTES as usize + STREAM_BYTES;

/// The room health's bodies draw on in place of the budget: a thousand
/// health calls being read at once (a health request is a few bytes).
const HEALTH_RESERVE_BYTES: usize = 16 * MIB;

/// Most reflection streams open at once (grpcurl opens one per command);
/// more are refused with `OVERLOADED`.
pub(crate) const REFLECTION_STREAMS: usize = 32;

/// The path prefix of the gRPC health service.
const HEALTH_PATH: &str = "/grpc.health.v1.Health/";

/// The path prefixes of the reflection services (v1 and v1alpha).
const REFLECTION_PATHS: [&str; 2] = [
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// How much of the request bodies the server holds, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// Most request bytes held across all connections.
    pub in_flight: usize,
    /// Most request bytes one connection's requests hold.
    pub per_connection: usize,
    /// Time from a request's arrival to the end of its body.
    pub read_timeout: Duration,
}

impl Default for BodyLimits {
    fn default() -> Self {
        Self {
            in_flight: DEFAULT_REQUEST_BYTES_IN_FLIGHT,
            per_connection: DEFAULT_CONNECTION_REQUEST_BYTES,
            read_timeout: DEFAULT_REQUEST_BODY_TIMEOUT,
        }
    }
}

/// One connection's share of the budget, made by the listener for each
/// connection and found by each of its requests in their connect info.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionShare(Arc<Semaphore>);

impl ConnectionShare {
    /// A share of `bytes`.
    pub(crate) fn new(bytes: usize) -> Self {
        Self(Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))))
    }
}

/// Finds a request's connection share in its extensions (where the
/// listener's connect info puts it).
pub(crate) type FindShare = fn(&http::Extensions) -> Option<&ConnectionShare>;

/// Reads each unary request's body whole within the budgets before the
/// routes see it.
#[derive(Debug, Clone)]
pub(crate) struct BodyLayer {
    find_share: FindShare,
    in_flight: Arc<Semaphore>,
    health_reserve: Arc<Semaphore>,
    reflection: Arc<Semaphore>,
    read_timeout: Duration,
}

impl BodyLayer {
    /// The layer for `limits`, whose per-connection share the listener
    /// hands out and `find_share` finds.
    pub(crate) fn new(limits: &BodyLimits, find_share: FindShare) -> Self {
        Self {
            find_share,
            in_flight: Arc::new(Semaphore::new(limits.in_flight.min(Semaphore::MAX_PERMITS))),
            health_reserve: Arc::new(Semaphore::new(HEALTH_RESERVE_BYTES)),
            reflection: Arc::new(Semaphore::new(REFLECTION_STREAMS)),
            read_timeout: limits.read_timeout,
        }
    }
}

impl<S> Layer<S> for BodyLayer {
    type Service = Bodies<S>;

    fn layer(&self, inner: S) -> Bodies<S> {
        Bodies {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`BodyLayer`] wraps around the routes.
#[derive(Debug, Clone)]
pub(crate) struct Bodies<S> {
    inner: S,
    layer: BodyLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<http::Request<Body>> for Bodies<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone that was made ready is the one called.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let context = request.extensions().get::<Arc<CallContext>>().cloned();
        let path = request.uri().path();
        if REFLECTION_PATHS
            .iter()
            .any(|prefix| path.starts_with(prefix))
        {
            let Ok(slot) = self.layer.reflection.clone().try_acquire_owned() else {
                return Box::pin(std::future::ready(Ok(refusal(
                    Error::Overloaded,
                    context.as_deref(),
                ))));
            };
            let deadline = tokio::time::Instant::now() + self.layer.read_timeout;
            let answer = inner.call(request);
            return Box::pin(async move {
                let response = answer.await?;
                Ok(response.map(|body| Body::new(Streamed::new(body, slot, deadline))))
            });
        }
        let budget = if path.starts_with(HEALTH_PATH) {
            &self.layer.health_reserve
        } else {
            &self.layer.in_flight
        };
        let share = (self.layer.find_share)(request.extensions()).map(|share| share.0.clone());
        let room = Room::new([share, Some(budget.clone())]);
        let limit = message_limit(path);
        let deadline = tokio::time::Instant::now() + self.layer.read_timeout;
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let read = read_whole(body, room, limit);
            tokio::pin!(read);
            // A body already here (nearly every one) is read without a
            // timer; one still arriving is read under its deadline.
            let read = match poll_once(read.as_mut()).await {
                Poll::Ready(read) => Ok(read),
                Poll::Pending => tokio::time::timeout_at(deadline, read).await,
            };
            match read {
                Ok(Ok(body)) => inner.call(http::Request::from_parts(parts, body)).await,
                Ok(Err(Read::Refused)) => {
                    metrics::counter!(REQUEST_BODY_REFUSALS).increment(1);
                    Ok(refusal(Error::RequestBytesExhausted, context.as_deref()))
                }
                Ok(Err(Read::Failed(status))) => Ok(status.into_http()),
                Err(_elapsed) => {
                    metrics::counter!(REQUEST_BODY_TIMEOUTS).increment(1);
                    Ok(refusal(Error::RequestBodyTimeout, context.as_deref()))
                }
            }
        })
    }
}

/// `future` polled once: its output, if it has one already.
async fn poll_once<F: Future>(mut future: Pin<&mut F>) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await
}

/// The largest message the method at `path` decodes, where this service
/// sets one (unknown paths' are left to tonic).
fn message_limit(path: &str) -> Option<usize> {
    let service = path.strip_prefix('/')?.split('/').next()?;
    if service == crate::base::wire::SERVICE_NAME {
        Some(crate::base::wire::MAX_REQUEST_BYTES)
    } else if service == super::AUTHZ_SERVICE {
        Some(super::MAX_CHECK_REQUEST_BYTES)
    } else if HEALTH_PATH
        .strip_prefix('/')
        .and_then(|p| p.strip_suffix('/'))
        == Some(service)
    {
        Some(super::MAX_HEALTH_REQUEST_BYTES)
    } else {
        None
    }
}

/// The answer to a call refused here with `err`, which its log line names.
fn refusal<B: Default>(err: Error, context: Option<&CallContext>) -> http::Response<B> {
    let response = err.to_status().into_http();
    if let Some(context) = context {
        context.set_error(err);
    }
    response
}

/// Why a body was not read whole.
enum Read {
    /// A frame found no room.
    Refused,
    /// The body itself failed (the client reset its stream).
    Failed(Status),
}

/// Reads `body` whole, each byte charged to `room`; the room is given back
/// when this returns. A body that came in one frame is passed on as it is;
/// one in several is copied into one buffer, whose capacity is what is
/// charged, sized by the message's prefix. Once the message's 5-byte prefix announces more than `limit`,
/// reading stops and what was read is passed on: the decoder refuses the
/// call from that prefix (`REQUEST_TOO_LARGE`), as it does unbuffered.
async fn read_whole(mut body: Body, mut room: Room, limit: Option<usize>) -> Result<Body, Read> {
    let mut first: Option<Bytes> = None;
    let mut rest = Vec::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let data = match frame.map_err(Read::Failed)?.into_data() {
            Ok(data) if data.is_empty() => continue,
            Ok(data) => data,
            Err(frame) => {
                trailers = frame.into_trailers().ok();
                continue;
            }
        };
        if !room.is_held() {
            room.take(STREAM_BYTES + data.len())?;
            first = Some(data);
        } else {
            let held = first.as_ref().map_or(0, Bytes::len);
            let wanted = rest.len() + held + data.len();
            if rest.capacity() < wanted {
                // The whole message as its prefix announces it (the limit
                // was checked below), else doubling as a Vec grows; charged
                // for what it allocates.
                let read = first.as_deref().unwrap_or(&rest);
                let grown = announced(read)
                    .map(|len| len + 5)
                    .filter(|&message| message >= wanted)
                    .unwrap_or_else(|| (rest.capacity() * 2).max(wanted));
                room.take(grown - rest.capacity())?;
                rest.reserve_exact(grown - rest.len());
            }
            if let Some(first) = first.take() {
                rest.extend_from_slice(&first);
            }
            rest.extend_from_slice(&data);
        }
        let read = first.as_deref().unwrap_or(&rest);
        if limit.is_some_and(|limit| announced(read).is_some_and(|len| len > limit)) {
            break;
        }
        if !body.is_end_stream() {
            room.publish();
        }
    }
    let data = first.unwrap_or_else(|| Bytes::from(rest));
    Ok(Body::new(Whole {
        data: (!data.is_empty()).then_some(data),
        trailers,
    }))
}

/// The length a gRPC message's 5-byte prefix announces, once it is there.
fn announced(read: &[u8]) -> Option<usize> {
    let len: [u8; 4] = read.get(1..5)?.try_into().ok()?;
    usize::try_from(u32::from_be_bytes(len)).ok()
}

/// The room a body holds: in its connection's share (none for a
/// connection that is not the listener's) and in the budget.
struct Room {
    rooms: [Option<Arc<Semaphore>>; 2],
    held: [Option<OwnedSemaphorePermit>; 2],
    bytes: usize,
    /// How much of it the gauge shows.
    published: usize,
}

impl Room {
    fn new(rooms: [Option<Arc<Semaphore>>; 2]) -> Self {
        Self {
            rooms,
            held: [None, None],
            bytes: 0,
            published: 0,
        }
    }

    fn is_held(&self) -> bool {
        self.bytes > 0
    }

    /// `bytes` more of room in both, if both have it now.
    fn take(&mut self, bytes: usize) -> Result<(), Read> {
        let permits = u32::try_from(bytes).map_err(|_| Read::Refused)?;
        let mut taken = [None, None];
        for (slot, room) in taken.iter_mut().zip(&self.rooms) {
            if let Some(room) = room {
                let permit = room.clone().try_acquire_many_owned(permits);
                *slot = Some(permit.map_err(|_| Read::Refused)?);
            }
        }
        for (held, permit) in self.held.iter_mut().zip(taken) {
            match (held.as_mut(), permit) {
                (Some(held), Some(permit)) => held.merge(permit),
                (None, permit) => *held = permit,
                (Some(_), None) => {}
            }
        }
        self.bytes += bytes;
        Ok(())
    }

    /// Shows the room held in the gauge, once the body has to wait for more
    /// of itself: a body read whole at once never moves it (a gauge update
    /// costs a registry lookup).
    fn publish(&mut self) {
        if self.bytes > self.published {
            let more = self.bytes - self.published;
            metrics::gauge!(REQUEST_BODY_BYTES).increment(more as f64);
            self.published = self.bytes;
        }
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        if self.published > 0 {
            metrics::gauge!(REQUEST_BODY_BYTES).decrement(self.published as f64);
        }
    }
}

/// A body read whole: its data, then its trailers, if any.
struct Whole {
    data: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl http_body::Body for Whole {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let frame = match self.data.take() {
            Some(data) => Some(Frame::data(data)),
            None => self.trailers.take().map(Frame::trailers),
        };
        Poll::Ready(frame.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |data| data.len() as u64))
    }
}

/// A reflection stream's answer: passed through, holding its slot until it
/// ends or is dropped, and ended with `DEADLINE_EXCEEDED`
/// (`REQUEST_BODY_TIMEOUT`) at its deadline, its request dropped with it.
/// Kept on the answer, which hyper polls while the client reads, since the
/// reflection service stops reading its request while an answer waits.
struct Streamed {
    inner: Option<Body>,
    slot: Option<OwnedSemaphorePermit>,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl Streamed {
    fn new(inner: Body, slot: OwnedSemaphorePermit, deadline: tokio::time::Instant) -> Self {
        Self {
            inner: Some(inner),
            slot: Some(slot),
            timer: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    /// Ends the stream: the answer and the slot go.
    fn end(&mut self) {
        self.inner = None;
        self.slot = None;
    }
}

impl http_body::Body for Streamed {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if this.timer.as_mut().poll(cx).is_ready() {
            this.end();
            metrics::counter!(REQUEST_BODY_TIMEOUTS).increment(1);
            let status = Error::RequestBodyTimeout.to_status();
            // A trailers-only answer's headers are the status's trailers.
            let mut trailers = status.into_http::<()>().into_parts().0.headers;
            trailers.remove(http::header::CONTENT_TYPE);
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        let frame = ready!(Pin::new(inner).poll_frame(cx));
        if frame.is_none() {
            this.end();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |inner| inner.size_hint())
    }
}
