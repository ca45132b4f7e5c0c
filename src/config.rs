//! Command-line flags, their environment fallbacks and defaults, and the one
//! validated [`Config`] the rest of the service reads.

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};

use crate::{economy::EconomyConfig, tls::TlsConfig};

/// Env var for `--listen-addr`: where the gRPC server listens.
pub const ENV_LISTEN_ADDR: &str = "COGNITO_FACADE_LISTEN_ADDR";
/// Default gRPC listen address: every interface, the conventional gRPC port.
pub const DEFAULT_LISTEN_ADDR: &str = "0.0.0.0:50051";
/// Env var for `--log-format`.
pub const ENV_LOG_FORMAT: &str = "COGNITO_FACADE_LOG_FORMAT";
/// Env var for `--region`; the AWS SDKs' own name, so it works as it does for
/// any AWS SDK. `AWS_DEFAULT_REGION` and the profile's region are also read.
pub const ENV_REGION: &str = "AWS_REGION";
/// Env var for `--cognito-endpoint`; the AWS SDKs' own service-specific name.
/// The SDK also honours the general `AWS_ENDPOINT_URL`.
pub const ENV_COGNITO_ENDPOINT: &str = "AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER";
/// Env var for `--connect-timeout`.
pub const ENV_CONNECT_TIMEOUT: &str = "COGNITO_FACADE_CONNECT_TIMEOUT";
/// Default TCP+TLS connect timeout to Cognito: a regional endpoint connects in
/// tens of milliseconds; a second means it is not coming.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Env var for `--attempt-timeout`.
pub const ENV_ATTEMPT_TIMEOUT: &str = "COGNITO_FACADE_ATTEMPT_TIMEOUT";
/// Default timeout of one HTTP attempt; leaves room for a retry inside the
/// call timeout.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Env var for `--call-timeout`.
pub const ENV_CALL_TIMEOUT: &str = "COGNITO_FACADE_CALL_TIMEOUT";
/// Default bound on one upstream call, retries and backoff included. A
/// caller's shorter gRPC deadline wins.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Env var for `--max-attempts`.
pub const ENV_MAX_ATTEMPTS: &str = "COGNITO_FACADE_MAX_ATTEMPTS";
/// Default attempts per upstream call (the AWS SDKs' standard retry mode).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Env var for `--retry-backoff`.
pub const ENV_RETRY_BACKOFF: &str = "COGNITO_FACADE_RETRY_BACKOFF";
/// Default initial retry backoff. The SDK doubles it per retry with full
/// jitter; its own default (1s) would spend most of a 5s call budget waiting.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// Env var for `--drain-delay`.
pub const ENV_DRAIN_DELAY: &str = "COGNITO_FACADE_DRAIN_DELAY";
/// Default time between reporting NOT_SERVING and closing the listener, so
/// load balancers and Kubernetes endpoints notice first.
pub const DEFAULT_DRAIN_DELAY: Duration = Duration::from_secs(5);
/// Env var for `--shutdown-grace`.
pub const ENV_SHUTDOWN_GRACE: &str = "COGNITO_FACADE_SHUTDOWN_GRACE";
/// Default time in-flight calls get to finish once the listener is closed.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Env var for `--metrics-addr`.
pub const ENV_METRICS_ADDR: &str = "COGNITO_FACADE_METRICS_ADDR";
/// Default Prometheus listener: every interface, the conventional exporter port.
pub const DEFAULT_METRICS_ADDR: &str = "0.0.0.0:9090";
/// Env var for `--tls-cert`.
pub const ENV_TLS_CERT: &str = "COGNITO_FACADE_TLS_CERT";
/// Env var for `--tls-key`.
pub const ENV_TLS_KEY: &str = "COGNITO_FACADE_TLS_KEY";
/// Env var for `--tls-client-ca`.
pub const ENV_TLS_CLIENT_CA: &str = "COGNITO_FACADE_TLS_CLIENT_CA";
/// Env var for `--max-concurrent-requests`.
pub const ENV_MAX_CONCURRENT_REQUESTS: &str = "COGNITO_FACADE_MAX_CONCURRENT_REQUESTS";
/// Default bound on concurrent upstream calls. Each costs a few KiB; a
/// thousand in flight stays far below Cognito's per-pool request quotas'
/// usual concurrency and this process's memory budget.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: u32 = 1000;
/// Env var for `--max-connection-age`.
pub const ENV_MAX_CONNECTION_AGE: &str = "COGNITO_FACADE_MAX_CONNECTION_AGE";
/// Default lifetime of a client connection before the server sends GOAWAY, so
/// clients reconnect and spread over new replicas after a scale-out.
pub const DEFAULT_MAX_CONNECTION_AGE: Duration = Duration::from_secs(300);
/// Env var for `--keepalive-interval`.
pub const ENV_KEEPALIVE_INTERVAL: &str = "COGNITO_FACADE_KEEPALIVE_INTERVAL";
/// Default HTTP/2 keepalive ping interval, so dead peers are noticed.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Env var for `--keepalive-timeout`.
pub const ENV_KEEPALIVE_TIMEOUT: &str = "COGNITO_FACADE_KEEPALIVE_TIMEOUT";
/// Default time a keepalive ping may go unanswered before the connection closes.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Env var for `--coalesce`.
pub const ENV_COALESCE: &str = "COGNITO_FACADE_COALESCE";
/// Env var for `--cache-ttl`.
pub const ENV_CACHE_TTL: &str = "COGNITO_FACADE_CACHE_TTL";
/// Env var for `--cache-max-entries`.
pub const ENV_CACHE_MAX_ENTRIES: &str = "COGNITO_FACADE_CACHE_MAX_ENTRIES";
/// Default bound on cached answers: a few hundred bytes each, so at most a
/// few MiB.
pub const DEFAULT_CACHE_MAX_ENTRIES: u32 = 10_000;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object a line, for log pipelines.
    Json,
    /// Human-readable lines.
    Text,
}

/// Where the Prometheus endpoint listens, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsAddr(pub Option<SocketAddr>);

impl FromStr for MetricsAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "off" {
            return Ok(Self(None));
        }
        text.parse()
            .map(|addr| Self(Some(addr)))
            .map_err(|_| format!("expected ADDR:PORT or `off`, got {text:?}"))
    }
}

impl fmt::Display for MetricsAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("off"),
        }
    }
}

/// The command line, as clap parses it. [`Config::try_from`] validates it.
#[derive(Debug, Parser)]
#[command(name = "cognito-facade", version, about, long_about = None)]
pub struct Cli {
    /// Run a subcommand instead of the server.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address the gRPC server listens on.
    #[arg(long, env = ENV_LISTEN_ADDR, default_value = DEFAULT_LISTEN_ADDR, value_name = "ADDR")]
    pub listen_addr: SocketAddr,

    /// Log line format. `RUST_LOG` sets the filter (default `info`).
    #[arg(long, env = ENV_LOG_FORMAT, value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,

    /// AWS region of the user pool, e.g. eu-west-1. Without it: AWS_DEFAULT_REGION, then the
    /// AWS profile's region.
    #[arg(long, env = ENV_REGION, value_name = "REGION")]
    pub region: Option<String>,

    /// Cognito endpoint URL, overriding the regional one (and AWS_ENDPOINT_URL).
    #[arg(long, env = ENV_COGNITO_ENDPOINT, value_name = "URL")]
    pub cognito_endpoint: Option<String>,

    /// Timeout to open a connection to Cognito.
    #[arg(long, env = ENV_CONNECT_TIMEOUT, default_value_t = DEFAULT_CONNECT_TIMEOUT.into(), value_name = "DURATION")]
    pub connect_timeout: humantime::Duration,

    /// Timeout of one HTTP attempt to Cognito.
    #[arg(long, env = ENV_ATTEMPT_TIMEOUT, default_value_t = DEFAULT_ATTEMPT_TIMEOUT.into(), value_name = "DURATION")]
    pub attempt_timeout: humantime::Duration,

    /// Timeout of a whole upstream call, retries included. A shorter caller deadline wins.
    #[arg(long, env = ENV_CALL_TIMEOUT, default_value_t = DEFAULT_CALL_TIMEOUT.into(), value_name = "DURATION")]
    pub call_timeout: humantime::Duration,

    /// Attempts per upstream call, the first included (1 disables retries).
    #[arg(long, env = ENV_MAX_ATTEMPTS, default_value_t = DEFAULT_MAX_ATTEMPTS, value_parser = clap::value_parser!(u32).range(1..=10), value_name = "N")]
    pub max_attempts: u32,

    /// Initial backoff before a retry; doubled per retry, with full jitter.
    #[arg(long, env = ENV_RETRY_BACKOFF, default_value_t = DEFAULT_RETRY_BACKOFF.into(), value_name = "DURATION")]
    pub retry_backoff: humantime::Duration,

    /// On SIGTERM/SIGINT: how long to report NOT_SERVING while still serving, before closing the listener.
    #[arg(long, env = ENV_DRAIN_DELAY, default_value_t = DEFAULT_DRAIN_DELAY.into(), value_name = "DURATION")]
    pub drain_delay: humantime::Duration,

    /// On shutdown: how long in-flight calls get to finish once the listener is closed.
    #[arg(long, env = ENV_SHUTDOWN_GRACE, default_value_t = DEFAULT_SHUTDOWN_GRACE.into(), value_name = "DURATION")]
    pub shutdown_grace: humantime::Duration,

    /// Prometheus /metrics listen address, or `off`.
    #[arg(long, env = ENV_METRICS_ADDR, default_value = DEFAULT_METRICS_ADDR, value_name = "ADDR|off")]
    pub metrics_addr: MetricsAddr,

    /// PEM certificate chain: serve gRPC over TLS (needs --tls-key).
    #[arg(long, env = ENV_TLS_CERT, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = ENV_TLS_KEY, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle: require client certificates that chain to it (mutual TLS; needs --tls-cert).
    #[arg(long, env = ENV_TLS_CLIENT_CA, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Most upstream calls in flight at once; more are refused at once with RESOURCE_EXHAUSTED.
    #[arg(long, env = ENV_MAX_CONCURRENT_REQUESTS, default_value_t = DEFAULT_MAX_CONCURRENT_REQUESTS, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub max_concurrent_requests: u32,

    /// Lifetime of a client connection before GOAWAY, so clients rebalance across replicas.
    #[arg(long, env = ENV_MAX_CONNECTION_AGE, default_value_t = DEFAULT_MAX_CONNECTION_AGE.into(), value_name = "DURATION")]
    pub max_connection_age: humantime::Duration,

    /// Concurrent calls with the same token share one call to Cognito (`--coalesce=false` turns it off).
    #[arg(long, env = ENV_COALESCE, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub coalesce: bool,

    /// Serve a token's successful answer from memory for this long (off by default). A revoked
    /// token keeps its answer until the TTL ends.
    #[arg(long, env = ENV_CACHE_TTL, value_name = "DURATION")]
    pub cache_ttl: Option<humantime::Duration>,

    /// Most answers the cache holds; the oldest go first.
    #[arg(long, env = ENV_CACHE_MAX_ENTRIES, default_value_t = DEFAULT_CACHE_MAX_ENTRIES, value_name = "N")]
    pub cache_max_entries: u32,

    /// HTTP/2 keepalive ping interval.
    #[arg(long, env = ENV_KEEPALIVE_INTERVAL, default_value_t = DEFAULT_KEEPALIVE_INTERVAL.into(), value_name = "DURATION")]
    pub keepalive_interval: humantime::Duration,

    /// How long a keepalive ping may go unanswered before the connection is closed.
    #[arg(long, env = ENV_KEEPALIVE_TIMEOUT, default_value_t = DEFAULT_KEEPALIVE_TIMEOUT.into(), value_name = "DURATION")]
    pub keepalive_timeout: humantime::Duration,
}

/// Subcommands of the binary.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ask a running server's grpc.health.v1 Check; exit 0 only if it answers SERVING
    /// (for container HEALTHCHECKs: no extra probe binary needed).
    Healthcheck(HealthcheckArgs),
}

/// Flags of `cognito-facade healthcheck`.
#[derive(Debug, Clone, clap::Args)]
pub struct HealthcheckArgs {
    /// The server to ask.
    #[arg(long, default_value = "127.0.0.1:50051", value_name = "ADDR")]
    pub addr: SocketAddr,

    /// The service to ask about; empty for the whole server.
    #[arg(long, default_value = "")]
    pub service: String,

    /// How long to wait for the answer, connecting included.
    #[arg(long, default_value = "2s", value_name = "DURATION")]
    pub timeout: humantime::Duration,
}

/// Everything the service needs to know, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the gRPC server listens (`main` binds it; the library takes the
    /// bound listener).
    pub listen_addr: SocketAddr,
    /// Log line format.
    pub log_format: LogFormat,
    /// The upstream (Cognito) settings.
    pub upstream: UpstreamConfig,
    /// Time between NOT_SERVING and closing the listener on shutdown.
    pub drain_delay: Duration,
    /// Time in-flight calls get once the listener is closed.
    pub shutdown_grace: Duration,
    /// Where `/metrics` is served; `None` turns it off.
    pub metrics_addr: Option<SocketAddr>,
    /// TLS on the gRPC listener; `None` serves plaintext (h2c).
    pub tls: Option<TlsConfig>,
    /// Load and connection limits.
    pub limits: Limits,
    /// Single flight and cache.
    pub economy: EconomyConfig,
}

/// Load and connection management.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most upstream calls in flight at once.
    pub max_concurrent_requests: usize,
    /// Lifetime of a client connection before GOAWAY.
    pub max_connection_age: Duration,
    /// HTTP/2 keepalive ping interval.
    pub keepalive_interval: Duration,
    /// HTTP/2 keepalive ping timeout.
    pub keepalive_timeout: Duration,
}

impl Default for Limits {
    /// The documented defaults.
    fn default() -> Self {
        Self {
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS as usize,
            max_connection_age: DEFAULT_MAX_CONNECTION_AGE,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
        }
    }
}

/// How the service reaches Cognito.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// Region; `None` leaves it to the environment and the AWS profile.
    pub region: Option<String>,
    /// Endpoint URL override.
    pub endpoint: Option<String>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Timeout of one attempt.
    pub attempt_timeout: Duration,
    /// Timeout of a whole call, retries included.
    pub call_timeout: Duration,
    /// Attempts per call.
    pub max_attempts: u32,
    /// Initial retry backoff.
    pub retry_backoff: Duration,
}

/// A flag value that parses but makes no sense.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A timeout or delay of zero.
    #[error("--{flag} must be greater than zero")]
    ZeroDuration {
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
    /// An endpoint that is not an absolute http(s) URL.
    #[error(
        "--cognito-endpoint / {ENV_COGNITO_ENDPOINT} must be an http:// or https:// URL, got {0:?}"
    )]
    BadEndpoint(String),
    /// An empty region.
    #[error("--region / {ENV_REGION} must not be empty")]
    EmptyRegion,
    /// A certificate, key or CA that cannot be read or used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

impl TryFrom<Cli> for Config {
    type Error = ConfigError;

    fn try_from(cli: Cli) -> Result<Self, ConfigError> {
        let upstream = UpstreamConfig {
            region: cli.region,
            endpoint: cli.cognito_endpoint,
            connect_timeout: cli.connect_timeout.into(),
            attempt_timeout: cli.attempt_timeout.into(),
            call_timeout: cli.call_timeout.into(),
            max_attempts: cli.max_attempts,
            retry_backoff: cli.retry_backoff.into(),
        };
        let tls = match (&cli.tls_cert, &cli.tls_key) {
            (Some(cert), Some(key)) => Some(TlsConfig::from_files(
                cert,
                key,
                cli.tls_client_ca.as_deref(),
            )?),
            // clap's `requires` makes the two go together.
            _ => None,
        };
        let config = Config {
            listen_addr: cli.listen_addr,
            log_format: cli.log_format,
            upstream,
            drain_delay: cli.drain_delay.into(),
            shutdown_grace: cli.shutdown_grace.into(),
            metrics_addr: cli.metrics_addr.0,
            tls,
            limits: Limits {
                max_concurrent_requests: cli.max_concurrent_requests as usize,
                max_connection_age: cli.max_connection_age.into(),
                keepalive_interval: cli.keepalive_interval.into(),
                keepalive_timeout: cli.keepalive_timeout.into(),
            },
            economy: EconomyConfig {
                coalesce: cli.coalesce,
                // A zero TTL means off, like leaving the flag out.
                cache_ttl: cli
                    .cache_ttl
                    .map(Duration::from)
                    .filter(|ttl| !ttl.is_zero()),
                cache_max_entries: cli.cache_max_entries as usize,
            },
        };
        config.validate()?;
        Ok(config)
    }
}

impl Config {
    /// Checks what clap cannot: relations between values and URL shapes.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let up = &self.upstream;
        for (flag, value) in [
            ("connect-timeout", up.connect_timeout),
            ("attempt-timeout", up.attempt_timeout),
            ("call-timeout", up.call_timeout),
            ("shutdown-grace", self.shutdown_grace),
            ("max-connection-age", self.limits.max_connection_age),
            ("keepalive-interval", self.limits.keepalive_interval),
            ("keepalive-timeout", self.limits.keepalive_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::ZeroDuration { flag });
            }
        }
        if up.attempt_timeout > up.call_timeout {
            return Err(ConfigError::AttemptLongerThanCall {
                attempt: up.attempt_timeout,
                call: up.call_timeout,
            });
        }
        if up.region.as_deref().is_some_and(|r| r.trim().is_empty()) {
            return Err(ConfigError::EmptyRegion);
        }
        if let Some(endpoint) = &up.endpoint {
            let uri: tonic::codegen::http::Uri = endpoint
                .parse()
                .map_err(|_| ConfigError::BadEndpoint(endpoint.clone()))?;
            let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
            if !scheme_ok || uri.host().is_none() {
                return Err(ConfigError::BadEndpoint(endpoint.clone()));
            }
        }
        Ok(())
    }
}

impl Default for UpstreamConfig {
    /// The documented defaults, no region and no endpoint override.
    fn default() -> Self {
        Self {
            region: None,
            endpoint: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            retry_backoff: DEFAULT_RETRY_BACKOFF,
        }
    }
}

impl Default for Config {
    /// The documented defaults.
    fn default() -> Self {
        Self {
            listen_addr: SocketAddr::from(([0, 0, 0, 0], 50051)),
            log_format: LogFormat::Json,
            upstream: UpstreamConfig::default(),
            drain_delay: DEFAULT_DRAIN_DELAY,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            metrics_addr: Some(SocketAddr::from(([0, 0, 0, 0], 9090))),
            tls: None,
            limits: Limits::default(),
            economy: EconomyConfig {
                coalesce: true,
                cache_ttl: None,
                cache_max_entries: DEFAULT_CACHE_MAX_ENTRIES as usize,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let cli =
            Cli::try_parse_from(std::iter::once("cognito-facade").chain(args.iter().copied()))
                .map_err(|err| err.to_string())?;
        Config::try_from(cli).map_err(|err| err.to_string())
    }

    #[test]
    fn defaults_match_the_documented_constants() {
        let config = parse(&["--region", "eu-west-1"]).unwrap();
        let defaults = Config::default();
        assert_eq!(config.listen_addr, DEFAULT_LISTEN_ADDR.parse().unwrap());
        assert_eq!(config.listen_addr, defaults.listen_addr);
        assert_eq!(config.upstream.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(config.upstream.attempt_timeout, DEFAULT_ATTEMPT_TIMEOUT);
        assert_eq!(config.upstream.call_timeout, DEFAULT_CALL_TIMEOUT);
        assert_eq!(config.upstream.max_attempts, DEFAULT_MAX_ATTEMPTS);
        assert_eq!(config.upstream.retry_backoff, DEFAULT_RETRY_BACKOFF);
        assert_eq!(config.drain_delay, defaults.drain_delay);
        assert_eq!(config.shutdown_grace, defaults.shutdown_grace);
        assert_eq!(config.upstream.region.as_deref(), Some("eu-west-1"));
        assert_eq!(config.metrics_addr, DEFAULT_METRICS_ADDR.parse().ok());
        assert_eq!(config.metrics_addr, defaults.metrics_addr);
        assert_eq!(config.limits, defaults.limits);
        assert_eq!(config.economy, defaults.economy);
        assert!(config.tls.is_none());
    }

    #[test]
    fn coalescing_and_the_cache_are_configurable() {
        let config = parse(&["--coalesce=false", "--cache-ttl", "30s"]).unwrap();
        assert!(!config.economy.coalesce);
        assert_eq!(config.economy.cache_ttl, Some(Duration::from_secs(30)));
        let config = parse(&["--cache-ttl", "0s"]).unwrap();
        assert_eq!(config.economy.cache_ttl, None);
    }

    #[test]
    fn metrics_can_be_turned_off() {
        let config = parse(&["--metrics-addr", "off"]).unwrap();
        assert_eq!(config.metrics_addr, None);
        let config = parse(&["--metrics-addr", "127.0.0.1:9100"]).unwrap();
        assert_eq!(config.metrics_addr, Some("127.0.0.1:9100".parse().unwrap()));
    }

    #[test]
    fn parses_human_durations() {
        let config = parse(&["--attempt-timeout", "250ms", "--call-timeout", "1m 30s"]).unwrap();
        assert_eq!(config.upstream.attempt_timeout, Duration::from_millis(250));
        assert_eq!(config.upstream.call_timeout, Duration::from_secs(90));
    }

    #[test]
    fn refuses_bad_values() {
        for (args, needle) in [
            (&["--listen-addr", "nowhere"][..], "--listen-addr"),
            (&["--connect-timeout", "soon"][..], "--connect-timeout"),
            (&["--connect-timeout", "0s"][..], "--connect-timeout"),
            (&["--max-attempts", "0"][..], "--max-attempts"),
            (&["--log-format", "xml"][..], "--log-format"),
            (
                &["--attempt-timeout", "10s", "--call-timeout", "5s"][..],
                "--attempt-timeout",
            ),
            (
                &["--cognito-endpoint", "localhost:9229"][..],
                "--cognito-endpoint",
            ),
            (
                &["--cognito-endpoint", "ftp://example.com"][..],
                "--cognito-endpoint",
            ),
            (&["--region", " "][..], "--region"),
            (&["--metrics-addr", "nine"][..], "--metrics-addr"),
            (
                &["--max-concurrent-requests", "0"][..],
                "--max-concurrent-requests",
            ),
            (&["--max-connection-age", "0s"][..], "--max-connection-age"),
            (&["--tls-cert", "/nonexistent.pem"][..], "--tls-key"),
            (&["--tls-client-ca", "/ca.pem"][..], "--tls-cert"),
            (
                &["--tls-cert", "/nonexistent.pem", "--tls-key", "/k.pem"][..],
                "/nonexistent.pem",
            ),
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }

    #[test]
    fn accepts_an_http_endpoint() {
        let config = parse(&["--cognito-endpoint", "http://127.0.0.1:9229"]).unwrap();
        assert_eq!(
            config.upstream.endpoint.as_deref(),
            Some("http://127.0.0.1:9229")
        );
    }
}
