//! The gRPC server: its settings, the RPC behind the call observer, health,
//! reflection, and the shutdown sequence (NOT_SERVING, drain, stop
//! accepting, grace, exit).
//!
//! Layer 7, above `rpc`. `tls` reads the PEM files and builds the
//! acceptor; `bodies` keeps the request bytes in flight within their
//! budgets and times out bodies that never finish; `listener` keeps the
//! connection cap and the handshake deadline; `policy` answers HTTP 415 and
//! the size refusal; `observe` gives each call its one clock, metrics, span
//! and log line.
//!
//! Files, lowest first: `tls`, `bodies`, `listener`, `policy`, `reflection`,
//! `observe`.

pub(crate) mod bodies;
pub(crate) mod listener;
pub(crate) mod observe;
pub(crate) mod policy;
mod reflection;
pub(crate) mod tls;

use std::{
    future::Future,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use tokio::net::TcpListener;
use tonic::{codegen::http, server::NamedService, transport::Server};
use tonic_health::{
    ServingStatus,
    pb::health_server::{Health, HealthServer},
    server::HealthReporter,
};

use self::{
    bodies::{BodyLayer, BodyLimits, ConnectionShare, MAX_FRAME_BYTES},
    listener::ConnectionLimits,
};
use crate::{
    base::wire::{MAX_CONCURRENT_STREAMS, MAX_HEADER_LIST_BYTES, MAX_REQUEST_BYTES},
    proto::identity_provider_service_server::IdentityProviderServiceServer,
    rpc::{authz::ExtAuthz, service::FacadeService},
    server::observe::ObserveLayer,
    server::policy::PolicyLayer,
    server::tls::TlsConfig,
};

/// Default gRPC listen address: every interface, the conventional gRPC port.
pub const DEFAULT_LISTEN_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 50051));
/// Default time between reporting NOT_SERVING and closing the listener, so
/// load balancers and Kubernetes endpoints notice first.
pub const DEFAULT_DRAIN_DELAY: Duration = Duration::from_secs(5);
/// Default time in-flight calls get to finish once the listener is closed.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Default lifetime of a client connection before the server sends GOAWAY, so
/// clients reconnect and spread over new replicas after a scale-out.
pub const DEFAULT_MAX_CONNECTION_AGE: Duration = Duration::from_secs(300);
/// Default HTTP/2 keepalive ping interval, so dead peers are noticed.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Default time a keepalive ping may go unanswered before the connection closes.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// After `max_connection_age`, how long a connection's in-flight calls get
/// before it is closed.
const MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(30);

/// The gRPC health checking protocol's name for the whole server.
const WHOLE_SERVER: &str = "";

/// The HTTP/2 flow-control window the server gives each connection: what a
/// client may send that the server has not read yet, all its streams
/// together. `bodies` reads each body as it arrives and refuses what finds
/// no room, so unread frames are only those not yet reached; this bounds
/// them per connection at a quarter of hyper's default (1 MiB), still far
/// more than a round trip's worth of the small messages this service takes.
const CONNECTION_WINDOW: u32 = 256 * 1024;
/// The window of each stream: about HTTP/2's own default (65,535 bytes),
/// room for the largest RPC message (64 KiB).
const STREAM_WINDOW: u32 = 64 * 1024;

/// The largest Check Envoy sends: its request headers (60 KiB by default,
/// the path twice) with room to spare; the facade never asks for the body.
/// A Check refused as too large would be an error, which `failure_mode_allow`
/// could turn into an allow.
pub(crate) const MAX_CHECK_REQUEST_BYTES: usize = 1024 * 1024;

type Rpc = IdentityProviderServiceServer<FacadeService>;
type Authz = AuthorizationServer<ExtAuthz>;

/// The largest health request: a service's name, with room to spare (the
/// 16 MiB reserve health draws on holds thousands of them).
pub(crate) const MAX_HEALTH_REQUEST_BYTES: usize = 4 * 1024;

/// Envoy's ext_authz service, as its paths name it.
pub(crate) const AUTHZ_SERVICE: &str = <Authz as tonic::server::NamedService>::NAME;

/// The server's settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where the gRPC server listens (the application binds it; [`run`] takes
    /// the bound listener).
    pub listen_addr: SocketAddr,
    /// Time between NOT_SERVING and closing the listener on shutdown.
    pub drain_delay: Duration,
    /// Time in-flight calls get once the listener is closed.
    pub shutdown_grace: Duration,
    /// Lifetime of a client connection before GOAWAY.
    pub max_connection_age: Duration,
    /// HTTP/2 keepalive ping interval.
    pub keepalive_interval: Duration,
    /// HTTP/2 keepalive ping timeout.
    pub keepalive_timeout: Duration,
    /// TLS on the gRPC listener; `None` serves plaintext (h2c).
    pub tls: Option<TlsConfig>,
    /// Time a new connection gets for TLS, the HTTP/2 preface and SETTINGS.
    pub handshake_timeout: Duration,
    /// Most client connections at once. `Application::build` fills the
    /// default in from the file-descriptor limit
    /// ([`listener::default_max_connections`]); `None` here is no cap.
    pub max_connections: Option<usize>,
    /// The request bytes in flight and the body read timeout.
    pub bodies: BodyLimits,
}

impl Default for ServerConfig {
    /// The documented defaults: plaintext on [`DEFAULT_LISTEN_ADDR`].
    fn default() -> Self {
        Self {
            listen_addr: DEFAULT_LISTEN_ADDR,
            drain_delay: DEFAULT_DRAIN_DELAY,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            max_connection_age: DEFAULT_MAX_CONNECTION_AGE,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            tls: None,
            handshake_timeout: listener::DEFAULT_HANDSHAKE_TIMEOUT,
            max_connections: None,
            bodies: BodyLimits::default(),
        }
    }
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The TLS files made no acceptor (they were checked at start-up).
    #[error(transparent)]
    Tls(#[from] crate::server::tls::TlsError),
    /// The listener's address could not be read.
    #[error("reading the listener's address: {0}")]
    Listener(std::io::Error),
    /// The listener or a connection failed fatally.
    #[error("serving gRPC: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves `service` on `listener`, each call observed by `observer`, until
/// `shutdown` completes, then: reports NOT_SERVING, keeps serving for
/// `config.drain_delay`, stops accepting, gives in-flight calls up to
/// `config.shutdown_grace`, and returns what is left of the grace (for
/// flushing telemetry).
pub(crate) async fn run(
    listener: TcpListener,
    config: &ServerConfig,
    service: FacadeService,
    observer: ObserveLayer,
    shutdown: impl Future<Output = ()>,
) -> Result<Duration, ServerError> {
    let (mut health, health_service) = health().await;
    let routes = http2(config)
        .layer(observer)
        .layer(PolicyLayer)
        .layer(BodyLayer::new(&config.bodies, connection_share))
        .add_service(health_service)
        .add_service(reflection::v1())
        .add_service(reflection::v1alpha())
        .add_service(
            Authz::new(ExtAuthz::new(service.clone()))
                .max_decoding_message_size(MAX_CHECK_REQUEST_BYTES),
        )
        .add_service(Rpc::new(service).max_decoding_message_size(MAX_REQUEST_BYTES));

    let (stop_accepting, stop_signal) = tokio::sync::oneshot::channel::<()>();
    let local_addr = listener.local_addr().map_err(ServerError::Listener)?;
    let acceptor = config.tls.as_ref().map(TlsConfig::acceptor).transpose()?;
    let incoming = listener::incoming(listener, connection_limits(config), acceptor);
    let server = routes.serve_with_incoming_shutdown(incoming, async {
        // A dropped sender also stops the server.
        let _ = stop_signal.await;
    });
    tokio::pin!(server);
    tracing::info!(addr = %local_addr, tls = config.tls.is_some(), "serving");

    tokio::select! {
        result = &mut server => return result.map(|()| Duration::ZERO).map_err(ServerError::from),
        () = shutdown => {}
    }
    if let Some(ended) = drain(&mut health, config.drain_delay, &mut server).await {
        return ended.map(|()| Duration::ZERO).map_err(ServerError::from);
    }
    let _ = stop_accepting.send(());
    tracing::info!(grace = ?config.shutdown_grace, "listener closed; finishing in-flight calls");
    let grace_ends = tokio::time::Instant::now() + config.shutdown_grace;
    match tokio::time::timeout_at(grace_ends, &mut server).await {
        Ok(result) => result?,
        Err(_) => tracing::warn!("shutdown grace ran out; abandoning calls still in flight"),
    }
    tracing::info!("stopped");
    Ok(grace_ends.saturating_duration_since(tokio::time::Instant::now()))
}

/// The health service, the RPC and ext_authz serving.
async fn health() -> (HealthReporter, HealthServer<impl Health>) {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<Rpc>().await;
    health.set_serving::<Authz>().await;
    let health_service = health_service.max_decoding_message_size(MAX_HEALTH_REQUEST_BYTES);
    (health, health_service)
}

/// The HTTP/2 server's settings: keepalive, header, stream, frame and
/// window limits, and the connection's age.
fn http2(config: &ServerConfig) -> Server {
    Server::builder()
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(config.keepalive_timeout))
        .http2_max_header_list_size(Some(MAX_HEADER_LIST_BYTES))
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_frame_size(MAX_FRAME_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .initial_stream_window_size(STREAM_WINDOW)
        .max_connection_age(config.max_connection_age)
        .max_connection_age_grace(MAX_CONNECTION_AGE_GRACE)
}

#[doc(hidden)]
/// The HTTP/2 server with the default settings, for the benchmark's
/// do-nothing ext_authz floor (`bench/authz_floor.rs`), so the floor's
/// transport is the service's own.
pub fn default_http2() -> Server {
    http2(&ServerConfig::default())
}

/// What the listener holds each connection to.
fn connection_limits(config: &ServerConfig) -> ConnectionLimits {
    ConnectionLimits {
        // The application fills the default in from the descriptor limit.
        max_connections: config.max_connections.unwrap_or(usize::MAX),
        handshake_timeout: config.handshake_timeout,
        request_bytes_per_connection: config.bodies.per_connection,
    }
}

/// A request's connection share, from the listener's connect info.
fn connection_share(extensions: &http::Extensions) -> Option<&ConnectionShare> {
    extensions
        .get::<listener::ConnInfo>()
        .map(|info| &info.share)
}

/// Reports NOT_SERVING and keeps serving for `drain_delay`, then ends the
/// health statuses: open Watch streams would otherwise hold the graceful
/// shutdown open until the grace runs out. `Some` with the server's own end,
/// if it came first.
async fn drain(
    health: &mut HealthReporter,
    drain_delay: Duration,
    server: &mut (impl Future<Output = Result<(), tonic::transport::Error>> + Unpin),
) -> Option<Result<(), tonic::transport::Error>> {
    tracing::info!(drain_delay = ?drain_delay, "shutdown requested: reporting NOT_SERVING and draining");
    health
        .set_service_status(WHOLE_SERVER, ServingStatus::NotServing)
        .await;
    health.set_not_serving::<Rpc>().await;
    health.set_not_serving::<Authz>().await;
    tokio::select! {
        result = server => return Some(result),
        () = tokio::time::sleep(drain_delay) => {}
    }
    for name in [WHOLE_SERVER, Rpc::NAME] {
        health.clear_service_status(name).await;
    }
    None
}
