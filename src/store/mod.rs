//! The Redis (or Valkey) substrate under the fleet (`crate::fleet`) and the
//! fleet's rate limit (`crate::quota`), which use it and not each other.
//! Layer 4, above `base`.
//!
//! It owns the connection and its reconnect loop (`conn`), the breakers
//! (`breaker`: one for calls, one for background work), operation
//! accounting (`ops`), sealing and key names (`seal`), scripts (`script`)
//! and its settings with the key files (`config`).
//!
//! Redis helps and is never needed: start-up never waits for it, a call
//! gives each operation at most `--redis-timeout`, background work at most
//! [`conn::BACKGROUND_BUDGET`], and a breaker skips the store while it
//! fails. Nothing readable is stored, and every key expires.
//!
//! Files, lowest first: `ops`, `breaker`, `config`, `seal`, `conn`,
//! `script`, `test_server`.

mod breaker;
mod config;
mod conn;
mod ops;
mod script;
mod seal;
#[cfg(test)]
pub(crate) mod test_server;

use std::{
    fmt,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use redis::PushInfo;
use tokio::sync::watch;

pub use self::config::{
    DEFAULT_REDIS_TIMEOUT, FleetConfig, FleetKey, FleetKeyError, MIN_FLEET_KEY_BYTES, RedisMode,
    without_password,
};
use self::{
    breaker::Breaker,
    ops::{OpMetrics, Outcome, Skip},
};
pub(crate) use self::{
    breaker::Lane,
    conn::{BACKGROUND_BUDGET, StoreConn},
    ops::Op,
    script::{LuaScript, ScriptCall},
    seal::{Domain, Keyring, hex},
};
use crate::base::telemetry::Every;

/// The fleet store, shared by the fleet and the rate limit.
#[derive(Clone)]
pub(crate) struct Store(Arc<StoreState>);

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("mode", &self.0.config.mode)
            .finish_non_exhaustive()
    }
}

/// Where pushed messages go.
type Deliver = Arc<dyn Fn(PushInfo) + Send + Sync>;

/// Least time between two warnings that the store is out of memory.
const OOM_WARN_INTERVAL: Duration = Duration::from_secs(10);

struct StoreState {
    /// Its settings: the mode, a call's budget for one operation
    /// (`--redis-timeout`), the URLs to connect (again) to.
    config: FleetConfig,
    deliver: Deliver,
    keys: Keyring,
    /// This replica's random id (in the fleet's replica set).
    replica: String,
    conn: RwLock<Option<StoreConn>>,
    /// The fleet-wide channel each connection subscribes before it is put
    /// in place, so a replica hears every notice from the moment it uses
    /// the store (the connection subscribes it again by itself after each
    /// reconnection).
    broadcast: String,
    /// The server answered READONLY: the connection was dropped and a
    /// master is being looked for (standalone).
    read_only: AtomicBool,
    oom_warned: Every,
    calls: Breaker,
    background: Breaker,
    metrics: OpMetrics,
}

impl StoreState {
    /// Puts `conn` in place (or, `None`, leaves none).
    fn set_conn(&self, conn: Option<StoreConn>) {
        *self
            .conn
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = conn;
    }

    /// Puts `conn` in place and tells of it.
    fn install(&self, conn: StoreConn) {
        self.set_conn(Some(conn));
        self.read_only.store(false, Ordering::Release);
    }
}

impl Store {
    /// Starts connecting in the background (start-up never waits for
    /// Redis) and returns at once; pushed messages go to `deliver`.
    pub(crate) fn start<P>(config: &FleetConfig, broadcast: &str, deliver: P) -> Self
    where
        P: Fn(PushInfo) + Clone + Send + Sync + 'static,
    {
        let mut id = [0u8; 16];
        let _ = SystemRandom::new().fill(&mut id);
        let keys = Keyring::new(config);
        let inner = Arc::new(StoreState {
            config: config.clone(),
            deliver: Arc::new(deliver),
            broadcast: key_name(&keys, broadcast, "v"),
            keys,
            replica: hex(&id),
            conn: RwLock::new(None),
            read_only: AtomicBool::new(false),
            oom_warned: Every::new(OOM_WARN_INTERVAL),
            calls: Breaker::new(Lane::Calls),
            background: Breaker::new(Lane::Background),
            metrics: OpMetrics::default(),
        });
        tokio::spawn(conn::connect(Arc::downgrade(&inner), conn::Wanted::Any));
        Self(inner)
    }

    pub(crate) fn mode(&self) -> RedisMode {
        self.0.config.mode
    }

    pub(crate) fn keys(&self) -> &Keyring {
        &self.0.keys
    }

    /// This replica's random id.
    pub(crate) fn replica(&self) -> &str {
        &self.0.replica
    }

    /// The name of a key of the fleet's own (not a token's) for `label`, in
    /// a slot of its own: `cf:{tag}:suffix`.
    pub(crate) fn key_name(&self, label: &str, suffix: &str) -> String {
        key_name(&self.0.keys, label, suffix)
    }

    /// The fleet-wide channel every connection subscribes.
    pub(crate) fn broadcast(&self) -> &str {
        &self.0.broadcast
    }

    /// The connection for a call, unless the store is away or the calls'
    /// breaker is open; a skip is counted.
    pub(crate) fn for_call(&self) -> Option<StoreConn> {
        let conn = self.connection(Lane::Calls);
        if let Err(skip) = conn {
            self.0.metrics.skipped(skip);
        }
        conn.ok()
    }

    /// The connection for `lane`, or why there is none. Nothing counted.
    pub(crate) fn connection(&self, lane: Lane) -> Result<StoreConn, Skip> {
        if self.0.read_only.load(Ordering::Acquire) {
            return Err(Skip::ReadOnly);
        }
        if !self.breaker(lane).closed() {
            return Err(Skip::BreakerOpen);
        }
        self.0
            .conn
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or(Skip::NotConnected)
    }

    fn breaker(&self, lane: Lane) -> &Breaker {
        match lane {
            Lane::Calls => &self.0.calls,
            Lane::Background => &self.0.background,
        }
    }

    /// Tells of each opening of the calls' breaker.
    pub(crate) fn breaker_openings(&self) -> watch::Receiver<u64> {
        self.0.calls.openings()
    }

    /// A budget of `--redis-timeout` from now.
    pub(crate) fn call_budget(&self) -> Instant {
        Instant::now() + self.0.config.timeout
    }

    /// One operation on `lane`, over by `until`, counted, under that lane's
    /// breaker; `None` on failure.
    pub(crate) async fn op<T>(
        &self,
        op: Op,
        lane: Lane,
        until: Instant,
        future: impl Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        let outcome = tokio::time::timeout_at(until.into(), future).await;
        let breaker = self.breaker(lane);
        let (outcome, result) = match outcome {
            Ok(Ok(value)) => {
                breaker.success();
                (Outcome::Ok, Some(value))
            }
            Ok(Err(err)) => match err.code() {
                Some("READONLY") if self.0.config.mode == RedisMode::Standalone => {
                    self.lost_the_master();
                    (Outcome::ReadOnly, None)
                }
                // Writes refused, reads served: each call goes on alone at
                // once, and the breaker (which would open, close and open
                // again) is left out of it.
                Some("OOM") => {
                    if let Some(suppressed) = self.0.oom_warned.ready() {
                        tracing::warn!(
                            op = op.label(),
                            suppressed,
                            "the fleet store is out of memory (OOM: maxmemory with noeviction): its writes are refused, so flights and the rate limit run per replica until it has room"
                        );
                    }
                    (Outcome::OutOfMemory, None)
                }
                _ => {
                    breaker.failure(op.label(), &err);
                    (Outcome::Error, None)
                }
            },
            Err(_) => {
                breaker.failure(op.label(), &"timed out");
                (Outcome::Timeout, None)
            }
        };
        self.0.metrics.op(op, outcome);
        result
    }

    /// Runs `call` on `lane` within `budget` from now, counted as `op`;
    /// `None` if the store is away, or failed or took too long.
    pub(crate) async fn run(
        &self,
        op: Op,
        lane: Lane,
        budget: Duration,
        call: &ScriptCall<'_>,
    ) -> Option<redis::Value> {
        let mut conn = self.connection(lane).ok()?;
        self.op(op, lane, Instant::now() + budget, call.run(&mut conn))
            .await
    }

    /// The connection whatever the breakers say, for work that must not
    /// be skipped (a subscription left behind would outlive every
    /// follower); `None` while not connected.
    pub(crate) fn connected(&self) -> Option<StoreConn> {
        self.0
            .conn
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A call's budget for one operation.
    pub(crate) fn timeout(&self) -> Duration {
        self.0.config.timeout
    }

    /// The server answered READONLY: it is a replica now (after a
    /// failover, the address may lead to the new master on a fresh
    /// connection). Drops the connection, once, and looks for a master;
    /// meanwhile every call skips the store (`readonly`).
    fn lost_the_master(&self) {
        if self.0.read_only.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::warn!(
            "the fleet store answered READONLY (a replica, after a failover?): serving without it until --redis-url leads to a master"
        );
        self.0.set_conn(None);
        tokio::spawn(conn::connect(Arc::downgrade(&self.0), conn::Wanted::Master));
    }
}

/// The name of a fleet-wide key or channel: `label`'s tag under the fleet's
/// key, with `suffix` after it (`cf:{TAG}:SUFFIX`).
fn key_name(keys: &Keyring, label: &str, suffix: &str) -> String {
    let tag = keys.tag(Domain::Label, label.as_bytes());
    format!("cf:{{{tag}}}:{suffix}")
}
