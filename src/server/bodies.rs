//! The request bytes in flight: how much of the request bodies still
//! arriving the server holds, and for how long. Envoy's
//! `per_connection_buffer_limit_bytes` and overload manager are the model.
//!
//! - **A budget across all connections** (`--max-request-bytes-in-flight`)
//!   and **a share of it per connection** (`--max-connection-request-bytes`).
//!   A body reads a DATA frame only once it holds room for one more frame
//!   in both; otherwise it waits, and the frame stays unread in HTTP/2's
//!   flow control, which stops the client sending: nothing is buffered past
//!   the budgets but what the connection window (1 MiB) lets in. The room
//!   is given back as soon as the body has been read whole, or is dropped.
//!   One connection can hold at most its share, so a flood on a few
//!   connections leaves the rest of the budget to everyone else.
//! - **A body read timeout** (`--request-body-timeout`): a body not read
//!   whole that long after its request arrived (waiting for room
//!   included) fails the call with `DEADLINE_EXCEEDED` and
//!   `REQUEST_BODY_TIMEOUT`, and the stream is reset.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};
use tonic::{Status, body::Body, codegen::http};
use tower::{Layer, Service};

use crate::{
    base::metric_names::{REQUEST_BODY_BYTES, REQUEST_BODY_TIMEOUTS, REQUEST_BODY_WAITS},
    error::Error,
    rpc::call::CallContext,
};

/// 1 MiB.
const MIB: usize = 1024 * 1024;

/// Default budget for request bytes in flight across all connections:
/// with 16 connections each at its share (32 MiB) it leaves room for every
/// other caller, and at its full use, it and HTTP/2's buffers still fit the
/// 128 Mi memory limit of `deploy/kubernetes/deployment.yaml`.
pub const DEFAULT_REQUEST_BYTES_IN_FLIGHT: usize = 48 * MIB;

/// Default share of one connection: room for the largest message (a 1 MiB
/// Check) and its frames, twice over.
pub const DEFAULT_CONNECTION_REQUEST_BYTES: usize = 2 * MIB;

/// Default time a request's body gets to arrive whole: gRPC clients send a
/// unary request at once, so 10 s is generous on any network a caller of
/// this service sits on (nginx's `client_body_timeout` is 60 s between two
/// reads; this bounds the whole body).
pub const DEFAULT_REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest DATA frame the server accepts (`SETTINGS_MAX_FRAME_SIZE`,
/// set to HTTP/2's initial value), and so the room a body takes before it
/// reads one more.
pub(crate) const MAX_FRAME_BYTES: u32 = 16 * 1024;

/// The least share a connection may have: the largest message the server
/// decodes, its 5-byte prefix and one frame of room.
pub const MIN_CONNECTION_REQUEST_BYTES: usize =
    super::MAX_CHECK_REQUEST_BYTES + 5 + MAX_FRAME_BYTES as usize;

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

/// Wraps each request's body in a [`Budgeted`] one.
#[derive(Debug, Clone)]
pub(crate) struct BodyLayer {
    in_flight: Arc<Semaphore>,
    read_timeout: Duration,
}

impl BodyLayer {
    /// The layer for `limits` (whose per-connection share the listener
    /// hands out).
    pub(crate) fn new(limits: &BodyLimits) -> Self {
        Self {
            in_flight: Arc::new(Semaphore::new(limits.in_flight.min(Semaphore::MAX_PERMITS))),
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

impl<S> Service<http::Request<Body>> for Bodies<S>
where
    S: Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let share = request
            .extensions()
            .get::<super::listener::ConnInfo>()
            .map(|info| info.share.0.clone());
        let context = request.extensions().get::<Arc<CallContext>>().cloned();
        let rooms = [share, Some(self.layer.in_flight.clone())];
        let read_timeout = self.layer.read_timeout;
        let request = request.map(|inner| {
            let mut body = Budgeted::new(inner, rooms, read_timeout);
            body.context = context;
            Body::new(body)
        });
        self.inner.call(request)
    }
}

/// Room being acquired (when it could not be had at once): in the
/// connection's share, then in the budget.
type Acquiring =
    Pin<Box<dyn Future<Output = Result<[Option<OwnedSemaphorePermit>; 2], AcquireError>> + Send>>;

/// Where a [`Budgeted`] body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// Still arriving.
    Open,
    /// Read whole, or failed on its own: the room is given back, and what
    /// is left of it (trailers, the end) passes through.
    Ended,
    /// Refused, or its read timeout passed: the call failed, nothing more
    /// is read.
    Failed,
}

/// A request body that reads a frame only with room for it in its
/// connection's share and the budget, holds that room until it has been
/// read whole, and fails once the read timeout passes.
struct Budgeted {
    inner: Body,
    /// The connection's share (none for a connection that is not the
    /// listener's) and the budget.
    rooms: [Option<Arc<Semaphore>>; 2],
    /// The room held in each.
    held: [Option<OwnedSemaphorePermit>; 2],
    /// Room held and not yet taken by a frame.
    room_left: usize,
    /// A frame larger than the room that was left, read and held back
    /// until room for it is had.
    pending: Option<Frame<Bytes>>,
    acquiring: Option<Acquiring>,
    /// When the read timeout passes; its timer is set only once the body
    /// has to wait (a body that arrives with its request never needs one).
    deadline: tokio::time::Instant,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    context: Option<Arc<CallContext>>,
    reading: Reading,
}

impl Budgeted {
    fn new(inner: Body, rooms: [Option<Arc<Semaphore>>; 2], read_timeout: Duration) -> Self {
        Self {
            inner,
            rooms,
            held: [None, None],
            room_left: 0,
            pending: None,
            acquiring: None,
            deadline: tokio::time::Instant::now() + read_timeout,
            timer: None,
            context: None,
            reading: Reading::Open,
        }
    }

    /// The next frame, with room held for it.
    fn poll_budgeted(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(frame) = self.pending.take() {
            let needed = frame_len(&frame).saturating_sub(self.room_left);
            if self.poll_room(cx, needed)?.is_pending() {
                self.pending = Some(frame);
                return Poll::Pending;
            }
            self.room_left -= frame_len(&frame);
            return Poll::Ready(Some(Ok(frame)));
        }
        // A new body's first room is had at once or not at all: a stream
        // waiting for it would hold its memory all the same.
        if self.held[1].is_none() && !self.inner.is_end_stream() {
            let Some(taken) = try_acquire(&self.rooms, MAX_FRAME_BYTES) else {
                return Poll::Ready(Some(Err(self.fail(Error::RequestBytesExhausted))));
            };
            self.hold(taken, MAX_FRAME_BYTES);
        }
        // The last frame came: what is left is the end, which takes no room.
        if !self.inner.is_end_stream() && self.room_left < MAX_FRAME_BYTES as usize {
            ready!(self.poll_room(cx, MAX_FRAME_BYTES as usize - self.room_left))?;
        }
        let frame = match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Ok(frame)) if frame.is_data() => frame,
            other => {
                self.end(Reading::Ended);
                return Poll::Ready(other);
            }
        };
        let len = frame_len(&frame);
        if len > self.room_left {
            // Larger than a frame may be: held back until room is had.
            self.pending = Some(frame);
            return self.poll_budgeted(cx);
        }
        self.room_left -= len;
        Poll::Ready(Some(Ok(frame)))
    }

    /// Polls until `bytes` more of room are held: at once when both have
    /// it, else in turn (counted as a wait).
    fn poll_room(&mut self, cx: &mut Context<'_>, bytes: usize) -> Poll<Result<(), Status>> {
        // At most a frame: validated `--max-connection-request-bytes` is far more.
        let permits = u32::try_from(bytes).unwrap_or(u32::MAX);
        let acquired = match self.acquiring.as_mut() {
            Some(acquiring) => ready!(acquiring.as_mut().poll(cx)),
            None => match try_acquire(&self.rooms, permits) {
                Some(permits) => Ok(permits),
                None => {
                    metrics::counter!(REQUEST_BODY_WAITS).increment(1);
                    let acquiring = self
                        .acquiring
                        .insert(Box::pin(acquire(self.rooms.clone(), permits)));
                    ready!(acquiring.as_mut().poll(cx))
                }
            },
        };
        self.acquiring = None;
        // The semaphores are never closed.
        let taken = acquired.map_err(|_| Status::internal("the request budget is closed"))?;
        self.hold(taken, permits);
        Poll::Ready(Ok(()))
    }

    /// Adds `taken` (`permits` in each room) to the room held.
    fn hold(&mut self, taken: [Option<OwnedSemaphorePermit>; 2], permits: u32) {
        for (held, permit) in self.held.iter_mut().zip(taken) {
            match (held.as_mut(), permit) {
                (Some(held), Some(permit)) => held.merge(permit),
                (None, permit) => *held = permit,
                (Some(_), None) => {}
            }
        }
        metrics::gauge!(REQUEST_BODY_BYTES).increment(f64::from(permits));
        self.room_left += permits as usize;
    }

    /// Whether the read timeout has passed; sets its timer the first time.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline;
        self.timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)))
            .as_mut()
            .poll(cx)
    }

    /// Gives the room back, once.
    fn end(&mut self, reading: Reading) {
        if self.reading != Reading::Open {
            return;
        }
        self.reading = reading;
        self.acquiring = None;
        self.timer = None;
        self.pending = None;
        if let Some(budget) = &self.held[1] {
            metrics::gauge!(REQUEST_BODY_BYTES).decrement(budget.num_permits() as f64);
        }
        self.held = [None, None];
    }

    /// Fails the call with `err`: nothing more is read.
    fn fail(&mut self, err: Error) -> Status {
        self.end(Reading::Failed);
        let status = err.to_status();
        if let Some(context) = &self.context {
            context.set_error(err);
        }
        status
    }
}

/// `permits` of room in each of `rooms` if both have it now.
fn try_acquire(
    rooms: &[Option<Arc<Semaphore>>; 2],
    permits: u32,
) -> Option<[Option<OwnedSemaphorePermit>; 2]> {
    let mut taken = [None, None];
    for (slot, room) in taken.iter_mut().zip(rooms) {
        if let Some(room) = room {
            *slot = Some(room.clone().try_acquire_many_owned(permits).ok()?);
        }
    }
    Some(taken)
}

/// `permits` of room in each of `rooms`, in order.
async fn acquire(
    rooms: [Option<Arc<Semaphore>>; 2],
    permits: u32,
) -> Result<[Option<OwnedSemaphorePermit>; 2], AcquireError> {
    let mut taken = [None, None];
    for (slot, room) in taken.iter_mut().zip(rooms) {
        if let Some(room) = room {
            *slot = Some(room.acquire_many_owned(permits).await?);
        }
    }
    Ok(taken)
}

impl http_body::Body for Budgeted {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        match this.reading {
            Reading::Open => {}
            Reading::Ended => return Pin::new(&mut this.inner).poll_frame(cx),
            Reading::Failed => return Poll::Ready(None),
        }
        let polled = this.poll_budgeted(cx);
        if polled.is_pending() && this.poll_deadline(cx).is_ready() {
            metrics::counter!(REQUEST_BODY_TIMEOUTS).increment(1);
            return Poll::Ready(Some(Err(this.fail(Error::RequestBodyTimeout))));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match self.reading {
            Reading::Failed => true,
            _ => self.pending.is_none() && self.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Budgeted {
    fn drop(&mut self) {
        self.end(Reading::Ended);
    }
}

/// The bytes of a data frame (trailers take no room).
fn frame_len(frame: &Frame<Bytes>) -> usize {
    frame.data_ref().map_or(0, Bytes::len)
}
