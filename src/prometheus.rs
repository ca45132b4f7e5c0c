//! The Prometheus side of the metrics: the process-wide recorder, the
//! description of every metric named in [`crate::metric_names`], and the
//! `/metrics` listener.

use std::{
    future::Future,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::metric_names::{
    ACCEPT_ERRORS, BUILD_INFO, CACHE_HITS, COALESCED, CONNECTIONS_OPEN, CONNECTIONS_REFUSED,
    HANDSHAKE_TIMEOUTS, MAX_CONNECTIONS, RPC_DURATION, RPC_IN_FLIGHT, RPC_REQUESTS, SHED,
    UNKNOWN_ENUM_VALUES, UPSTREAM_DURATION, UPSTREAM_REQUESTS,
};

/// Default `/metrics` listener: every interface, the conventional exporter port.
pub const DEFAULT_METRICS_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 9090));

/// Latency buckets, in seconds: Cognito answers in tens of milliseconds; the
/// tail reaches the default call timeout (5 s).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Whether this build turns tokio's LIFO slot off (it needs
/// `--cfg tokio_unstable`; see `app::runtime`). Shown on the build-info
/// metric as `lifo_slot`.
pub const LIFO_SLOT_OFF: bool = cfg!(tokio_unstable);

/// How often histograms are compacted when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Installs the process-wide Prometheus recorder and describes every metric.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)?
        .install_recorder()?;
    metrics::describe_counter!(
        RPC_REQUESTS,
        "RPCs by method, final gRPC code and where the answer came from"
    );
    metrics::describe_histogram!(
        RPC_DURATION,
        metrics::Unit::Seconds,
        "RPC latency, arrival to response"
    );
    metrics::describe_gauge!(RPC_IN_FLIGHT, "RPCs being handled now");
    metrics::describe_counter!(UPSTREAM_REQUESTS, "Calls to Cognito by outcome");
    metrics::describe_histogram!(
        UPSTREAM_DURATION,
        metrics::Unit::Seconds,
        "Latency of calls to Cognito, retries included"
    );
    metrics::describe_counter!(SHED, "Calls refused by the concurrency limiter");
    metrics::describe_counter!(
        UNKNOWN_ENUM_VALUES,
        "Enum values from Cognito this version does not know"
    );
    metrics::describe_counter!(
        COALESCED,
        "Calls that shared another call's upstream request"
    );
    metrics::describe_counter!(CACHE_HITS, "Calls answered from the cache");
    metrics::describe_gauge!(
        CONNECTIONS_OPEN,
        "Client connections open on the gRPC listener, handshakes included"
    );
    metrics::describe_gauge!(MAX_CONNECTIONS, "The connection cap");
    metrics::describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections closed at once because the cap was reached"
    );
    metrics::describe_counter!(
        HANDSHAKE_TIMEOUTS,
        "Connections closed for not finishing TLS and the HTTP/2 preface and SETTINGS in time"
    );
    metrics::describe_counter!(
        ACCEPT_ERRORS,
        "Failures to accept a connection that made the listener back off, by error"
    );
    metrics::describe_gauge!(BUILD_INFO, "Build information");
    let lifo_slot = if LIFO_SLOT_OFF { "off" } else { "on" };
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "lifo_slot" => lifo_slot)
        .set(1.0);
    Ok(handle)
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let upkeep = handle.clone();
    let upkeep = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            ticks.tick().await;
            upkeep.run_upkeep();
        }
    });
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving metrics");
    }
    let app = Router::new()
        .route("/metrics", get(render))
        .with_state(handle);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    upkeep.abort();
    result
}

async fn render(State(handle): State<PrometheusHandle>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
}
