//! The fleet's one memory, on Redis or Valkey: single flight across
//! replicas (one replica's Cognito call, and the others wait for its answer
//! over pub/sub) and, with `--cache-ttl`, a second cache tier behind each
//! replica's own.
//!
//! Redis helps and is never needed: start-up never waits for it, each call
//! gives it at most `--redis-timeout` per operation, and a breaker skips it
//! after repeated failures. Whatever goes wrong, the call goes on as a
//! replica alone would.
//!
//! Nothing readable is stored: key names are an HMAC of the token under a
//! key derived (HKDF) from the fleet key, with a hash tag so a token's keys
//! share one cluster slot; values are sealed with AES-256-GCM under another
//! derived key, a random nonce, and the key name as associated data. Every
//! key expires.

use std::{
    collections::HashMap,
    fmt,
    path::Path,
    sync::{
        Arc, Mutex, OnceLock, RwLock,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aws_lc_rs::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    hkdf, hmac,
    rand::{SecureRandom as _, SystemRandom},
};
use metrics::Counter;
use prost::Message as _;
use redis::{
    ProtocolVersion, PushInfo, PushKind, Script, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
};
use tokio::sync::{oneshot, watch};

use crate::{
    call::Source,
    cognito::Answer,
    error::{Error, UpstreamError, UpstreamErrorKind},
    expiring::lock,
    metric_names::{
        FLEET_BREAKER_OPEN_SECONDS, FLEET_LEASE_TAKEOVERS, FLEET_REDIS_OPS, FLEET_SKIPPED,
        FLEET_UNOPENED,
    },
    proto::GetUserAuthFactorsResponse,
    telemetry::Every,
};

/// Default budget Redis gets for one operation within a call: loopback and
/// in-zone round trips take well under a millisecond.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(20);

/// The least length of the fleet key file.
pub const MIN_FLEET_KEY_BYTES: usize = 32;

/// How long a flight's outcome stays readable after it lands, for the
/// followers that subscribed as it landed: "a few seconds" at most.
const FLIGHT_RESULT_TTL: Duration = Duration::from_secs(2);

/// Consecutive failures that open the breaker, and how long it stays open.
const BREAKER_THRESHOLD: u32 = 5;
const BREAKER_OPEN: Duration = Duration::from_secs(5);

/// Least time between two warnings about Redis.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// First and longest pause between two attempts to connect at start.
const CONNECT_BACKOFF_MIN: Duration = Duration::from_millis(100);
const CONNECT_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The version byte of sealed values: anything else is a miss.
const SEALED_V1: u8 = 1;

/// What a leader publishes when its outcome is not to be shared (its own
/// transport failure or timeout): followers then call Cognito themselves.
const ABANDONED: &[u8] = b"\0";

/// Whether `--redis-url` names one server or a cluster's seed nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RedisMode {
    /// One server (or a primary behind a proxy or a Sentinel-managed name).
    #[default]
    Standalone,
    /// A Redis Cluster; the URL is a comma-separated list of seed nodes.
    Cluster,
}

/// The fleet's shared secret: at least [`MIN_FLEET_KEY_BYTES`] random bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct FleetKey(Vec<u8>);

impl fmt::Debug for FleetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(crate::wire::REDACTED)
    }
}

/// Why the fleet key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FleetKeyError {
    /// It cannot be read.
    #[error("cannot read --fleet-key-file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// It is too short to be a key.
    #[error(
        "--fleet-key-file {path} holds {len} bytes; at least {MIN_FLEET_KEY_BYTES} random bytes are needed"
    )]
    Short {
        /// The file.
        path: String,
        /// Its length.
        len: usize,
    },
    /// Anyone on the machine may read it.
    #[error("--fleet-key-file {path} is world-readable (mode {mode:o}); make it 0600 or 0640")]
    WorldReadable {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
}

impl FleetKey {
    /// Reads and checks the key file (its contents as they are, trailing
    /// newline included: it is bytes, not text).
    pub fn from_file(path: &Path) -> Result<Self, FleetKeyError> {
        use std::os::unix::fs::PermissionsExt as _;
        let shown = path.display().to_string();
        let read = |source| FleetKeyError::Read {
            path: shown.clone(),
            source,
        };
        let mode = std::fs::metadata(path).map_err(read)?.permissions().mode();
        if mode & 0o004 != 0 {
            return Err(FleetKeyError::WorldReadable {
                path: shown,
                mode: mode & 0o777,
            });
        }
        let bytes = std::fs::read(path).map_err(read)?;
        if bytes.len() < MIN_FLEET_KEY_BYTES {
            return Err(FleetKeyError::Short {
                path: shown,
                len: bytes.len(),
            });
        }
        Ok(Self(bytes))
    }
}

/// The fleet store's settings. `Debug` never shows a URL's password.
#[derive(Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// `redis://` or `rediss://` URLs: one, or a cluster's seed nodes.
    pub urls: Vec<String>,
    /// Standalone or cluster.
    pub mode: RedisMode,
    /// The fleet's shared secret.
    pub key: FleetKey,
    /// The budget of one Redis operation within a call.
    pub timeout: Duration,
}

impl fmt::Debug for FleetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|url| without_password(url)).collect();
        f.debug_struct("FleetConfig")
            .field("urls", &urls)
            .field("mode", &self.mode)
            .field("key", &self.key)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// `url` with whatever sits between `://` and `@` (user and password)
/// replaced by the redaction marker.
pub fn without_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!(
            "{}{}{}",
            &url[..scheme + 3],
            crate::wire::REDACTED,
            &url[at..]
        ),
        _ => url.to_owned(),
    }
}

/// How a leader's call joins the fleet.
#[derive(Debug)]
pub(crate) enum Joined {
    /// The fleet had the outcome: from its cache, or from another replica's
    /// flight.
    Shared(Result<Answer, Error>, Source),
    /// This replica holds the fleet's lease: it calls Cognito and shares the
    /// outcome with [`Lease::finish`].
    Lead(Lease),
    /// No help from the fleet (Redis away, the breaker open, a value that
    /// did not open, a leader that gave up): call Cognito alone.
    Alone,
}

/// The fleet store, shared by every call.
#[derive(Clone)]
pub struct Fleet(Arc<Inner>);

impl fmt::Debug for Fleet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fleet")
            .field("mode", &self.0.mode)
            .finish_non_exhaustive()
    }
}

struct Inner {
    mode: RedisMode,
    timeout: Duration,
    /// How long a leader may hold a flight: its upstream call's bound.
    lease: Duration,
    /// Whether replicas share flights (`--coalesce`).
    coalesce: bool,
    /// The fleet cache's TTL (`--cache-ttl`); `None`: no fleet cache.
    cache_ttl: Option<Duration>,
    /// How long Cognito's definitive refusals are remembered
    /// (`--refusal-ttl`); `None`: not at all.
    refusal_ttl: Option<Duration>,
    keys: SealingKeys,
    /// Lease tokens name the leader: this replica's random id.
    replica: String,
    conn: RwLock<Option<Conn>>,
    /// Followers waiting for a message on a flight's channel.
    waiters: Mutex<Waiters>,
    next_waiter: AtomicU64,
    breaker: Breaker,
    scripts: Scripts,
    metrics: FleetMetrics,
}

/// The fleet's metric handles, each resolved on first use and then reused:
/// a dead Redis costs a call one atomic load and one counter increment.
#[derive(Default)]
struct FleetMetrics {
    skipped_breaker_open: OnceLock<Counter>,
    skipped_not_connected: OnceLock<Counter>,
    /// By operation (index in [`OPS`]) and outcome (index in [`OUTCOMES`]).
    ops: [[OnceLock<Counter>; OUTCOMES.len()]; OPS.len()],
}

/// The operations counted in `cognito_facade_fleet_redis_ops_total`.
const OPS: [&str; 10] = [
    "join",
    "subscribe",
    "get",
    "take_over",
    "finish",
    "publish",
    "release",
    "unsubscribe",
    "quota",
    "announce",
];
/// Their outcomes.
const OUTCOMES: [&str; 3] = ["ok", "error", "timeout"];

impl FleetMetrics {
    fn skipped(&self, breaker_open: bool) {
        let (cell, reason) = if breaker_open {
            (&self.skipped_breaker_open, "breaker_open")
        } else {
            (&self.skipped_not_connected, "not_connected")
        };
        cell.get_or_init(|| metrics::counter!(FLEET_SKIPPED, "reason" => reason))
            .increment(1);
    }

    fn op(&self, op: &'static str, outcome: &'static str) {
        let o = OPS
            .iter()
            .position(|known| *known == op)
            .unwrap_or_default();
        let r = OUTCOMES
            .iter()
            .position(|known| *known == outcome)
            .unwrap_or_default();
        self.ops[o][r]
            .get_or_init(
                || metrics::counter!(FLEET_REDIS_OPS, "op" => OPS[o], "outcome" => OUTCOMES[r]),
            )
            .increment(1);
    }
}

/// A connection to the store, either kind; both reconnect by themselves.
#[derive(Clone)]
enum Conn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

/// The Lua scripts, each touching only the keys of one token (one slot).
struct Scripts {
    join: Script,
    finish: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            // KEYS: remembered outcome, flight result, lease. ARGV: lease
            // token, lease ms, whether the fleet remembers outcomes (answers,
            // refusals). 1: an outcome; 2: this caller leads;
            // 3: another leads (with the lease's time left).
            join: Script::new(
                r"
                if ARGV[3] == '1' then
                  local answer = redis.call('GET', KEYS[1])
                  if answer then return {1, answer, 'a'} end
                end
                if redis.call('EXISTS', KEYS[3]) == 1 then
                  local result = redis.call('GET', KEYS[2])
                  if result then return {1, result, 'r'} end
                  return {3, redis.call('PTTL', KEYS[3])}
                end
                redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
                return {2}
                ",
            ),
            // KEYS: flight result, lease, remembered outcome. ARGV: sealed
            // result, its ms, lease token, sealed outcome to remember (or
            // ''), its ms.
            finish: Script::new(
                r"
                redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
                if ARGV[4] ~= '' then redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5]) end
                if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
                return 1
                ",
            ),
        }
    }
}

/// The two keys derived from the fleet key.
struct SealingKeys {
    names: hmac::Key,
    seal: LessSafeKey,
    random: SystemRandom,
}

/// The Redis names of one token's keys.
#[derive(Debug, Clone)]
struct Names {
    /// The remembered outcome: a cached answer or a definitive refusal.
    answer: String,
    result: String,
    lease: String,
    channel: String,
}

impl SealingKeys {
    fn derive(key: &FleetKey) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"cognito-facade fleet v1").extract(&key.0);
        let expand = |info: &'static [u8]| {
            let mut out = [0u8; 32];
            prk.expand(&[info], hkdf::HKDF_SHA256)
                .and_then(|okm| okm.fill(&mut out))
                .expect("32 bytes is a valid HKDF-SHA256 length");
            out
        };
        let names = hmac::Key::new(hmac::HMAC_SHA256, &expand(b"key names"));
        let seal = UnboundKey::new(&AES_256_GCM, &expand(b"values"))
            .map(LessSafeKey::new)
            .expect("32 bytes is an AES-256 key");
        Self {
            names,
            seal,
            random: SystemRandom::new(),
        }
    }

    /// A key name's hash tag for `what` (a token, a label), unreadable
    /// without the fleet key.
    fn tag(&self, what: &str) -> String {
        let tag = hmac::sign(&self.names, what.as_bytes());
        tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn names(&self, token: &str) -> Names {
        let hex = self.tag(token);
        Names {
            answer: format!("cf:{{{hex}}}:a"),
            result: format!("cf:{{{hex}}}:r"),
            lease: format!("cf:{{{hex}}}:l"),
            channel: format!("cf:{{{hex}}}:c"),
        }
    }

    /// `plain` sealed under the key name `name`: version, nonce, ciphertext.
    fn seal(&self, name: &str, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut sealed = plain.to_vec();
        self.seal
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut sealed,
            )
            .ok()?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(SEALED_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Some(out)
    }

    /// The plaintext of a value sealed under `name`, or `None` (tampered,
    /// another fleet's key, moved from another key, another format).
    fn open(&self, name: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        let (&version, rest) = sealed.split_first()?;
        if version != SEALED_V1 || rest.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buffer = ciphertext.to_vec();
        let plain = self
            .seal
            .open_in_place(nonce, Aad::from(name.as_bytes()), &mut buffer)
            .ok()?;
        Some(plain.to_vec())
    }
}

/// Skips Redis after [`BREAKER_THRESHOLD`] failures in a row, for
/// [`BREAKER_OPEN`]; then lets calls try again.
struct Breaker {
    epoch: Instant,
    failures: AtomicU32,
    open_until_ms: AtomicU64,
    /// Bumped at each opening, so followers stop waiting on a dead store.
    opened: watch::Sender<u64>,
    warned: Every,
}

impl Breaker {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            opened: watch::Sender::new(0),
            warned: Every::new(WARN_INTERVAL),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn closed(&self) -> bool {
        self.now_ms() >= self.open_until_ms.load(Ordering::Relaxed)
    }

    fn success(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }

    fn failure(&self, op: &'static str, what: &dyn fmt::Display) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < BREAKER_THRESHOLD || !self.closed() {
            return;
        }
        self.failures.store(0, Ordering::Relaxed);
        let open_ms = u64::try_from(BREAKER_OPEN.as_millis()).unwrap_or(u64::MAX);
        self.open_until_ms
            .store(self.now_ms() + open_ms, Ordering::Relaxed);
        self.opened.send_modify(|n| *n += 1);
        metrics::counter!(FLEET_BREAKER_OPEN_SECONDS).increment(BREAKER_OPEN.as_secs());
        if let Some(suppressed) = self.warned.ready() {
            tracing::warn!(
                op,
                error = %what,
                open_for = ?BREAKER_OPEN,
                suppressed,
                "Redis is failing; serving without the fleet store for a while"
            );
        }
    }
}

/// A flight this replica leads for the fleet.
#[derive(Debug)]
pub(crate) struct Lease {
    fleet: Fleet,
    names: Names,
    token: String,
    /// The token's `exp`: the fleet cache's entry never outlives it.
    expires_at: Option<SystemTime>,
}

/// How a follower's wait ended.
enum Followed {
    /// With the flight's outcome, or with nothing the fleet can offer.
    Done(Joined),
    /// The leader went away (its lease ran out) or gave up: join again.
    Rejoin,
}

/// Rounds of joining a flight, each after the last leader went away.
const JOIN_ROUNDS: usize = 3;

/// Followers waiting on one replica, by channel; each with its own id.
type Waiters = HashMap<Vec<u8>, Vec<(u64, oneshot::Sender<Vec<u8>>)>>;

impl Fleet {
    /// Starts connecting in the background (start-up never waits for
    /// Redis) and returns at once. `lease` bounds a leader's flight;
    /// `coalesce` turns fleet single flight on; `cache_ttl` the fleet cache;
    /// `refusal_ttl` the fleet's refusal memory.
    pub fn start(
        config: &FleetConfig,
        lease: Duration,
        coalesce: bool,
        cache_ttl: Option<Duration>,
        refusal_ttl: Option<Duration>,
    ) -> Self {
        let mut id = [0u8; 16];
        let _ = SystemRandom::new().fill(&mut id);
        let inner = Arc::new(Inner {
            mode: config.mode,
            timeout: config.timeout,
            lease,
            coalesce,
            cache_ttl,
            refusal_ttl,
            keys: SealingKeys::derive(&config.key),
            replica: id.iter().map(|b| format!("{b:02x}")).collect(),
            conn: RwLock::new(None),
            waiters: Mutex::new(HashMap::new()),
            next_waiter: AtomicU64::new(0),
            breaker: Breaker::new(),
            scripts: Scripts::new(),
            metrics: FleetMetrics::default(),
        });
        tokio::spawn(connect(Arc::downgrade(&inner), config.clone()));
        Self(inner)
    }

    /// Joins the fleet's flight for `token` (whose `exp` is `expires_at`):
    /// its cached answer, another replica's flight to follow, or the lease to
    /// lead one. A follower waits at most for the leader's lease; its caller's
    /// own deadline is kept by the caller.
    pub(crate) async fn join(&self, token: &str, expires_at: Option<SystemTime>) -> Joined {
        let Some(mut conn) = self.usable() else {
            return Joined::Alone;
        };
        let names = self.0.keys.names(token);
        if !self.0.coalesce {
            return self.cached(&mut conn, names, expires_at).await;
        }
        let mut followed = false;
        for _ in 0..JOIN_ROUNDS {
            let budget = self.budget();
            let mut call = self.0.scripts.join.prepare_invoke();
            call.key(&names.answer)
                .key(&names.result)
                .key(&names.lease)
                .arg(&self.0.replica)
                .arg(millis(self.0.lease))
                .arg(if self.remembers() { "1" } else { "0" });
            let Some(reply) = self
                .op::<Vec<Value>>("join", budget, call.invoke_async(&mut conn))
                .await
            else {
                return Joined::Alone;
            };
            match reply.as_slice() {
                [
                    Value::Int(1),
                    Value::BulkString(sealed),
                    Value::BulkString(which),
                ] => {
                    if sealed.as_slice() == ABANDONED {
                        continue;
                    }
                    return self
                        .found(&mut conn, names, sealed, which, expires_at)
                        .await;
                }
                [Value::Int(2)] => {
                    if followed {
                        metrics::counter!(FLEET_LEASE_TAKEOVERS).increment(1);
                    }
                    return Joined::Lead(self.lease(names, expires_at));
                }
                [Value::Int(3), Value::Int(left)] => {
                    let left = Duration::from_millis(u64::try_from(*left).unwrap_or(0));
                    match self.follow(&mut conn, &names, left, budget).await {
                        Followed::Done(joined) => return joined,
                        Followed::Rejoin => followed = true,
                    }
                }
                _ => return Joined::Alone,
            }
        }
        Joined::Alone
    }

    /// An outcome the join found: the fleet cache's answer (`which` is
    /// `a`) or the flight's result. One that does not open is replaced by
    /// this replica's own answer, if it can take the lease.
    async fn found(
        &self,
        conn: &mut Conn,
        names: Names,
        sealed: &[u8],
        which: &[u8],
        expires_at: Option<SystemTime>,
    ) -> Joined {
        let remembered = which == b"a";
        let name = if remembered {
            &names.answer
        } else {
            &names.result
        };
        match self.open(name, sealed) {
            Some(mut outcome) => {
                if !remembered && let Err(Error::Upstream(up)) = &mut outcome {
                    // A flight's outcome: its 2 s in Redis are no bound on
                    // how long the fleet remembers the refusal.
                    up.remembered_until_s = None;
                }
                let source = match (remembered, &outcome) {
                    (true, Ok(_)) => Source::FleetCache,
                    (true, Err(_)) => Source::FleetMemory,
                    (false, _) => Source::FleetCoalesced,
                };
                Joined::Shared(outcome, source)
            }
            None => self.claim(conn, names, expires_at).await,
        }
    }

    /// Without fleet single flight (`--coalesce=false`): the fleet's
    /// memory alone.
    async fn cached(
        &self,
        conn: &mut Conn,
        names: Names,
        expires_at: Option<SystemTime>,
    ) -> Joined {
        if !self.remembers() {
            return Joined::Alone;
        }
        let mut get = redis::cmd("GET");
        get.arg(&names.answer);
        let found: Option<Vec<u8>> = self
            .op("get", self.budget(), get.query_async(conn))
            .await
            .flatten();
        match found.and_then(|sealed| self.open(&names.answer, &sealed)) {
            Some(Ok(answer)) => Joined::Shared(Ok(answer), Source::FleetCache),
            Some(Err(refusal)) => Joined::Shared(Err(refusal), Source::FleetMemory),
            None => Joined::Lead(self.lease(names, expires_at)),
        }
    }

    /// Takes the lease after a value that did not open, so this replica's
    /// answer replaces it; `Alone` if another replica holds the lease.
    async fn claim(&self, conn: &mut Conn, names: Names, expires_at: Option<SystemTime>) -> Joined {
        let mut set = redis::cmd("SET");
        set.arg(&names.lease)
            .arg(&self.0.replica)
            .arg("NX")
            .arg("PX")
            .arg(millis(self.0.lease));
        let taken: Option<Option<String>> = self
            .op("take_over", self.budget(), set.query_async(conn))
            .await;
        match taken {
            Some(Some(_)) => Joined::Lead(self.lease(names, expires_at)),
            _ => Joined::Alone,
        }
    }

    /// Whether the fleet remembers outcomes: answers (the fleet cache) or
    /// refusals (refusal memory).
    fn remembers(&self) -> bool {
        self.0.cache_ttl.is_some() || self.0.refusal_ttl.is_some()
    }

    /// How long the fleet remembers `outcome`, from now: min(its TTL, exp −
    /// now), for an answer with the fleet cache on and for a definitive
    /// refusal with refusal memory on; `None` otherwise, or past `exp`.
    fn memory_ttl(
        &self,
        outcome: &Result<Answer, Error>,
        expires_at: Option<SystemTime>,
    ) -> Option<Duration> {
        let ttl = match outcome {
            Ok(_) => self.0.cache_ttl?,
            Err(Error::Upstream(up)) if up.kind.is_definitive() => self.0.refusal_ttl?,
            Err(_) => return None,
        };
        let left = match expires_at {
            Some(exp) => exp.duration_since(SystemTime::now()).unwrap_or_default(),
            None => ttl,
        };
        Some(ttl.min(left)).filter(|ttl| !ttl.is_zero())
    }

    fn lease(&self, names: Names, expires_at: Option<SystemTime>) -> Lease {
        Lease {
            fleet: self.clone(),
            names,
            token: self.0.replica.clone(),
            expires_at,
        }
    }

    /// Waits for the leader's outcome on the flight's channel, at most until
    /// its lease runs out, or until the breaker opens.
    async fn follow(
        &self,
        conn: &mut Conn,
        names: &Names,
        lease_left: Duration,
        budget: Instant,
    ) -> Followed {
        let (waiter, mut rx) = self.wait_on(&names.channel);
        if self
            .op("subscribe", budget, conn.subscribe(&names.channel))
            .await
            .is_none()
        {
            return Followed::Done(Joined::Alone);
        }
        // The outcome may have landed before the subscription.
        let mut get = redis::cmd("GET");
        get.arg(&names.result);
        let landed: Option<Vec<u8>> = self
            .op("get", budget, get.query_async(conn))
            .await
            .flatten();
        if let Some(sealed) = landed {
            return self.followed(names, &sealed);
        }
        let mut opened = self.0.breaker.opened.subscribe();
        let followed = tokio::select! {
            message = &mut rx => match message {
                Ok(sealed) => self.followed(names, &sealed),
                Err(_) => Followed::Done(Joined::Alone),
            },
            _ = opened.changed() => Followed::Done(Joined::Alone),
            // The lease's own expiry is on Redis's clock: a little slack.
            () = tokio::time::sleep(lease_left + Duration::from_millis(5)) => Followed::Rejoin,
        };
        drop(waiter);
        followed
    }

    /// A published or stored flight outcome.
    fn followed(&self, names: &Names, sealed: &[u8]) -> Followed {
        if sealed == ABANDONED {
            return Followed::Rejoin;
        }
        Followed::Done(match self.open(&names.result, sealed) {
            Some(mut outcome) => {
                if let Err(Error::Upstream(up)) = &mut outcome {
                    up.remembered_until_s = None;
                }
                Joined::Shared(outcome, Source::FleetCoalesced)
            }
            None => Joined::Alone,
        })
    }

    /// Registers a follower for `channel`'s next message.
    fn wait_on(&self, channel: &str) -> (Waiter, oneshot::Receiver<Vec<u8>>) {
        let (tx, rx) = oneshot::channel();
        let id = self.0.next_waiter.fetch_add(1, Ordering::Relaxed);
        lock(&self.0.waiters)
            .entry(channel.as_bytes().to_vec())
            .or_default()
            .push((id, tx));
        let waiter = Waiter {
            fleet: self.clone(),
            channel: channel.to_owned(),
            id,
        };
        (waiter, rx)
    }

    fn open(&self, name: &str, sealed: &[u8]) -> Option<Result<Answer, Error>> {
        let decoded = self
            .0
            .keys
            .open(name, sealed)
            .and_then(|plain| decode(&plain));
        if decoded.is_none() {
            metrics::counter!(FLEET_UNOPENED).increment(1);
        }
        decoded
    }

    /// Whether the store may be asked now (it is connected and the breaker
    /// is closed); a skip is counted.
    pub(crate) fn usable_now(&self) -> bool {
        self.usable().is_some()
    }

    /// The connection, unless the store is away or the breaker is open.
    fn usable(&self) -> Option<Conn> {
        let conn = self.connection();
        if let Err(breaker_open) = conn {
            self.0.metrics.skipped(breaker_open);
        }
        conn.ok()
    }

    /// The connection, or why there is none: `true` if the breaker is open,
    /// `false` if the store is not connected. Nothing counted.
    fn connection(&self) -> Result<Conn, bool> {
        if !self.0.breaker.closed() {
            return Err(true);
        }
        self.0
            .conn
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or(false)
    }

    /// The name of a key of the fleet's own (not a token's) for `label`,
    /// under the fleet key and in a slot of its own: `cf:{tag}:suffix`.
    pub(crate) fn key_name(&self, label: &str, suffix: &str) -> String {
        format!("cf:{{{}}}:{suffix}", self.0.keys.tag(label))
    }

    /// This replica's random id (also its leases' token).
    pub(crate) fn replica(&self) -> &str {
        &self.0.replica
    }

    /// Runs `script` on `keys` (one slot) with `args`, within one Redis
    /// budget, counted as `op` and under the breaker; `None` if the store is
    /// away, or failed or took too long.
    pub(crate) async fn eval<A: redis::ToRedisArgs>(
        &self,
        op: &'static str,
        script: &Script,
        keys: &[&str],
        args: &[A],
    ) -> Option<Vec<Value>> {
        self.eval_within(self.0.timeout, op, script, keys, args)
            .await
    }

    /// [`Self::eval`] with its own budget, for work no call waits on.
    pub(crate) async fn eval_within<A: redis::ToRedisArgs>(
        &self,
        budget: Duration,
        op: &'static str,
        script: &Script,
        keys: &[&str],
        args: &[A],
    ) -> Option<Vec<Value>> {
        // Not a call's lookup: a skip here is not counted as one.
        let mut conn = self.connection().ok()?;
        let mut call = script.prepare_invoke();
        for key in keys {
            call.key(*key);
        }
        for arg in args {
            call.arg(arg);
        }
        self.op(op, Instant::now() + budget, call.invoke_async(&mut conn))
            .await
    }

    /// A budget of `--redis-timeout` from now.
    fn budget(&self) -> Instant {
        Instant::now() + self.0.timeout
    }

    /// One Redis operation, over by `until` (the call's Redis budget),
    /// counted; `None` on failure.
    async fn op<T>(
        &self,
        op: &'static str,
        until: Instant,
        future: impl Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        let outcome = tokio::time::timeout_at(until.into(), future).await;
        let (label, result) = match outcome {
            Ok(Ok(value)) => ("ok", Some(value)),
            Ok(Err(err)) => {
                self.0.breaker.failure(op, &err);
                ("error", None)
            }
            Err(_) => {
                self.0.breaker.failure(op, &"timed out");
                ("timeout", None)
            }
        };
        if result.is_some() {
            self.0.breaker.success();
        }
        self.0.metrics.op(op, label);
        result
    }

    /// Routes a pushed message to the followers waiting on its channel. A
    /// lost connection took every subscription with it: no message will
    /// come, so its followers stop waiting and go on alone (each to its own
    /// call to Cognito, within its caller's deadline), and the breaker hears
    /// of it, as of any failed operation.
    fn deliver(&self, push: PushInfo) {
        if push.kind == PushKind::Disconnection {
            let waiting = std::mem::take(&mut *lock(&self.0.waiters));
            if !waiting.is_empty() {
                self.0
                    .breaker
                    .failure("subscribe", &"the connection was lost");
            }
            return;
        }
        if !matches!(push.kind, PushKind::Message | PushKind::SMessage) {
            return;
        }
        let [Value::BulkString(channel), Value::BulkString(payload)] = push.data.as_slice() else {
            return;
        };
        let waiting = lock(&self.0.waiters).remove(channel).unwrap_or_default();
        for (_, waiter) in waiting {
            let _ = waiter.send(payload.clone());
        }
    }
}

impl Lease {
    /// Shares the leader's outcome in the background (the leader's own
    /// caller does not wait for Redis): Cognito's answers and its refusals
    /// of the token go to the flight's followers, answers into the fleet
    /// cache and definitive refusals into its memory. The leader's own trouble reaching Cognito is not shared: it
    /// leaves a marker that sends the followers to join again (one of them
    /// leads the next flight).
    pub(crate) fn finish(self, outcome: &Result<Answer, Error>) {
        let now = SystemTime::now();
        let memory_ttl = self.fleet.memory_ttl(outcome, self.expires_at);
        let shared = shareable(outcome).map(|kind| {
            let result = encode(kind, outcome, now + FLIGHT_RESULT_TTL);
            let answer = memory_ttl.map(|ttl| (encode(kind, outcome, now + ttl), ttl));
            (result, answer)
        });
        tokio::spawn(async move {
            let fleet = &self.fleet;
            let Some(mut conn) = fleet.usable() else {
                return;
            };
            let (names, keys) = (&self.names, &fleet.0.keys);
            let sealed = match &shared {
                Some((result, answer)) => keys.seal(&names.result, result).map(|result| {
                    let answer = answer.as_ref().and_then(|(plain, ttl)| {
                        keys.seal(&names.answer, plain).map(|sealed| (sealed, *ttl))
                    });
                    (result, answer)
                }),
                None => Some((ABANDONED.to_vec(), None)),
            };
            let Some((result, answer)) = sealed else {
                return;
            };
            let mut finish = fleet.0.scripts.finish.prepare_invoke();
            finish
                .key(&names.result)
                .key(&names.lease)
                .key(&names.answer)
                .arg(&result)
                .arg(millis(FLIGHT_RESULT_TTL))
                .arg(&self.token);
            match &answer {
                Some((sealed, ttl)) => finish.arg(sealed).arg(millis(*ttl)),
                None => finish.arg("").arg(0),
            };
            let _: Option<i64> = fleet
                .op("finish", fleet.budget(), finish.invoke_async(&mut conn))
                .await;
            let publish = conn.publish(fleet.0.mode, &names.channel, &result);
            let _ = fleet.op("publish", fleet.budget(), publish).await;
        });
    }
}

/// One follower's place in the waiters: leaving, it takes itself out, and
/// the last one out of a channel unsubscribes it.
struct Waiter {
    fleet: Fleet,
    channel: String,
    id: u64,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let last = {
            let mut waiters = lock(&self.fleet.0.waiters);
            match waiters.get_mut(self.channel.as_bytes()) {
                Some(waiting) => {
                    waiting.retain(|(id, _)| *id != self.id);
                    let empty = waiting.is_empty();
                    if empty {
                        waiters.remove(self.channel.as_bytes());
                    }
                    empty
                }
                // Delivered: nobody waits any more.
                None => true,
            }
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(mut conn) = self.fleet.usable().filter(|_| last) else {
            return;
        };
        let (fleet, channel) = (self.fleet.clone(), self.channel.clone());
        runtime.spawn(async move {
            // A follower of the token's next flight may have come meanwhile.
            if lock(&fleet.0.waiters).contains_key(channel.as_bytes()) {
                return;
            }
            let unsubscribe = conn.unsubscribe(&channel);
            let _ = fleet.op("unsubscribe", fleet.budget(), unsubscribe).await;
        });
    }
}

impl Conn {
    async fn subscribe(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            Self::Standalone(conn) => conn.subscribe(channel).await,
            Self::Cluster(conn) => conn.ssubscribe(channel).await,
        }
    }

    async fn unsubscribe(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            Self::Standalone(conn) => conn.unsubscribe(channel).await,
            Self::Cluster(conn) => conn.sunsubscribe(channel).await,
        }
    }

    /// PUBLISH, or SPUBLISH in a cluster (sharded: only the slot's nodes
    /// carry it).
    async fn publish(
        &mut self,
        mode: RedisMode,
        channel: &str,
        payload: &[u8],
    ) -> redis::RedisResult<()> {
        let command = match mode {
            RedisMode::Standalone => "PUBLISH",
            RedisMode::Cluster => "SPUBLISH",
        };
        redis::cmd(command)
            .arg(channel)
            .arg(payload)
            .query_async(self)
            .await
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Self::Standalone(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Standalone(conn) => conn.req_packed_commands(cmd, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Standalone(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

/// Connects, retrying with a growing pause until it works or the fleet is
/// gone; the connection then reconnects by itself.
async fn connect(fleet: std::sync::Weak<Inner>, config: FleetConfig) {
    let warned = Every::new(WARN_INTERVAL);
    let mut backoff = CONNECT_BACKOFF_MIN;
    loop {
        let Some(inner) = fleet.upgrade() else {
            return;
        };
        // Weak: the connection holds this sender, and the fleet the
        // connection.
        let push = {
            let fleet = Arc::downgrade(&inner);
            move |push: PushInfo| -> Result<(), std::convert::Infallible> {
                if let Some(inner) = fleet.upgrade() {
                    Fleet(inner).deliver(push);
                }
                Ok(())
            }
        };
        match open_connection(&config, push).await {
            Ok(conn) => {
                *inner
                    .conn
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(conn);
                tracing::info!(mode = ?config.mode, "connected to the fleet store");
                return;
            }
            Err(err) => {
                if let Some(suppressed) = warned.ready() {
                    tracing::warn!(error = %err, suppressed, "cannot reach the fleet store yet; serving without it");
                }
            }
        }
        drop(inner);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(CONNECT_BACKOFF_MAX);
    }
}

async fn open_connection(
    config: &FleetConfig,
    push: impl redis::aio::AsyncPushSender + Clone,
) -> redis::RedisResult<Conn> {
    match config.mode {
        RedisMode::Standalone => {
            let info = redis::IntoConnectionInfo::into_connection_info(config.urls[0].as_str())?;
            let settings = info
                .redis_settings()
                .clone()
                .set_protocol(ProtocolVersion::RESP3);
            let client = redis::Client::open(info.set_redis_settings(settings))?;
            let manager = ConnectionManagerConfig::new()
                .set_push_sender(push)
                .set_automatic_resubscription()
                .set_connection_timeout(Some(config.timeout.max(Duration::from_millis(500))))
                .set_response_timeout(Some(config.timeout))
                .set_number_of_retries(1);
            Ok(Conn::Standalone(
                client.get_connection_manager_with_config(manager).await?,
            ))
        }
        RedisMode::Cluster => {
            let client = ClusterClient::builder(config.urls.iter().map(String::as_str))
                .use_protocol(ProtocolVersion::RESP3)
                .push_sender(push)
                .connection_timeout(config.timeout.max(Duration::from_millis(500)))
                .response_timeout(config.timeout)
                .retries(1)
                .build()?;
            Ok(Conn::Cluster(client.get_async_connection().await?))
        }
    }
}

/// The value's kinds.
const KIND_ANSWER: u8 = 1;
const KIND_REFUSAL: u8 = 2;

/// Whether an outcome is Cognito's own word on the token (shared), rather
/// than this replica's trouble reaching it (not shared).
fn shareable(outcome: &Result<Answer, Error>) -> Option<u8> {
    match outcome {
        Ok(_) => Some(KIND_ANSWER),
        Err(Error::Upstream(up)) => {
            use UpstreamErrorKind as K;
            match up.kind {
                K::NotAuthorized
                | K::InvalidParameter
                | K::ResourceNotFound
                | K::UserNotFound
                | K::UserNotConfirmed
                | K::PasswordResetRequired
                | K::OperationNotEnabled => Some(KIND_REFUSAL),
                // Not the token's fault: a WAF rule (perhaps on the leader's
                // own address), or a code this version cannot judge.
                K::Forbidden
                | K::Unmodeled
                | K::TooManyRequests
                | K::InternalError
                | K::Unavailable
                | K::Unreachable
                | K::Timeout
                | K::BadResponse
                | K::RequestConstruction
                | K::RateLimited => None,
            }
        }
        Err(_) => None,
    }
}

/// A refusal as stored (inside the seal).
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredRefusal {
    code: Option<String>,
    message: Option<String>,
    request_id: Option<String>,
    reason_code: Option<Box<str>>,
}

/// The plaintext of a shareable outcome: its kind, then an answer's request
/// id (length-prefixed) and protobuf, or a refusal's JSON.
/// Inside the seal: the kind, the instant after which the value is stale
/// (milliseconds since the epoch: a value put back after its time, by hand
/// or from a backup, does not open), then the outcome.
fn encode(kind: u8, outcome: &Result<Answer, Error>, stale_at: SystemTime) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&unix_millis(stale_at).to_be_bytes());
    match outcome {
        Ok(answer) => {
            let id = answer.request_id.as_deref().unwrap_or_default().as_bytes();
            let len = u16::try_from(id.len()).unwrap_or(0);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&id[..usize::from(len)]);
            answer.response.encode(&mut out).unwrap_or_default();
        }
        Err(Error::Upstream(up)) => {
            let stored = StoredRefusal {
                code: up.aws_error_code.clone(),
                message: up.message.clone(),
                request_id: up.request_id.clone(),
                reason_code: up.reason_code.clone(),
            };
            out.extend(serde_json::to_vec(&stored).unwrap_or_default());
        }
        Err(_) => {}
    }
    out
}

fn decode(plain: &[u8]) -> Option<Result<Answer, Error>> {
    let (&kind, rest) = plain.split_first()?;
    let (stale_at, rest) = rest.split_at_checked(8)?;
    let stale_at = u64::from_be_bytes(stale_at.try_into().ok()?);
    if unix_millis(SystemTime::now()) >= stale_at {
        return None;
    }
    match kind {
        KIND_ANSWER => {
            let len = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
            let id = std::str::from_utf8(rest.get(2..2 + len)?).ok()?;
            let response = GetUserAuthFactorsResponse::decode(rest.get(2 + len..)?).ok()?;
            Some(Ok(Answer {
                response,
                request_id: (!id.is_empty()).then(|| id.to_owned()),
                fresh_until: UNIX_EPOCH.checked_add(Duration::from_millis(stale_at)),
            }))
        }
        KIND_REFUSAL => {
            let stored: StoredRefusal = serde_json::from_slice(rest).ok()?;
            let kind = stored
                .code
                .as_deref()
                .and_then(UpstreamErrorKind::from_aws_code)
                .unwrap_or(UpstreamErrorKind::Unmodeled);
            let mut up = UpstreamError::new(kind);
            up.aws_error_code = stored.code;
            up.message = stored.message;
            up.request_id = stored.request_id;
            up.reason_code = stored.reason_code;
            // Whole seconds, rounded down: a copy never outlives the value.
            up.remembered_until_s = u32::try_from(stale_at / 1000)
                .ok()
                .and_then(std::num::NonZeroU32::new);
            Some(Err(Error::Upstream(up)))
        }
        _ => None,
    }
}

fn unix_millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(byte: u8) -> SealingKeys {
        SealingKeys::derive(&FleetKey(vec![byte; 32]))
    }

    fn answer() -> Result<Answer, Error> {
        Ok(Answer {
            response: GetUserAuthFactorsResponse {
                username: "alice".to_owned(),
                ..Default::default()
            },
            request_id: Some("req-1".to_owned()),
            fresh_until: None,
        })
    }

    fn later() -> SystemTime {
        SystemTime::now() + Duration::from_secs(60)
    }

    #[test]
    fn a_sealed_value_opens_only_under_its_own_name_and_fleet_key() {
        let keys = keys(7);
        let names = keys.names("token");
        let plain = encode(KIND_ANSWER, &answer(), later());
        let sealed = keys.seal(&names.answer, &plain).unwrap();
        assert_eq!(
            keys.open(&names.answer, &sealed).as_deref(),
            Some(&plain[..])
        );
        assert_eq!(
            keys.open(&keys.names("other").answer, &sealed),
            None,
            "moved"
        );
        assert_eq!(
            self::keys(8).open(&names.answer, &sealed),
            None,
            "another fleet"
        );
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(keys.open(&names.answer, &tampered), None, "tampered");
        let mut other_format = sealed;
        other_format[0] = 2;
        assert_eq!(
            keys.open(&names.answer, &other_format),
            None,
            "another format"
        );
    }

    #[test]
    fn debug_never_shows_a_password() {
        let config = FleetConfig {
            urls: vec!["rediss://user:hunter2@redis:6379".to_owned()],
            mode: RedisMode::Standalone,
            key: FleetKey(vec![1; 32]),
            timeout: DEFAULT_REDIS_TIMEOUT,
        };
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("@redis:6379"),
            "{shown}"
        );
        assert_eq!(without_password("redis://redis:6379"), "redis://redis:6379");
    }

    #[test]
    fn names_share_a_hash_tag_and_hide_the_token() {
        let names = keys(7).names("eyJ.token.sig");
        let tag = |name: &str| name[name.find('{').unwrap()..=name.find('}').unwrap()].to_owned();
        assert_eq!(tag(&names.answer), tag(&names.lease));
        assert_eq!(tag(&names.result), tag(&names.channel));
        assert!(!names.answer.contains("token"));
        assert_ne!(keys(8).names("eyJ.token.sig").answer, names.answer);
    }

    #[test]
    fn outcomes_round_trip_and_only_cognitos_word_is_shared() {
        let stale = encode(KIND_ANSWER, &answer(), SystemTime::now());
        assert!(
            decode(&stale).is_none(),
            "a value past its time does not open"
        );
        let Some(Ok(back)) = decode(&encode(KIND_ANSWER, &answer(), later())) else {
            panic!("an answer");
        };
        assert_eq!(back.response.username, "alice");
        assert_eq!(back.request_id.as_deref(), Some("req-1"));
        let mut revoked = UpstreamError::new(UpstreamErrorKind::NotAuthorized);
        revoked.aws_error_code = Some("NotAuthorizedException".to_owned());
        revoked.message = Some("Access Token has been revoked".to_owned());
        let refusal = Err(Error::Upstream(revoked));
        assert_eq!(shareable(&refusal), Some(KIND_REFUSAL));
        let Some(Err(Error::Upstream(back))) = decode(&encode(KIND_REFUSAL, &refusal, later()))
        else {
            panic!("a refusal");
        };
        assert_eq!(back.kind, UpstreamErrorKind::NotAuthorized);
        assert_eq!(
            back.message.as_deref(),
            Some("Access Token has been revoked")
        );
        for kind in [UpstreamErrorKind::Timeout, UpstreamErrorKind::Unreachable] {
            assert_eq!(
                shareable(&Err(Error::Upstream(UpstreamError::new(kind)))),
                None
            );
        }
        assert_eq!(decode(&[9, 1, 2]).map(|o| o.is_ok()), None);
    }
}
