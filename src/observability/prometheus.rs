//! The Prometheus side of the metrics: the process-wide recorder, the
//! description of every metric named in [`crate::base::metric_names`], and the
//! `/metrics` listener.

use std::{
    future::Future,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::base::metric_names::{
    ACCEPT_ERRORS, BUILD_INFO, CACHE_HITS, COALESCED, CONNECTIONS_OPEN, CONNECTIONS_REFUSED,
    EXT_AUTHZ_DECISIONS, FLEET_BREAKER_OPEN_SECONDS, FLEET_LEASE_TAKEOVERS, FLEET_REDIS_OPS,
    FLEET_REPLICAS, FLEET_REVOCATIONS_DROPPED, FLEET_REVOCATIONS_PENDING, FLEET_SKIPPED,
    FLEET_UNOPENED, HANDSHAKE_TIMEOUTS, JWKS_FETCHES, JWKS_UNAVAILABLE, KEPT_ANSWERS,
    MAX_CONNECTIONS, REFUSALS_REMEMBERED, REQUEST_BODY_BYTES, REQUEST_BODY_REFUSALS,
    REQUEST_BODY_TIMEOUTS, REVOKED_TOKENS, RPC_DURATION, RPC_IN_FLIGHT, RPC_REQUESTS, SHED,
    STALE_ANSWERS, TOKEN_REFUSALS, TOKENS_UNVERIFIED, TRACE_SPANS_DROPPED, UNKNOWN_ENUM_VALUES,
    UPSTREAM_DURATION, UPSTREAM_LIMITED, UPSTREAM_RATE_EFFECTIVE, UPSTREAM_REQUESTS,
    UPSTREAM_THROTTLES, UPSTREAM_WAIT_SECONDS, UPSTREAM_WAITED,
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
pub(crate) const LIFO_SLOT_OFF: bool = cfg!(tokio_unstable);

/// How often histograms are compacted when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Installs the process-wide Prometheus recorder and describes every metric.
pub(crate) fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)?
        .install_recorder()?;
    describe();
    let lifo_slot = if LIFO_SLOT_OFF { "off" } else { "on" };
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "lifo_slot" => lifo_slot)
        .set(1.0);
    Ok(handle)
}

/// Describes every metric of [`crate::base::metric_names`] to the recorder.
fn describe() {
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
    metrics::describe_counter!(
        TOKEN_REFUSALS,
        "Tokens refused here without a call to Cognito, by reason"
    );
    metrics::describe_counter!(
        TOKENS_UNVERIFIED,
        "Tokens let through with every claim checked but not their signature (key set unavailable), by pool"
    );
    metrics::describe_counter!(JWKS_FETCHES, "JWKS fetches by pool and outcome");
    metrics::describe_counter!(
        JWKS_UNAVAILABLE,
        "Calls whose pool's keys could not be had: their claims checked here, their signature by Cognito"
    );
    metrics::describe_counter!(
        TRACE_SPANS_DROPPED,
        "Spans not exported, by reason (queue_full, export_failed)"
    );
    describe_connections_and_fleet();
}

/// The listener's and the fleet store's metrics.
fn describe_connections_and_fleet() {
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
    metrics::describe_gauge!(
        REQUEST_BODY_BYTES,
        "Request body bytes held now: read of the bodies still arriving, and room for their next frame"
    );
    metrics::describe_counter!(
        REQUEST_BODY_REFUSALS,
        "Request bodies refused because a frame found no room in their connection's share or the budget"
    );
    metrics::describe_counter!(
        REQUEST_BODY_TIMEOUTS,
        "Calls failed because their body did not arrive whole within --request-body-timeout"
    );
    metrics::describe_counter!(
        ACCEPT_ERRORS,
        "Failures to accept a connection that made the listener back off, by error"
    );
    metrics::describe_counter!(
        FLEET_REDIS_OPS,
        "Fleet store (Redis) operations by op and outcome"
    );
    metrics::describe_counter!(
        FLEET_SKIPPED,
        "Calls that went without the fleet store, by reason"
    );
    metrics::describe_counter!(
        FLEET_BREAKER_OPEN_SECONDS,
        "Seconds the fleet store's breaker has been opened for"
    );
    metrics::describe_counter!(
        FLEET_UNOPENED,
        "Fleet store values that did not open (each a miss)"
    );
    metrics::describe_counter!(
        FLEET_LEASE_TAKEOVERS,
        "Fleet flights taken over after their leader's lease ran out"
    );
    describe_quota();
}

/// The upstream rate limit's and refusal memory's metrics.
fn describe_quota() {
    metrics::describe_counter!(
        UPSTREAM_LIMITED,
        "Attempts to Cognito the upstream rate limit refused, by region"
    );
    metrics::describe_counter!(
        UPSTREAM_WAITED,
        "Attempts to Cognito that waited for their turn under the rate limit"
    );
    metrics::describe_histogram!(
        UPSTREAM_WAIT_SECONDS,
        "How long attempts to Cognito waited for their turn under the rate limit"
    );
    metrics::describe_counter!(
        UPSTREAM_THROTTLES,
        "Attempts Cognito answered with TooManyRequestsException, by region"
    );
    metrics::describe_gauge!(
        UPSTREAM_RATE_EFFECTIVE,
        "The upstream rate limit in force per second, by region and scope"
    );
    metrics::describe_gauge!(
        FLEET_REPLICAS,
        "The fleet's size as this replica last knew it"
    );
    metrics::describe_counter!(
        REFUSALS_REMEMBERED,
        "Calls answered from refusal memory, by reason and scope"
    );
    metrics::describe_counter!(
        STALE_ANSWERS,
        "Calls answered with a kept answer while Cognito was unavailable, by region"
    );
    metrics::describe_gauge!(
        KEPT_ANSWERS,
        "Answers this replica keeps for --stale-if-error"
    );
    metrics::describe_gauge!(
        REVOKED_TOKENS,
        "Tokens this replica knows Cognito refused definitively: nothing is cached or kept for them until their exp"
    );
    metrics::describe_gauge!(
        FLEET_REVOCATIONS_PENDING,
        "Revocations heard while Redis was away, not yet written to the fleet"
    );
    metrics::describe_counter!(
        FLEET_REVOCATIONS_DROPPED,
        "Pending revocations dropped (the oldest) past the queue's bound"
    );
    metrics::describe_counter!(
        EXT_AUTHZ_DECISIONS,
        "Envoy ext_authz Checks, by decision (allowed, denied_unauthenticated, denied_policy, denied_configuration, error)"
    );
    metrics::describe_gauge!(
        BUILD_INFO,
        "Build information: version, and whether tokio's LIFO slot is off"
    );
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
pub(crate) async fn serve(
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

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeSet,
        sync::{Arc, Mutex},
    };

    use metrics::{
        Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };

    use super::*;

    /// A recorder that only notes the names described to it.
    #[derive(Default)]
    struct Descriptions(Arc<Mutex<BTreeSet<String>>>);

    impl Descriptions {
        fn note(&self, name: KeyName, description: &SharedString) {
            assert!(
                !description.is_empty(),
                "{} has an empty description",
                name.as_str()
            );
            self.0.lock().unwrap().insert(name.as_str().to_owned());
        }
    }

    impl Recorder for Descriptions {
        fn describe_counter(&self, name: KeyName, _: Option<Unit>, description: SharedString) {
            self.note(name, &description);
        }
        fn describe_gauge(&self, name: KeyName, _: Option<Unit>, description: SharedString) {
            self.note(name, &description);
        }
        fn describe_histogram(&self, name: KeyName, _: Option<Unit>, description: SharedString) {
            self.note(name, &description);
        }
        fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
            Counter::noop()
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    /// Every name in `src/metric_names.rs`, read from the source: a metric
    /// added there without a description here fails this test.
    fn named_in_source() -> BTreeSet<String> {
        // `const NAME: &str = "name";`, the value perhaps on the next line.
        include_str!("../base/metric_names.rs")
            .split("const ")
            .skip(1)
            .filter_map(|rest| rest.split_once(": &str =")?.1.split_once(';'))
            .filter_map(|(value, _)| value.trim().strip_prefix('"')?.strip_suffix('"'))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn every_named_metric_is_described() {
        let recorder = Descriptions::default();
        let described = Arc::clone(&recorder.0);
        metrics::with_local_recorder(&recorder, describe);
        let named = named_in_source();
        assert!(named.len() >= 19, "{named:?}");
        let described = described.lock().unwrap().clone();
        let missing: Vec<_> = named.difference(&described).collect();
        assert!(
            missing.is_empty(),
            "metrics without a description: {missing:?}"
        );
    }

    #[test]
    fn every_named_metric_is_in_the_metrics_guide() {
        let readme = include_str!("../../docs/metrics.md");
        let documented: BTreeSet<String> = readme
            .lines()
            .filter_map(|line| line.strip_prefix("| `cognito_facade_"))
            .filter_map(|rest| rest.split_once('`'))
            .map(|(name, _)| format!("cognito_facade_{name}"))
            .collect();
        assert_eq!(named_in_source(), documented);
    }
}
