//! The one validated [`Config`] the application is built from: it assembles
//! each component's own settings (with their own defaults) and names the
//! environment variable of every setting. The command line that fills it in
//! belongs to the binary (`src/cli.rs`).

use std::{net::SocketAddr, time::Duration};

use crate::token::pools::is_region;

// Every component's settings and defaults, so a user of the library (the
// binary among them) finds them all here.
pub use crate::{
    base::caller::{AdminCallers, CallerConfig, CallerWeights},
    base::telemetry::{DEFAULT_FILTER, LogFormat},
    economy::{DEFAULT_CACHE_MAX_ENTRIES, DEFAULT_REFUSAL_TTL, EconomyConfig},
    observability::{
        prometheus::DEFAULT_METRICS_ADDR,
        traces::{DEFAULT_SERVICE_NAME, TracingConfig},
    },
    quota::{DEFAULT_UPSTREAM_QUEUE_TIMEOUT, QuotaConfig, RateLimits},
    rpc::service::{DEFAULT_MAX_CONCURRENT_REQUESTS, ExtAuthzConfig, ServiceConfig},
    server::{
        ServerConfig,
        bodies::{
            BodyLimits, DEFAULT_CONNECTION_REQUEST_BYTES, DEFAULT_REQUEST_BODY_TIMEOUT,
            DEFAULT_REQUEST_BYTES_IN_FLIGHT, MIN_CONNECTION_REQUEST_BYTES,
        },
        listener::DEFAULT_HANDSHAKE_TIMEOUT,
        tls::{TlsConfig, TlsError},
    },
    store::{
        DEFAULT_REDIS_TIMEOUT, FleetConfig, FleetKey, FleetKeyError, MIN_FLEET_KEY_BYTES,
        RedisMode, without_password,
    },
    token::pools::UserPoolId,
    upstream::{
        DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_CALL_TIMEOUT, DEFAULT_CONNECT_TIMEOUT,
        DEFAULT_MAX_ATTEMPTS, DEFAULT_RETRY_BACKOFF, UpstreamConfig,
    },
    verify::TokenConfig,
};

/// Env var for `--listen-addr` (and the address `healthcheck` probes).
pub const ENV_LISTEN_ADDR: &str = "COGNITO_FACADE_LISTEN_ADDR";
/// Env var for `--log-format`.
pub const ENV_LOG_FORMAT: &str = "COGNITO_FACADE_LOG_FORMAT";
/// Env var for `--region`; the AWS SDKs' own name, so it works as it does for
/// any AWS SDK. `AWS_DEFAULT_REGION` and the profile's region are also read.
pub const ENV_REGION: &str = "AWS_REGION";
/// Env var for `--cognito-endpoint`; the AWS SDKs' own service-specific name.
/// The SDK also honours the general `AWS_ENDPOINT_URL`.
pub const ENV_COGNITO_ENDPOINT: &str = "AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER";
/// Env var for `--region-endpoint` (comma-separated `REGION=URL`s).
pub const ENV_REGION_ENDPOINTS: &str = "COGNITO_FACADE_REGION_ENDPOINTS";
/// Env var for `--user-pool-id` (comma-separated).
pub const ENV_USER_POOL_IDS: &str = "COGNITO_FACADE_USER_POOL_IDS";
/// Env var for `--verify-tokens`.
pub const ENV_VERIFY_TOKENS: &str = "COGNITO_FACADE_VERIFY_TOKENS";
/// Env var for `--client-id` (comma-separated).
pub const ENV_CLIENT_IDS: &str = "COGNITO_FACADE_CLIENT_IDS";
/// Env var for `--jwks-refresh-interval`.
pub const ENV_JWKS_REFRESH_INTERVAL: &str = "COGNITO_FACADE_JWKS_REFRESH_INTERVAL";
/// Env var for `--connect-timeout`.
pub const ENV_CONNECT_TIMEOUT: &str = "COGNITO_FACADE_CONNECT_TIMEOUT";
/// Env var for `--attempt-timeout`.
pub const ENV_ATTEMPT_TIMEOUT: &str = "COGNITO_FACADE_ATTEMPT_TIMEOUT";
/// Env var for `--call-timeout`.
pub const ENV_CALL_TIMEOUT: &str = "COGNITO_FACADE_CALL_TIMEOUT";
/// Env var for `--max-attempts`.
pub const ENV_MAX_ATTEMPTS: &str = "COGNITO_FACADE_MAX_ATTEMPTS";
/// Env var for `--retry-backoff`.
pub const ENV_RETRY_BACKOFF: &str = "COGNITO_FACADE_RETRY_BACKOFF";
/// Env var for `--drain-delay`.
pub const ENV_DRAIN_DELAY: &str = "COGNITO_FACADE_DRAIN_DELAY";
/// Env var for `--shutdown-grace`.
pub const ENV_SHUTDOWN_GRACE: &str = "COGNITO_FACADE_SHUTDOWN_GRACE";
/// Env var for `--metrics-addr`.
pub const ENV_METRICS_ADDR: &str = "COGNITO_FACADE_METRICS_ADDR";
/// Env var for `--tls-cert`.
pub const ENV_TLS_CERT: &str = "COGNITO_FACADE_TLS_CERT";
/// Env var for `--tls-key`.
pub const ENV_TLS_KEY: &str = "COGNITO_FACADE_TLS_KEY";
/// Env var for `--tls-client-ca`.
pub const ENV_TLS_CLIENT_CA: &str = "COGNITO_FACADE_TLS_CLIENT_CA";
/// Env var for `--max-concurrent-requests`.
pub const ENV_MAX_CONCURRENT_REQUESTS: &str = "COGNITO_FACADE_MAX_CONCURRENT_REQUESTS";
/// Env var for `--max-connection-age`.
pub const ENV_MAX_CONNECTION_AGE: &str = "COGNITO_FACADE_MAX_CONNECTION_AGE";
/// Env var for `--keepalive-interval`.
pub const ENV_KEEPALIVE_INTERVAL: &str = "COGNITO_FACADE_KEEPALIVE_INTERVAL";
/// Env var for `--keepalive-timeout`.
pub const ENV_KEEPALIVE_TIMEOUT: &str = "COGNITO_FACADE_KEEPALIVE_TIMEOUT";
/// Env var for `--handshake-timeout`.
pub const ENV_HANDSHAKE_TIMEOUT: &str = "COGNITO_FACADE_HANDSHAKE_TIMEOUT";
/// Env var for `--max-connections`.
pub const ENV_MAX_CONNECTIONS: &str = "COGNITO_FACADE_MAX_CONNECTIONS";
/// Env var for `--max-request-bytes-in-flight`.
pub const ENV_MAX_REQUEST_BYTES_IN_FLIGHT: &str = "COGNITO_FACADE_MAX_REQUEST_BYTES_IN_FLIGHT";
/// Env var for `--max-connection-request-bytes`.
pub const ENV_MAX_CONNECTION_REQUEST_BYTES: &str = "COGNITO_FACADE_MAX_CONNECTION_REQUEST_BYTES";
/// Env var for `--request-body-timeout`.
pub const ENV_REQUEST_BODY_TIMEOUT: &str = "COGNITO_FACADE_REQUEST_BODY_TIMEOUT";
/// Env var for `--redis-url`.
pub const ENV_REDIS_URL: &str = "COGNITO_FACADE_REDIS_URL";
/// Env var for `--redis-mode`.
pub const ENV_REDIS_MODE: &str = "COGNITO_FACADE_REDIS_MODE";
/// Env var for `--fleet-key-file`.
pub const ENV_FLEET_KEY_FILE: &str = "COGNITO_FACADE_FLEET_KEY_FILE";
/// Env var for `--fleet-previous-key-file`.
pub const ENV_FLEET_PREVIOUS_KEY_FILE: &str = "COGNITO_FACADE_FLEET_PREVIOUS_KEY_FILE";
/// Env var for `--fleet-naming-key-file`.
pub const ENV_FLEET_NAMING_KEY_FILE: &str = "COGNITO_FACADE_FLEET_NAMING_KEY_FILE";
/// Env var for `--fleet-size-hint`.
pub const ENV_FLEET_SIZE_HINT: &str = "COGNITO_FACADE_FLEET_SIZE_HINT";
/// Env var for `--redis-timeout`.
pub const ENV_REDIS_TIMEOUT: &str = "COGNITO_FACADE_REDIS_TIMEOUT";
/// Env var for `--coalesce`.
pub const ENV_COALESCE: &str = "COGNITO_FACADE_COALESCE";
/// Env var for `--cache-ttl`.
pub const ENV_CACHE_TTL: &str = "COGNITO_FACADE_CACHE_TTL";
/// Env var for `--stale-if-error`.
pub const ENV_STALE_IF_ERROR: &str = "COGNITO_FACADE_STALE_IF_ERROR";
/// Env var for `--refusal-ttl`.
pub const ENV_REFUSAL_TTL: &str = "COGNITO_FACADE_REFUSAL_TTL";
/// Env var for `--upstream-rate-limit` (comma-separated `RATE` or
/// `REGION=RATE` entries).
pub const ENV_UPSTREAM_RATE_LIMIT: &str = "COGNITO_FACADE_UPSTREAM_RATE_LIMIT";
/// Env var of `--caller-weight`.
pub const ENV_CALLER_WEIGHT: &str = "COGNITO_FACADE_CALLER_WEIGHT";
/// Env var of `--admin-callers`.
pub const ENV_ADMIN_CALLERS: &str = "COGNITO_FACADE_ADMIN_CALLERS";
/// Env var of `--trust-forwarded-client-cert`.
pub const ENV_TRUST_FORWARDED_CLIENT_CERT: &str = "COGNITO_FACADE_TRUST_FORWARDED_CLIENT_CERT";
/// Env var for `--upstream-queue-timeout`.
pub const ENV_UPSTREAM_QUEUE_TIMEOUT: &str = "COGNITO_FACADE_UPSTREAM_QUEUE_TIMEOUT";
/// Env var for `--cache-max-entries`.
pub const ENV_CACHE_MAX_ENTRIES: &str = "COGNITO_FACADE_CACHE_MAX_ENTRIES";
/// Env var for `--ext-authz-username-header`.
pub const ENV_EXT_AUTHZ_USERNAME_HEADER: &str = "COGNITO_FACADE_EXT_AUTHZ_USERNAME_HEADER";
/// Env var for `--ext-authz-remove-authorization`.
pub const ENV_EXT_AUTHZ_REMOVE_AUTHORIZATION: &str =
    "COGNITO_FACADE_EXT_AUTHZ_REMOVE_AUTHORIZATION";

/// Everything the application needs to know.
#[derive(Debug, Clone)]
pub struct Config {
    /// The gRPC server: listener, connections, TLS, shutdown.
    pub server: ServerConfig,
    /// The RPC itself.
    pub service: ServiceConfig,
    /// How Cognito is reached.
    pub upstream: UpstreamConfig,
    /// The pools served and how their tokens are checked.
    pub tokens: TokenConfig,
    /// Single flight and cache.
    pub economy: EconomyConfig,
    /// The fleet store (Redis or Valkey); `None`: each replica alone.
    pub fleet: Option<FleetConfig>,
    /// The upstream rate limit.
    pub quota: QuotaConfig,
    /// Log line format.
    pub log_format: LogFormat,
    /// Where `/metrics` is served; `None` turns it off.
    pub metrics_addr: Option<SocketAddr>,
    /// Trace propagation and export (from the OpenTelemetry environment).
    pub tracing: TracingConfig,
}

impl Default for Config {
    /// The documented defaults, each from the component that owns it.
    fn default() -> Self {
        Self {
            server: ServerConfig::default(),
            service: ServiceConfig::default(),
            upstream: UpstreamConfig::default(),
            tokens: TokenConfig::default(),
            economy: EconomyConfig::default(),
            fleet: None,
            quota: QuotaConfig::default(),
            log_format: LogFormat::default(),
            metrics_addr: Some(DEFAULT_METRICS_ADDR),
            tracing: TracingConfig::default(),
        }
    }
}

/// A setting that parses but makes no sense.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A duration too long to be meant (and too long to add to a clock).
    #[error("--{flag} must be at most {MAX_DURATION_DAYS} days")]
    TooLongDuration {
        /// The flag's name.
        flag: &'static str,
    },
    /// A timeout or delay of zero.
    #[error("--{flag} must be greater than zero")]
    ZeroDuration {
        /// The flag's name.
        flag: &'static str,
    },
    /// A limit of zero.
    #[error("--{flag} must be at least 1")]
    ZeroLimit {
        /// The flag's name.
        flag: &'static str,
    },
    /// An attempt timeout longer than the whole call's.
    #[error("--attempt-timeout ({attempt:?}) must not exceed --call-timeout ({call:?})")]
    AttemptLongerThanCall {
        /// The attempt timeout.
        attempt: Duration,
        /// The call timeout.
        call: Duration,
    },
    /// A wait for a turn that the attempt's own timeout would cut short.
    #[error(
        "--upstream-queue-timeout ({queue:?}) must be shorter than --attempt-timeout ({attempt:?}): an attempt waits for its turn within its own timeout"
    )]
    QueueLongerThanAttempt {
        /// The queue timeout.
        queue: Duration,
        /// The attempt timeout.
        attempt: Duration,
    },
    /// A connection's share of the request bytes too small for the
    /// largest message, or larger than the whole budget.
    #[error(
        "--max-connection-request-bytes ({per_connection}) must be at least {MIN_CONNECTION_REQUEST_BYTES} (the largest message, a frame and a stream's cost) and at most --max-request-bytes-in-flight ({in_flight})"
    )]
    BadRequestBytes {
        /// The connection's share.
        per_connection: usize,
        /// The whole budget.
        in_flight: usize,
    },
    /// An endpoint that is not an absolute http(s) URL.
    #[error(
        "--cognito-endpoint / {ENV_COGNITO_ENDPOINT} must be an http:// or https:// URL, got {0:?}"
    )]
    BadEndpoint(String),
    /// An empty region.
    #[error("--region / {ENV_REGION} must not be empty")]
    EmptyRegion,
    /// A per-region endpoint whose region is not a region name.
    #[error("--region-endpoint: {0:?} is not an AWS region (for example eu-west-1=https://...)")]
    BadEndpointRegion(String),
    /// An empty app client id.
    #[error("--client-id / {ENV_CLIENT_IDS} must not hold an empty id")]
    EmptyClientId,
    /// A certificate, key or CA that cannot be read or used.
    #[error(transparent)]
    Tls(#[from] crate::server::tls::TlsError),
    /// The fleet key file cannot be used.
    #[error(transparent)]
    FleetKey(#[from] crate::store::FleetKeyError),
    /// A rotation that would rename every key: the names would follow the
    /// new fleet key, and replicas on the old one would be another fleet.
    #[error(
        "--fleet-previous-key-file needs --fleet-naming-key-file (the key names keep coming from it during and after the rotation; give the previous key file, if names came from it)"
    )]
    RotationWithoutNamingKey,
    /// A fleet flag without `--redis-url`.
    #[error("--{0} is only used with --redis-url")]
    FleetFlagAlone(&'static str),
    /// `--admin-callers` without a pool to ask about.
    #[error(
        "--admin-callers needs --user-pool-id: AdminGetUserAuthFactors answers only for the pools served"
    )]
    AdminWithoutPools,
    /// A fleet key flag other than `--fleet-key-file` without it.
    #[error("--{0} is only used with --fleet-key-file")]
    FleetKeyFlagAlone(&'static str),
    /// `--redis-url` without `--fleet-key-file`.
    #[error("--redis-url needs --fleet-key-file (the fleet's shared secret)")]
    FleetKeyMissing,
    /// `--fleet-key-file` without `--redis-url`.
    #[error("--fleet-key-file is only used with --redis-url")]
    RedisUrlMissing,
    /// A Redis URL that is not `redis://` or `rediss://` with a host.
    #[error("--redis-url: {0:?} is not a redis:// or rediss:// URL with a host")]
    BadRedisUrl(String),
    /// An OpenTelemetry environment variable that cannot be used.
    #[error(transparent)]
    Tracing(#[from] crate::observability::traces::TracingEnvError),
}

/// The longest duration any flag takes: longer is a mistake, and would
/// overflow a clock when added to it.
pub const MAX_DURATION_DAYS: u64 = 365;

impl Config {
    /// Every duration setting: its flag, its value, and whether zero is
    /// refused.
    fn durations(&self) -> Vec<(&'static str, Duration, bool)> {
        let up = &self.upstream;
        let server = &self.server;
        let economy = &self.economy;
        let mut all = vec![
            ("connect-timeout", up.connect_timeout, true),
            ("attempt-timeout", up.attempt_timeout, true),
            ("call-timeout", up.call_timeout, true),
            ("retry-backoff", up.retry_backoff, false),
            ("drain-delay", server.drain_delay, false),
            ("shutdown-grace", server.shutdown_grace, true),
            ("max-connection-age", server.max_connection_age, true),
            ("keepalive-interval", server.keepalive_interval, true),
            ("keepalive-timeout", server.keepalive_timeout, true),
            ("handshake-timeout", server.handshake_timeout, true),
            ("request-body-timeout", server.bodies.read_timeout, true),
            (
                "jwks-refresh-interval",
                self.tokens.jwks_refresh_interval,
                true,
            ),
            ("upstream-queue-timeout", self.quota.queue_timeout, false),
            ("cache-ttl", economy.cache_ttl.unwrap_or_default(), false),
            (
                "stale-if-error",
                economy.stale_if_error.unwrap_or_default(),
                false,
            ),
            (
                "refusal-ttl",
                economy.refusal_ttl.unwrap_or_default(),
                false,
            ),
        ];
        if let Some(fleet) = &self.fleet {
            all.push(("redis-timeout", fleet.timeout, true));
        }
        all
    }

    /// Checks what types cannot: relations between values and URL shapes.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let up = &self.upstream;
        let server = &self.server;
        let most = Duration::from_secs(MAX_DURATION_DAYS * 24 * 3600);
        for (flag, value, nonzero) in self.durations() {
            if value > most {
                return Err(ConfigError::TooLongDuration { flag });
            }
            if nonzero && value.is_zero() {
                return Err(ConfigError::ZeroDuration { flag });
            }
        }
        for (flag, value) in [
            ("max-attempts", up.max_attempts as usize),
            (
                "max-concurrent-requests",
                self.service.max_concurrent_requests,
            ),
            ("max-connections", server.max_connections.unwrap_or(1)),
        ] {
            if value == 0 {
                return Err(ConfigError::ZeroLimit { flag });
            }
        }
        validate_bodies(&server.bodies)?;
        if !self.service.callers.admin.is_empty() && self.tokens.pools.is_empty() {
            return Err(ConfigError::AdminWithoutPools);
        }
        validate_quota(&self.quota, up)?;
        if up.attempt_timeout > up.call_timeout {
            return Err(ConfigError::AttemptLongerThanCall {
                attempt: up.attempt_timeout,
                call: up.call_timeout,
            });
        }
        if up.region.as_deref().is_some_and(|r| r.trim().is_empty()) {
            return Err(ConfigError::EmptyRegion);
        }
        for endpoint in up.endpoint.iter().chain(up.region_endpoints.values()) {
            let uri: tonic::codegen::http::Uri = endpoint
                .parse()
                .map_err(|_| ConfigError::BadEndpoint(endpoint.clone()))?;
            let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
            if !scheme_ok || uri.host().is_none() {
                return Err(ConfigError::BadEndpoint(endpoint.clone()));
            }
        }
        if let Some(region) = up.region_endpoints.keys().find(|r| !is_region(r)) {
            return Err(ConfigError::BadEndpointRegion(region.clone()));
        }
        if self.tokens.client_ids.iter().any(|id| id.trim().is_empty()) {
            return Err(ConfigError::EmptyClientId);
        }
        if let Some(fleet) = &self.fleet {
            validate_fleet(fleet)?;
        }
        Ok(())
    }
}

/// A connection's share must hold the largest message and fit the budget.
fn validate_bodies(bodies: &BodyLimits) -> Result<(), ConfigError> {
    if bodies.per_connection < MIN_CONNECTION_REQUEST_BYTES
        || bodies.per_connection > bodies.in_flight
    {
        return Err(ConfigError::BadRequestBytes {
            per_connection: bodies.per_connection,
            in_flight: bodies.in_flight,
        });
    }
    Ok(())
}

/// With a limit, an attempt's wait for its turn fits in its own timeout.
fn validate_quota(quota: &QuotaConfig, up: &UpstreamConfig) -> Result<(), ConfigError> {
    if !quota.limits.is_empty() && quota.queue_timeout >= up.attempt_timeout {
        return Err(ConfigError::QueueLongerThanAttempt {
            queue: quota.queue_timeout,
            attempt: up.attempt_timeout,
        });
    }
    Ok(())
}

/// Each URL parses as `redis://` or `rediss://` with a host (a password in
/// it is never echoed back), and the budget is not zero.
fn validate_fleet(fleet: &FleetConfig) -> Result<(), ConfigError> {
    if fleet.urls.is_empty() {
        return Err(ConfigError::BadRedisUrl(String::new()));
    }
    for url in &fleet.urls {
        let shown = || ConfigError::BadRedisUrl(crate::store::without_password(url));
        let uri: tonic::codegen::http::Uri = url.parse().map_err(|_| shown())?;
        if !matches!(uri.scheme_str(), Some("redis" | "rediss")) || uri.host().is_none() {
            return Err(shown());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn refuses_what_types_allow_but_makes_no_sense() {
        let mut config = Config::default();
        config.upstream.call_timeout = Duration::from_secs(1);
        assert!(matches!(
            config.validate(),
            Err(ConfigError::AttemptLongerThanCall { .. })
        ));
        let mut config = Config::default();
        config.service.max_concurrent_requests = 0;
        assert!(matches!(
            config.validate(),
            Err(ConfigError::ZeroLimit { .. })
        ));
        let mut config = Config::default();
        config.upstream.endpoint = Some("localhost:9229".to_owned());
        assert!(matches!(
            config.validate(),
            Err(ConfigError::BadEndpoint(_))
        ));
    }
}
