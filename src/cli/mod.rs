//! The command line of the binary (flags, their environment variables and
//! defaults, the `healthcheck` subcommand) and its conversion into the
//! library's [`Config`]. Every default shown here is the owning component's
//! constant, so `--help`, the code and the README (checked by a test) agree.

use std::{
    collections::BTreeMap, fmt, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration,
};

use clap::{Parser, Subcommand};
use cognito_facade::{config::*, healthcheck, server};

/// Where the Prometheus endpoint listens, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MetricsAddr(pub(crate) Option<SocketAddr>);

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

/// `REGION=URL`: an endpoint override for one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RegionEndpoint {
    region: String,
    url: String,
}

impl FromStr for RegionEndpoint {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (region, url) = text
            .split_once('=')
            .ok_or_else(|| format!("expected REGION=URL, got {text:?}"))?;
        Ok(Self {
            region: region.to_owned(),
            url: url.to_owned(),
        })
    }
}

/// A size in bytes: a number, or one with `KiB`, `MiB` or `GiB` after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bytes(pub(crate) usize);

impl FromStr for Bytes {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let unit = match &text[digits.len()..] {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            other => return Err(format!("unknown unit {other:?}: use KiB, MiB or GiB")),
        };
        digits
            .parse::<usize>()
            .ok()
            .and_then(|n| n.checked_mul(unit))
            .map(Self)
            .ok_or_else(|| format!("expected a number of bytes (e.g. 40MiB), got {text:?}"))
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, size) in [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// A duration flag's default, as clap shows it.
fn shown(duration: Duration) -> humantime::Duration {
    duration.into()
}

/// The command line, as clap parses it. [`Cli::into_config`] validates it.
#[derive(Debug, Parser)]
#[command(name = "cognito-facade", version, about, long_about = None)]
pub(crate) struct Cli {
    /// Run a subcommand instead of the server.
    #[command(subcommand)]
    pub(crate) command: Option<Command>,

    /// Address the gRPC server listens on.
    #[arg(long, env = ENV_LISTEN_ADDR, default_value_t = server::DEFAULT_LISTEN_ADDR, value_name = "ADDR")]
    listen_addr: SocketAddr,

    /// Log line format. `RUST_LOG` sets the filter (default `info`).
    #[arg(long, env = ENV_LOG_FORMAT, value_enum, default_value_t = LogFormat::default())]
    log_format: LogFormat,

    /// AWS region of the user pool, e.g. eu-west-1 (optional with --user-pool-id). Without it:
    /// AWS_DEFAULT_REGION, then the AWS profile's region.
    #[arg(long, env = ENV_REGION, value_name = "REGION")]
    region: Option<String>,

    /// A user pool to serve (repeatable; the environment takes a comma-separated list). Each
    /// names its region; tokens are routed by their issuer and verified locally.
    #[arg(long = "user-pool-id", env = ENV_USER_POOL_IDS, value_delimiter = ',', value_name = "ID")]
    user_pool_ids: Vec<UserPoolId>,

    /// Verify the tokens of the configured pools locally before calling Cognito
    /// (`--verify-tokens=false` turns it off).
    #[arg(long, env = ENV_VERIFY_TOKENS, default_value_t = TokenConfig::default().verify, action = clap::ArgAction::Set, value_name = "BOOL")]
    verify_tokens: bool,

    /// An app client to serve (repeatable; comma-separated in the environment); tokens of other
    /// clients are refused. Without it, any client of the configured pools.
    #[arg(long = "client-id", env = ENV_CLIENT_IDS, value_delimiter = ',', value_name = "ID")]
    client_ids: Vec<String>,

    /// Least time between two JWKS refreshes of a pool for tokens with an unknown key id.
    #[arg(long, env = ENV_JWKS_REFRESH_INTERVAL, default_value_t = shown(TokenConfig::default().jwks_refresh_interval), value_name = "DURATION")]
    jwks_refresh_interval: humantime::Duration,

    /// Cognito endpoint URL for every region, overriding the regional one (and AWS_ENDPOINT_URL).
    #[arg(long, env = ENV_COGNITO_ENDPOINT, value_name = "URL")]
    cognito_endpoint: Option<String>,

    /// Cognito endpoint URL for one region, ahead of --cognito-endpoint (repeatable;
    /// comma-separated in the environment).
    #[arg(long = "region-endpoint", env = ENV_REGION_ENDPOINTS, value_delimiter = ',', value_name = "REGION=URL")]
    region_endpoints: Vec<RegionEndpoint>,

    /// Timeout to open a connection to Cognito.
    #[arg(long, env = ENV_CONNECT_TIMEOUT, default_value_t = shown(DEFAULT_CONNECT_TIMEOUT), value_name = "DURATION")]
    connect_timeout: humantime::Duration,

    /// Timeout of one HTTP attempt to Cognito.
    #[arg(long, env = ENV_ATTEMPT_TIMEOUT, default_value_t = shown(DEFAULT_ATTEMPT_TIMEOUT), value_name = "DURATION")]
    attempt_timeout: humantime::Duration,

    /// Timeout of a whole upstream call, retries included. A shorter caller deadline wins.
    #[arg(long, env = ENV_CALL_TIMEOUT, default_value_t = shown(DEFAULT_CALL_TIMEOUT), value_name = "DURATION")]
    call_timeout: humantime::Duration,

    /// Attempts per upstream call, the first included (1 disables retries).
    #[arg(long, env = ENV_MAX_ATTEMPTS, default_value_t = DEFAULT_MAX_ATTEMPTS, value_parser = clap::value_parser!(u32).range(1..=10), value_name = "N")]
    max_attempts: u32,

    /// Initial backoff before a retry; doubled per retry, with full jitter.
    #[arg(long, env = ENV_RETRY_BACKOFF, default_value_t = shown(DEFAULT_RETRY_BACKOFF), value_name = "DURATION")]
    retry_backoff: humantime::Duration,

    /// On SIGTERM/SIGINT: how long to report NOT_SERVING while still serving, before closing the listener.
    #[arg(long, env = ENV_DRAIN_DELAY, default_value_t = shown(server::DEFAULT_DRAIN_DELAY), value_name = "DURATION")]
    drain_delay: humantime::Duration,

    /// On shutdown: how long in-flight calls get to finish once the listener is closed.
    #[arg(long, env = ENV_SHUTDOWN_GRACE, default_value_t = shown(server::DEFAULT_SHUTDOWN_GRACE), value_name = "DURATION")]
    shutdown_grace: humantime::Duration,

    /// Prometheus /metrics listen address, or `off`.
    #[arg(long, env = ENV_METRICS_ADDR, default_value_t = MetricsAddr(Some(DEFAULT_METRICS_ADDR)), value_name = "ADDR|off")]
    metrics_addr: MetricsAddr,

    /// PEM certificate chain: serve gRPC over TLS (needs --tls-key).
    #[arg(long, env = ENV_TLS_CERT, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = ENV_TLS_KEY, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// PEM CA bundle: require client certificates that chain to it (mutual TLS; needs --tls-cert).
    #[arg(long, env = ENV_TLS_CLIENT_CA, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,

    /// Most upstream calls in flight at once; more are refused at once with RESOURCE_EXHAUSTED.
    #[arg(long, env = ENV_MAX_CONCURRENT_REQUESTS, default_value_t = DEFAULT_MAX_CONCURRENT_REQUESTS, value_name = "N")]
    max_concurrent_requests: usize,

    /// Lifetime of a client connection before GOAWAY, so clients rebalance across replicas.
    #[arg(long, env = ENV_MAX_CONNECTION_AGE, default_value_t = shown(server::DEFAULT_MAX_CONNECTION_AGE), value_name = "DURATION")]
    max_connection_age: humantime::Duration,

    /// Concurrent calls with the same token share one call to Cognito (`--coalesce=false` turns it off).
    #[arg(long, env = ENV_COALESCE, default_value_t = EconomyConfig::default().coalesce, action = clap::ArgAction::Set, value_name = "BOOL")]
    coalesce: bool,

    /// Serve a token's successful answer from memory for this long (off by default). A revoked
    /// token keeps its answer until the TTL ends.
    #[arg(long, env = ENV_CACHE_TTL, value_name = "DURATION")]
    cache_ttl: Option<humantime::Duration>,

    /// Keep each successful answer this long past its freshness (--cache-ttl, or none), never past
    /// the token's exp, and serve it while Cognito is unavailable (5xx, no answer, timeouts,
    /// throttling, the upstream rate limit). Off by default.
    #[arg(long, env = ENV_STALE_IF_ERROR, value_name = "DURATION")]
    stale_if_error: Option<humantime::Duration>,

    /// Most answers the cache holds (and, apart, most refusals remembered and most answers kept
    /// for --stale-if-error); the oldest go first.
    #[arg(long, env = ENV_CACHE_MAX_ENTRIES, default_value_t = DEFAULT_CACHE_MAX_ENTRIES, value_name = "N")]
    cache_max_entries: usize,

    /// Remember Cognito's definitive refusals of a token (revoked, invalid, deleted user) for this
    /// long, never past the token's exp; `0s` turns it off.
    #[arg(long, env = ENV_REFUSAL_TTL, default_value_t = shown(DEFAULT_REFUSAL_TTL), value_name = "DURATION")]
    refusal_ttl: humantime::Duration,

    /// Most attempts per second to Cognito, retries included: `RATE` for every region or
    /// comma-separated `REGION=RATE` entries. Shared by the fleet with --redis-url, else per
    /// replica. Off by default.
    #[arg(long, env = ENV_UPSTREAM_RATE_LIMIT, value_name = "RATES")]
    upstream_rate_limit: Option<RateLimits>,

    /// The longest an attempt to Cognito waits for its turn under --upstream-rate-limit (never past
    /// the caller's deadline); past it, the call gets RESOURCE_EXHAUSTED at once.
    #[arg(long, env = ENV_UPSTREAM_QUEUE_TIMEOUT, default_value_t = shown(DEFAULT_UPSTREAM_QUEUE_TIMEOUT), value_name = "DURATION")]
    upstream_queue_timeout: humantime::Duration,

    /// Time a new connection gets to finish TLS (when on) and send the HTTP/2 preface and
    /// SETTINGS; then it is closed.
    #[arg(long, env = ENV_HANDSHAKE_TIMEOUT, default_value_t = shown(DEFAULT_HANDSHAKE_TIMEOUT), value_name = "DURATION")]
    handshake_timeout: humantime::Duration,

    /// Most client connections at once; more are closed at once. Default: the file-descriptor
    /// limit less one per --max-concurrent-requests and 64 more (at most half of it).
    #[arg(long, env = ENV_MAX_CONNECTIONS, value_name = "N")]
    max_connections: Option<usize>,

    /// Most request body bytes held at once across all connections while the bodies arrive (a
    /// number of bytes, or with KiB, MiB or GiB); a body that finds no room is refused.
    #[arg(long, env = ENV_MAX_REQUEST_BYTES_IN_FLIGHT, default_value_t = Bytes(DEFAULT_REQUEST_BYTES_IN_FLIGHT), value_name = "BYTES")]
    max_request_bytes_in_flight: Bytes,

    /// Most request body bytes one connection's calls hold at once (its share of
    /// --max-request-bytes-in-flight); past it, that connection's bodies are refused.
    #[arg(long, env = ENV_MAX_CONNECTION_REQUEST_BYTES, default_value_t = Bytes(DEFAULT_CONNECTION_REQUEST_BYTES), value_name = "BYTES")]
    max_connection_request_bytes: Bytes,

    /// Time a request's body gets to arrive whole, from the request's arrival; then the call gets
    /// DEADLINE_EXCEEDED (REQUEST_BODY_TIMEOUT) and its stream is reset.
    #[arg(long, env = ENV_REQUEST_BODY_TIMEOUT, default_value_t = shown(DEFAULT_REQUEST_BODY_TIMEOUT), value_name = "DURATION")]
    request_body_timeout: humantime::Duration,

    /// Envoy ext_authz: pass the username to the upstream in this request header (off by default:
    /// the username then never leaves the facade).
    #[arg(long, env = ENV_EXT_AUTHZ_USERNAME_HEADER, value_name = "NAME")]
    ext_authz_username_header: Option<HeaderName>,

    /// Envoy ext_authz: remove the `authorization` header from allowed requests before they go
    /// upstream.
    #[arg(long, env = ENV_EXT_AUTHZ_REMOVE_AUTHORIZATION, default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    ext_authz_remove_authorization: bool,

    /// Weights of named callers in the fair share of the upstream rate limit and of
    /// --max-concurrent-requests: comma-separated `IDENTITY=WEIGHT` entries (1 to 1000); every
    /// other caller has weight 1. Each named identity also gets its own `caller` label.
    #[arg(long, env = ENV_CALLER_WEIGHT, value_name = "WEIGHTS")]
    caller_weight: Option<CallerWeights>,

    /// Callers allowed AdminGetUserAuthFactors: comma-separated identities (a SPIFFE ID, DNS name
    /// or CN, as the caller's certificate or trusted forwarded header names it). Needs
    /// --user-pool-id. Off by default: every caller gets PERMISSION_DENIED (CALLER_NOT_ALLOWED).
    #[arg(long, env = ENV_ADMIN_CALLERS, value_name = "IDENTITIES")]
    admin_callers: Option<AdminCallers>,

    /// Read the caller from `x-forwarded-client-cert` when no client certificate names one.
    /// Only safe behind a proxy that sets the header itself and strips it from outside callers
    /// (Envoy's `forward_client_cert_details: SANITIZE_SET`).
    #[arg(long, env = ENV_TRUST_FORWARDED_CLIENT_CERT, default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    trust_forwarded_client_cert: bool,

    /// The fleet store, Redis or Valkey: `redis://[USER:PASSWORD@]HOST:PORT` or `rediss://` (TLS);
    /// in cluster mode a comma-separated list of seed nodes. Without it, each replica alone.
    #[arg(long, env = ENV_REDIS_URL, value_name = "URL")]
    redis_url: Option<String>,

    /// `standalone` (one server) or `cluster` (Redis Cluster; sharded pub/sub).
    #[arg(long, env = ENV_REDIS_MODE, value_enum, default_value_t = RedisMode::default())]
    redis_mode: RedisMode,

    /// File with at least 32 random bytes the fleet shares (a Kubernetes Secret); it keys and
    /// seals everything in Redis. Required with --redis-url; must not be world-readable.
    #[arg(long, env = ENV_FLEET_KEY_FILE, value_name = "FILE")]
    fleet_key_file: Option<PathBuf>,

    /// During a fleet key rotation, the key being replaced: values sealed under it still open,
    /// and values are sealed under both, so replicas still on it read them (see docs/fleets.md, "Rotating the fleet key").
    #[arg(long, env = ENV_FLEET_PREVIOUS_KEY_FILE, value_name = "FILE")]
    fleet_previous_key_file: Option<PathBuf>,

    /// File with the key that names keys in Redis (default: --fleet-key-file). Keep it when the
    /// fleet key rotates, so flights, the cache and the rate limit keep their names.
    #[arg(long, env = ENV_FLEET_NAMING_KEY_FILE, value_name = "FILE")]
    fleet_naming_key_file: Option<PathBuf>,

    /// With --redis-url, the fleet's size a replica assumes until Redis tells it (1 unless
    /// given): while Redis is unreachable, it keeps --upstream-rate-limit divided by it.
    #[arg(long, env = ENV_FLEET_SIZE_HINT, value_parser = clap::value_parser!(u32).range(1..=10_000), value_name = "N")]
    fleet_size_hint: Option<u32>,

    /// The time Redis gets for one operation within a call; then the call goes on without it.
    #[arg(long, env = ENV_REDIS_TIMEOUT, default_value_t = shown(DEFAULT_REDIS_TIMEOUT), value_name = "DURATION")]
    redis_timeout: humantime::Duration,

    /// HTTP/2 keepalive ping interval.
    #[arg(long, env = ENV_KEEPALIVE_INTERVAL, default_value_t = shown(server::DEFAULT_KEEPALIVE_INTERVAL), value_name = "DURATION")]
    keepalive_interval: humantime::Duration,

    /// How long a keepalive ping may go unanswered before the connection is closed.
    #[arg(long, env = ENV_KEEPALIVE_TIMEOUT, default_value_t = shown(server::DEFAULT_KEEPALIVE_TIMEOUT), value_name = "DURATION")]
    keepalive_timeout: humantime::Duration,
}

/// Subcommands of the binary.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Ask a running server's grpc.health.v1 Check; exit 0 only if it answers SERVING
    /// (for container HEALTHCHECKs: no extra probe binary needed).
    Healthcheck(HealthcheckArgs),
}

/// Flags of `cognito-facade healthcheck`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct HealthcheckArgs {
    /// The server to ask: by default the address the server itself listens on (the same
    /// environment variable), an unspecified host (0.0.0.0, [::]) probed on loopback.
    #[arg(long, env = ENV_LISTEN_ADDR, default_value_t = server::DEFAULT_LISTEN_ADDR, value_name = "ADDR")]
    addr: SocketAddr,

    /// The service to ask about; empty for the whole server.
    #[arg(long, default_value = "")]
    service: String,

    /// How long to wait for the answer, connecting included.
    #[arg(long, default_value_t = shown(healthcheck::DEFAULT_TIMEOUT), value_name = "DURATION")]
    timeout: humantime::Duration,
}

impl HealthcheckArgs {
    /// The address to probe.
    pub(crate) fn addr(&self) -> SocketAddr {
        healthcheck::probe_addr(self.addr)
    }

    /// The service to ask about.
    pub(crate) fn service(&self) -> &str {
        &self.service
    }

    /// The timeout.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout.into()
    }
}

impl Cli {
    /// How Cognito is reached.
    fn upstream_config(&self) -> UpstreamConfig {
        UpstreamConfig {
            region: self.region.clone(),
            endpoint: self.cognito_endpoint.clone(),
            region_endpoints: self
                .region_endpoints
                .iter()
                .map(|e| (e.region.clone(), e.url.clone()))
                .collect::<BTreeMap<_, _>>(),
            connect_timeout: self.connect_timeout.into(),
            attempt_timeout: self.attempt_timeout.into(),
            call_timeout: self.call_timeout.into(),
            max_attempts: self.max_attempts,
            retry_backoff: self.retry_backoff.into(),
        }
    }

    /// The fleet store's settings, its key file read and checked.
    fn fleet_config(&self) -> Result<Option<FleetConfig>, ConfigError> {
        let (url, key_file) = match (&self.redis_url, &self.fleet_key_file) {
            (None, None) => {
                let alone = [
                    (
                        "fleet-previous-key-file",
                        self.fleet_previous_key_file.is_some(),
                    ),
                    (
                        "fleet-naming-key-file",
                        self.fleet_naming_key_file.is_some(),
                    ),
                ];
                return match alone.into_iter().find(|(_, given)| *given) {
                    Some((flag, _)) => Err(ConfigError::FleetKeyFlagAlone(flag)),
                    None => Ok(None),
                };
            }
            (Some(_), None) => return Err(ConfigError::FleetKeyMissing),
            (None, Some(_)) => return Err(ConfigError::RedisUrlMissing),
            (Some(url), Some(key_file)) => (url, key_file),
        };
        if self.fleet_previous_key_file.is_some() && self.fleet_naming_key_file.is_none() {
            return Err(ConfigError::RotationWithoutNamingKey);
        }
        let urls = match self.redis_mode {
            RedisMode::Standalone => vec![url.trim().to_owned()],
            RedisMode::Cluster => url.split(',').map(|u| u.trim().to_owned()).collect(),
        };
        Ok(Some(FleetConfig {
            urls,
            mode: self.redis_mode,
            key: FleetKey::from_file("fleet-key-file", key_file)?,
            previous_key: self
                .fleet_previous_key_file
                .as_deref()
                .map(|path| FleetKey::from_file("fleet-previous-key-file", path))
                .transpose()?,
            naming_key: self
                .fleet_naming_key_file
                .as_deref()
                .map(|path| FleetKey::from_file("fleet-naming-key-file", path))
                .transpose()?,
            timeout: self.redis_timeout.into(),
        }))
    }

    /// Single flight, the cache, refusal memory and kept answers. A zero
    /// duration means off, like leaving its flag out.
    fn economy_config(&self) -> EconomyConfig {
        let on = |duration: Duration| Some(duration).filter(|d| !d.is_zero());
        EconomyConfig {
            coalesce: self.coalesce,
            cache_ttl: self.cache_ttl.map(Duration::from).and_then(on),
            cache_max_entries: self.cache_max_entries,
            refusal_ttl: on(self.refusal_ttl.into()),
            stale_if_error: self.stale_if_error.map(Duration::from).and_then(on),
        }
    }

    /// The request bytes in flight and the body read timeout.
    fn body_limits(&self) -> BodyLimits {
        BodyLimits {
            in_flight: self.max_request_bytes_in_flight.0,
            per_connection: self.max_connection_request_bytes.0,
            read_timeout: self.request_body_timeout.into(),
        }
    }

    /// The RPC's own settings: the slots, ext_authz, the callers.
    fn service_config(&self) -> ServiceConfig {
        ServiceConfig {
            max_concurrent_requests: self.max_concurrent_requests,
            ext_authz: ExtAuthzConfig {
                username_header: self.ext_authz_username_header.clone().map(|h| h.0),
                remove_authorization: self.ext_authz_remove_authorization,
            },
            callers: CallerConfig {
                weights: self.caller_weight.clone().unwrap_or_default(),
                trust_forwarded_client_cert: self.trust_forwarded_client_cert,
                admin: self.admin_callers.clone().unwrap_or_default(),
            },
        }
    }

    /// The validated configuration (TLS files read and checked).
    pub(crate) fn into_config(self) -> Result<Config, ConfigError> {
        let fleet = self.fleet_config()?;
        if fleet.is_none() && self.fleet_size_hint.is_some() {
            // Alone, the limit is the replica's own: a hint would divide it.
            return Err(ConfigError::FleetFlagAlone("fleet-size-hint"));
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsConfig::from_files(
                cert,
                key,
                self.tls_client_ca.as_deref(),
            )?),
            // clap's `requires` makes the two go together.
            _ => None,
        };
        let economy = self.economy_config();
        let config = Config {
            server: ServerConfig {
                listen_addr: self.listen_addr,
                drain_delay: self.drain_delay.into(),
                shutdown_grace: self.shutdown_grace.into(),
                max_connection_age: self.max_connection_age.into(),
                keepalive_interval: self.keepalive_interval.into(),
                keepalive_timeout: self.keepalive_timeout.into(),
                tls,
                handshake_timeout: self.handshake_timeout.into(),
                max_connections: self.max_connections,
                bodies: self.body_limits(),
            },
            service: self.service_config(),
            upstream: self.upstream_config(),
            tokens: TokenConfig {
                pools: self.user_pool_ids,
                verify: self.verify_tokens,
                client_ids: self.client_ids,
                jwks_refresh_interval: self.jwks_refresh_interval.into(),
            },
            economy,
            fleet,
            quota: QuotaConfig {
                limits: self.upstream_rate_limit.unwrap_or_default(),
                queue_timeout: self.upstream_queue_timeout.into(),
                fleet_size_hint: self.fleet_size_hint.unwrap_or(1),
            },
            log_format: self.log_format,
            metrics_addr: self.metrics_addr.0,
            tracing: TracingConfig::from_env()?,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests;

/// An HTTP header name for the username: lower-case letters, digits and
/// `-`, not one the facade or Envoy already owns.
#[derive(Debug, Clone)]
struct HeaderName(String);

impl std::str::FromStr for HeaderName {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        let well_formed = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !well_formed {
            return Err("a lower-case header name: a-z, 0-9 and -, at most 64".to_owned());
        }
        let reserved = [
            "authorization",
            "host",
            "content-length",
            "te",
            "connection",
        ];
        if reserved.contains(&name)
            || name.starts_with("x-cognito-")
            || name.starts_with("x-envoy-")
        {
            return Err(format!(
                "{name} is a header the request already has a use for"
            ));
        }
        Ok(Self(name.to_owned()))
    }
}
