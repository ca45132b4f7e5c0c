//! The application: everything built from a [`Config`] (the Cognito client,
//! the RPC service, the bound listeners, the metrics recorder) and run until
//! a shutdown future completes. The binary and the tests both go through
//! [`Application::build`], so the tests run exactly what ships.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

// The process's logging, which the binary sets up before anything logs.
pub use crate::base::telemetry::{check_sensitive_logging_off, filter_from_env, subscriber};

use crate::{
    base::expiring::{RandomError, TokenKeyer},
    config::{Config, ConfigError},
    fleet::{Fleet, FleetSettings},
    observability::prometheus,
    observability::traces::{Tracing, TracingSetupError},
    quota::Quota,
    rpc::service::FacadeService,
    server::listener,
    server::observe::ObserveLayer,
    server::{self, ServerError},
    upstream::{AttemptPacer, Cognito, SetupError},
    verify::TokenGate,
};

/// The runtime the service runs on, and the load generator too (so the
/// benchmark's SDK floor is the same client under the same runtime): one
/// worker per core (or per CPU the cgroup allows), with tokio's LIFO slot
/// off when the build allows it. The slot runs the task a worker woke last
/// before anything else and cannot be stolen; under load that kept calls
/// queued behind one worker while the other woke, found nothing it could
/// take and slept again. Off, at 64 callers: over a third more calls per
/// second and a quarter less CPU per call; at one caller the same latency
/// and more CPU per call, since every wake-up now may rouse the idle worker
/// (bench/PROFILE.md). Turning it off needs `--cfg tokio_unstable` (tokio
/// 1.x keeps `disable_lifo_slot` behind it), which `.cargo/config.toml`
/// sets for every cargo build of this tree (the Dockerfile's too); a build
/// without it (a `RUSTFLAGS` in the environment replaces the config's) runs
/// with the slot on, warns at start ([`warn_if_lifo_slot_on`]) and says so
/// on the build-info metric.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder.build()
}

/// Logs a warning when this build could not turn the LIFO slot off.
pub fn warn_if_lifo_slot_on() {
    if !prometheus::LIFO_SLOT_OFF {
        tracing::warn!(
            "built without --cfg tokio_unstable: tokio's LIFO slot stays on, which costs about a \
             third of the throughput under load (see the README's build notes)"
        );
    }
}

/// How much longer than the upstream call timeout a fleet lease lasts: the
/// leader's own overhead around the call.
const FLEET_LEASE_SLACK: Duration = Duration::from_millis(500);

/// Why the application could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A setting that makes no sense.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The Cognito client could not be set up (no region).
    #[error(transparent)]
    Upstream(#[from] SetupError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Its address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The metrics recorder could not be installed.
    #[error("cannot install the metrics recorder: {0}")]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
    /// Trace export could not be set up.
    #[error(transparent)]
    Tracing(#[from] TracingSetupError),
    /// No secret key could be drawn for the token maps.
    #[error(transparent)]
    Random(#[from] RandomError),
}

impl BuildError {
    /// Whether start-up exits 2: the configuration is at fault, or no secret
    /// key could be drawn, rather than the environment (a port in use).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Self::Config(_) | Self::Upstream(_) | Self::Tracing(_) | Self::Random(_)
        )
    }
}

/// A built application, its listeners bound, not yet serving.
#[derive(Debug)]
pub struct Application {
    config: Config,
    listener: TcpListener,
    addr: SocketAddr,
    metrics: Option<Metrics>,
    gate: TokenGate,
    tracing: Tracing,
    service: FacadeService,
    /// The fleet, if configured: its flights are finished at shutdown.
    fleet: Option<Fleet>,
}

/// The `/metrics` listener and the recorder it renders.
#[derive(Debug)]
struct Metrics {
    listener: TcpListener,
    addr: SocketAddr,
    handle: PrometheusHandle,
}

impl Application {
    /// Validates `config`, installs the process-wide metrics recorder if
    /// metrics are on, starts the fleet store and the upstream rate limit (in
    /// the background), builds the Cognito client (no network calls), and
    /// binds the metrics listener and the gRPC listener.
    pub async fn build(config: Config) -> Result<Self, BuildError> {
        config.validate()?;
        warn_if_lifo_slot_on();
        // One secret key for every map of tokens; no start without it.
        let keyer = TokenKeyer::random()?;
        let gate = TokenGate::new(&config.tokens, &config.upstream, keyer.clone());
        let tracing = Tracing::new(&config.tracing)?;
        // Before the fleet and the limiter, whose metrics it records.
        let recorder = match config.metrics_addr {
            Some(_) => Some(prometheus::install()?),
            None => None,
        };
        let fleet = start_fleet(&config);
        let store = fleet.as_ref().map(|fleet| fleet.store().clone());
        let quota =
            Quota::start(config.quota.clone(), store).map(|quota| quota as Arc<dyn AttemptPacer>);
        // Before binding: a missing region is a configuration error (exit 2),
        // not a port already in use.
        let signed = !config.service.callers.admin.is_empty();
        let cognito =
            Cognito::from_config(&config.upstream, &config.tokens.regions(), signed, quota).await?;
        let metrics = match (config.metrics_addr, recorder) {
            (Some(addr), Some(handle)) => {
                let (listener, addr) = bind("metrics", addr).await?;
                Some(Metrics {
                    listener,
                    addr,
                    handle,
                })
            }
            _ => None,
        };
        let (listener, addr) = bind("gRPC", config.server.listen_addr).await?;
        let mut config = config;
        config.server.max_connections = Some(connection_cap(&config));
        let service = FacadeService::new(
            cognito,
            gate.clone(),
            tracing.clone(),
            &config.service,
            config.economy,
            keyer,
            fleet.clone(),
        );
        Ok(Self {
            config,
            listener,
            addr,
            metrics,
            gate,
            tracing,
            service,
            fleet,
        })
    }

    /// The bound gRPC address (the real port when the config asked for 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound `/metrics` address, if metrics are on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|metrics| metrics.addr)
    }

    /// Serves until `shutdown` completes, then runs the shutdown sequence
    /// ([`server::run`]), finishes the fleet's flights this replica leads
    /// and flushes pending spans within what is left of the shutdown grace,
    /// and stops the metrics listener. The pools' keys are
    /// fetched in the background meanwhile: serving never waits for them.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServerError> {
        self.gate.prefetch();
        let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
        if let Some(metrics) = self.metrics {
            tokio::spawn(async move {
                let stopped = async {
                    let _ = metrics_stopped.await;
                };
                if let Err(err) = prometheus::serve(metrics.listener, metrics.handle, stopped).await
                {
                    tracing::error!(error = %err, "metrics listener failed");
                }
            });
        }
        let observer = ObserveLayer::new(
            self.tracing.clone(),
            Arc::clone(self.service.callers()),
            self.config.service.callers.trust_forwarded_client_cert,
        );
        let result = server::run(
            self.listener,
            &self.config.server,
            self.service,
            observer,
            shutdown,
        )
        .await;
        if let Ok(grace_left) = result {
            // The flights this replica leads are finished (or their leases
            // released) before the process goes, for other replicas'
            // followers.
            let grace_left = match &self.fleet {
                Some(fleet) => fleet.drain(grace_left).await,
                None => grace_left,
            };
            self.tracing.shutdown(grace_left).await;
        }
        let _ = stop_metrics.send(());
        result.map(drop)
    }
}

/// Starts the fleet store, if one is configured (in the background).
fn start_fleet(config: &Config) -> Option<Fleet> {
    // A leader's flight lasts at most its upstream call, retries included.
    let lease = config.upstream.call_timeout + FLEET_LEASE_SLACK;
    let settings = FleetSettings {
        lease,
        coalesce: config.economy.coalesce,
        cache_ttl: config.economy.cache_ttl,
        refusal_ttl: config.economy.refusal_ttl,
        stale_if_error: config.economy.stale_if_error,
    };
    config
        .fleet
        .as_ref()
        .map(|fleet| Fleet::start(fleet, settings))
}

/// Raises the descriptor limit and settles the connection cap: the
/// configured one, or the default the raised limit allows. Logs both.
fn connection_cap(config: &Config) -> usize {
    let fd = listener::raise_fd_limit();
    let max_connections = config.server.max_connections.unwrap_or_else(|| {
        listener::default_max_connections(fd.soft, config.service.max_concurrent_requests)
    });
    tracing::info!(
        fd_soft_was = fd.soft_was,
        fd_soft = fd.soft,
        fd_hard = fd.hard,
        max_connections,
        handshake_timeout = ?config.server.handshake_timeout,
        "connection limits"
    );
    max_connections
}

async fn bind(
    what: &'static str,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), BuildError> {
    let bind_error = |source| BuildError::Bind { what, addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    Ok((listener, bound))
}
