//! Each configured user pool's signing keys (its JWKS): fetched in the
//! background right after start-up, kept in memory, refreshed when a token
//! names a `kid` they lack (at most once per interval per pool, so invented
//! `kid`s cannot make the facade hammer the endpoint), bounded in size and
//! time. When the keys cannot be had, a lookup says so and the caller falls
//! through to Cognito, which stays the authority.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use jsonwebtoken::{
    DecodingKey,
    jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm},
};
use tokio::sync::watch;
use tonic::codegen::http::{StatusCode, Uri};

use crate::{base::expiring::lock, base::metric_names, token::pools::UserPoolId};

/// Default least time between two refreshes of a pool's keys for a `kid`
/// they lack (and between retries while the keys cannot be had).
pub(crate) const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// Bound on one fetch, connecting included: Cognito serves the JWKS from the
/// region's edge in milliseconds.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// Bound on a JWKS body: Cognito's holds two keys in well under 2 KiB.
const MAX_JWKS_BYTES: usize = 64 * 1024;

/// What a key lookup found.
#[derive(Debug, Clone)]
pub(crate) enum Lookup {
    /// The pool's key with that `kid`.
    Found(Arc<DecodingKey>),
    /// The pool's keys (freshly fetched, or refreshed within the interval)
    /// hold no such `kid`.
    UnknownKid,
    /// The keys cannot be had now (the endpoint is down, slow or answers
    /// nonsense): verify with Cognito instead.
    Unavailable,
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The keys of every configured pool.
#[derive(Debug, Clone)]
pub(crate) struct KeyStore {
    pools: Arc<HashMap<UserPoolId, Arc<PoolKeys>>>,
}

impl KeyStore {
    /// A store for `pools`, each with the URL of its JWKS, refreshing for an
    /// unknown `kid` at most once per `refresh_interval`. Fetches nothing yet.
    pub(crate) fn new(pools: Vec<(UserPoolId, Uri)>, refresh_interval: Duration) -> Self {
        if pools.is_empty() {
            // Opaque mode, or verification off: no client, so no CA roots
            // are loaded (they cost ~1.5 MiB of idle RSS).
            return Self {
                pools: Arc::default(),
            };
        }
        let client = http_client();
        let pools = pools
            .into_iter()
            .map(|(pool, url)| {
                let keys = PoolKeys {
                    pool: pool.clone(),
                    url,
                    client: client.clone(),
                    refresh_interval,
                    state: Mutex::new(State::default()),
                };
                (pool, Arc::new(keys))
            })
            .collect();
        Self {
            pools: Arc::new(pools),
        }
    }

    /// Starts fetching every pool's keys in the background.
    pub(crate) fn prefetch(&self) {
        for keys in self.pools.values() {
            let _fetch = keys.start_fetch(&mut keys.lock(), false);
        }
    }

    /// The keys at hand (no fetch) with `kid`, in any pool.
    pub(crate) fn cached(&self, kid: &str) -> Vec<Arc<DecodingKey>> {
        self.pools
            .values()
            .filter_map(|keys| keys.lock().keys.as_ref()?.get(kid).cloned())
            .collect()
    }

    /// The key `kid` of `pool`, waiting at most until `deadline` for a fetch
    /// (one shared by every caller that needs it).
    pub(crate) async fn lookup(&self, pool: &UserPoolId, kid: &str, deadline: Instant) -> Lookup {
        match self.pools.get(pool) {
            Some(keys) => keys.lookup(kid, deadline).await,
            None => Lookup::Unavailable,
        }
    }
}

/// The `https` (or, for endpoint overrides, `http`) client for JWKS fetches,
/// trusting the system's roots. Without any, HTTPS fetches fail and calls
/// fall through to Cognito; a warning says so at start-up. `None` only if
/// aws-lc-rs could not serve rustls' default protocol versions, which it
/// always can: then every fetch fails the same way.
fn http_client() -> Option<HttpClient> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _unparsable) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        tracing::warn!(errors = ?native.errors, "no system CA roots: JWKS fetches over HTTPS will fail");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(FETCH_TIMEOUT));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Some(Client::builder(TokioExecutor::new()).build(https))
}

/// One pool's keys and the state of their fetching.
#[derive(Debug)]
struct PoolKeys {
    pool: UserPoolId,
    url: Uri,
    client: Option<HttpClient>,
    refresh_interval: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The keys of the last good fetch, by `kid`.
    keys: Option<Arc<HashMap<String, Arc<DecodingKey>>>>,
    /// Whether the last fetch failed (then an unknown `kid` proves nothing).
    last_failed: bool,
    /// The fetch in flight: `true` once it has landed.
    in_flight: Option<watch::Receiver<bool>>,
    /// When the last fetch started.
    last_started: Option<Instant>,
    /// When the last refresh for an unknown `kid` started.
    last_unknown_kid_refresh: Option<Instant>,
    /// When unavailable keys were last warned about.
    last_warned: Option<Instant>,
}

impl PoolKeys {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }

    async fn lookup(self: &Arc<Self>, kid: &str, deadline: Instant) -> Lookup {
        let pending = {
            let mut state = self.lock();
            if let Some(key) = state.keys.as_ref().and_then(|keys| keys.get(kid)) {
                return Lookup::Found(Arc::clone(key));
            }
            match state.in_flight.clone() {
                Some(pending) => Some(pending),
                None => self.maybe_fetch(&mut state),
            }
        };
        if let Some(mut pending) = pending {
            let landed = tokio::time::timeout_at(deadline.into(), pending.wait_for(|done| *done));
            if landed.await.is_err() {
                return self.unavailable(&mut self.lock());
            }
        }
        let mut state = self.lock();
        match (&state.keys, state.last_failed) {
            (Some(keys), _) if keys.contains_key(kid) => Lookup::Found(Arc::clone(&keys[kid])),
            (Some(_), false) => Lookup::UnknownKid,
            _ => self.unavailable(&mut state),
        }
    }

    /// Starts a fetch if the rate limit allows one: with no keys yet, once
    /// per interval after the last attempt; for a `kid` the keys lack, once
    /// per interval after the last such refresh.
    fn maybe_fetch(self: &Arc<Self>, state: &mut State) -> Option<watch::Receiver<bool>> {
        let interval = self.refresh_interval;
        let due = |at: Option<Instant>| at.is_none_or(|at| at.elapsed() >= interval);
        let unknown_kid = state.keys.is_some() && !state.last_failed;
        let allowed = if unknown_kid {
            due(state.last_unknown_kid_refresh)
        } else {
            due(state.last_started)
        };
        allowed.then(|| self.start_fetch(state, unknown_kid))
    }

    /// Spawns a fetch; it lands in `state` whoever waits for it.
    fn start_fetch(
        self: &Arc<Self>,
        state: &mut State,
        for_unknown_kid: bool,
    ) -> watch::Receiver<bool> {
        if let Some(pending) = &state.in_flight {
            return pending.clone();
        }
        let now = Instant::now();
        state.last_started = Some(now);
        if for_unknown_kid {
            state.last_unknown_kid_refresh = Some(now);
        }
        let (landed, pending) = watch::channel(false);
        state.in_flight = Some(pending.clone());
        let keys = Arc::clone(self);
        tokio::spawn(async move {
            let fetched = tokio::time::timeout(FETCH_TIMEOUT, keys.fetch()).await;
            let fetched = fetched.unwrap_or(Err(FetchError::Timeout));
            let outcome = match &fetched {
                Ok(_) => "ok",
                Err(err) => err.label(),
            };
            metrics::counter!(
                metric_names::JWKS_FETCHES,
                "pool" => keys.pool.to_string(),
                "outcome" => outcome
            )
            .increment(1);
            let mut state = keys.lock();
            match fetched {
                Ok(set) => {
                    tracing::debug!(pool = %keys.pool, keys = set.len(), "fetched the pool's signing keys");
                    state.keys = Some(Arc::new(set));
                    state.last_failed = false;
                }
                Err(err) => {
                    state.last_failed = true;
                    if keys.may_warn(&mut state) {
                        tracing::warn!(pool = %keys.pool, url = %keys.url, error = %err, "cannot fetch the pool's signing keys; verifying with Cognito instead");
                    }
                }
            }
            state.in_flight = None;
            drop(state);
            landed.send_replace(true);
        });
        pending
    }

    /// Counts a call whose pool's keys cannot be had: only its claims are
    /// checked here, and its signature is left to Cognito.
    fn unavailable(&self, state: &mut State) -> Lookup {
        metrics::counter!(metric_names::JWKS_UNAVAILABLE, "pool" => self.pool.to_string())
            .increment(1);
        if self.may_warn(state) {
            tracing::warn!(pool = %self.pool, "the pool's signing keys are unavailable; verifying with Cognito instead");
        }
        Lookup::Unavailable
    }

    /// Whether to warn now: at most once per interval.
    fn may_warn(&self, state: &mut State) -> bool {
        let due = state
            .last_warned
            .is_none_or(|at| at.elapsed() >= self.refresh_interval);
        if due {
            state.last_warned = Some(Instant::now());
        }
        due
    }

    /// One GET of the JWKS: the RSA signing keys in it, by `kid`.
    async fn fetch(&self) -> Result<HashMap<String, Arc<DecodingKey>>, FetchError> {
        let request = tonic::codegen::http::Request::get(self.url.clone())
            .header("accept", "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|_| FetchError::Request)?;
        let client = self.client.as_ref().ok_or(FetchError::Request)?;
        let response = client.request(request).await.map_err(FetchError::Connect)?;
        if response.status() != StatusCode::OK {
            return Err(FetchError::Status(response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|_| FetchError::Body)?
            .to_bytes();
        let set: JwkSet = serde_json::from_slice(&body).map_err(|_| FetchError::Invalid)?;
        let keys: HashMap<String, Arc<DecodingKey>> = set
            .keys
            .iter()
            .filter(|jwk| matches!(jwk.algorithm, AlgorithmParameters::RSA(_)))
            .filter(|jwk| {
                jwk.common
                    .key_algorithm
                    .is_none_or(|alg| alg == KeyAlgorithm::RS256)
            })
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                let key = DecodingKey::from_jwk(jwk).ok()?;
                Some((kid, Arc::new(key)))
            })
            .collect();
        if keys.is_empty() {
            return Err(FetchError::Invalid);
        }
        Ok(keys)
    }
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("the request could not be built")]
    Request,
    #[error("connecting: {0}")]
    Connect(hyper_util::client::legacy::Error),
    #[error("HTTP status {0}")]
    Status(StatusCode),
    #[error("the body could not be read, or is over {MAX_JWKS_BYTES} bytes")]
    Body,
    #[error("the body is not a JWKS with an RS256 key")]
    Invalid,
    #[error("no answer within {FETCH_TIMEOUT:?}")]
    Timeout,
}

impl FetchError {
    /// The metric label.
    fn label(&self) -> &'static str {
        match self {
            Self::Request | Self::Connect(_) => "unreachable",
            Self::Status(_) => "bad_status",
            Self::Body => "bad_body",
            Self::Invalid => "invalid",
            Self::Timeout => "timeout",
        }
    }
}
