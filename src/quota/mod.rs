//! The account's quota, guarded: every HTTP attempt to Cognito takes a turn
//! under `--upstream-rate-limit` (per region), shared by the fleet on Redis
//! or kept by each replica alone; Cognito's throttling lowers the rate for
//! everyone, and it climbs back once the throttling stops. The algorithm is
//! `crate::quota::gcra`'s, on Redis's clock when the fleet shares it.
//!
//! Layer 5, above `store` and `upstream`. `gcra` is the algorithm, in Rust
//! and as `gcra.lua`; `scripts` reads the replies of it and of the
//! announcements (`announce.lua`); the gate is here.
//!
//! When the turns are fewer than the callers want, they go round robin
//! among the callers with calls waiting (`fair`): each waits in its own
//! flow, and a dispatcher per region takes the turns from the limiter one
//! at a time and gives each to the flow whose turn it is.
//!
//! Files, lowest first: `limits`, `gcra`, `scripts`, `fair`.

mod fair;
pub(crate) mod gcra;
mod limits;
mod scripts;

pub use self::limits::{DEFAULT_UPSTREAM_QUEUE_TIMEOUT, QuotaConfig, RateLimits};

use std::{
    collections::HashMap,
    fmt,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use metrics::{Counter, Gauge};

use self::{
    fair::FairQueue,
    gcra::{Gcra, Params, ScriptOp, Turn},
    scripts::{AnnounceScript, LimiterReply, LimiterScript},
};

use crate::{
    base::caller::Caller,
    base::expiring::lock,
    base::metric_names::{
        FLEET_REPLICAS, UPSTREAM_LIMITED, UPSTREAM_RATE_EFFECTIVE, UPSTREAM_THROTTLES,
        UPSTREAM_WAIT_SECONDS, UPSTREAM_WAITED,
    },
    base::telemetry::Every,
    store::{BACKGROUND_BUDGET, Lane, LuaScript, Op, Store},
    upstream::{AttemptPacer, TurnFuture},
};

/// How often a replica announces itself to the fleet.
const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(1);
/// How long an announcement counts: a replica gone for this long leaves the
/// fleet's size.
const ANNOUNCE_TTL: Duration = Duration::from_secs(5);
/// How often a replica tells the fleet's limiter of the turns its own gave
/// (when Redis was too slow or away for a take).
const REPORT_INTERVAL: Duration = Duration::from_millis(50);
/// At most one "limiting" warning per this long.
const WARN_INTERVAL: Duration = Duration::from_secs(10);
/// A turn must leave its attempt this long before the call's deadline, to
/// reach Cognito and back: a turn due later is refused at once rather than
/// spent on an answer nobody waits for.
const TURN_HEADROOM: Duration = Duration::from_millis(50);
/// Throttling of two different tokens within this long is the account's
/// (or the pool's) quota; of one token alone, that user's own (Cognito
/// throttles one user at about 10 a second), which must not slow the fleet.
const THROTTLE_WINDOW: Duration = Duration::from_secs(1);
/// The limiter every HTTP attempt to Cognito passes (see
/// [`AttemptPacer`]).
pub(crate) struct Quota(Arc<QuotaState>);

impl fmt::Debug for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Quota")
            .field("config", &self.0.config)
            .finish_non_exhaustive()
    }
}

struct QuotaState {
    config: QuotaConfig,
    store: Option<Store>,
    regions: Mutex<HashMap<Arc<str>, Arc<RegionQuota>>>,
    /// The fleet's size as last announced on Redis (the hint until then).
    fleet_size: AtomicU32,
    /// The origin of the in-process limiters' clock.
    epoch: Instant,
    limiting: Every,
    limiter: LimiterScript,
    announce: AnnounceScript,
}

/// One region's limit: its limiter for a replica alone (or for a fleet
/// without Redis, at its share), its Redis key and its metric handles.
struct RegionQuota {
    limit: f64,
    /// The Redis hash of the fleet's limiter (with the fleet): one per
    /// region, whatever the limit and queue timeout. Each replica applies
    /// its own limit to the shared state, so during a rolling change of the
    /// limit the fleet spends at most the larger of the two, never both.
    key: Option<String>,
    local: Mutex<Gcra>,
    /// Turns this replica's own limiter gave that the fleet's has not heard
    /// of, and whether a task is reporting them.
    unreported: AtomicU32,
    reporting: AtomicBool,
    /// The last throttled token (64 bits of its keyed MAC) and when.
    last_throttled: Mutex<Option<(u64, Instant)>>,
    /// The calls waiting for turns, by caller.
    fair: Mutex<FairQueue>,
    throttles: Counter,
    fleet_rate: Gauge,
    replica_rate: Gauge,
}

impl Quota {
    /// The limiter for `config`, shared through the fleet's `store` if
    /// there is one; `None` without a limit. With the store, this replica
    /// announces itself in the background, so each knows the fleet's size
    /// for when Redis goes away.
    pub(crate) fn start(config: QuotaConfig, store: Option<Store>) -> Option<Arc<Self>> {
        if config.limits.is_empty() {
            return None;
        }
        match &store {
            Some(_) => tracing::info!(
                limits = %config.limits,
                queue_timeout = ?config.queue_timeout,
                fleet_size_hint = config.fleet_size_hint,
                "upstream rate limit shared by the fleet on Redis; without Redis, each replica keeps the limit divided by the fleet's last known size (--fleet-size-hint until Redis tells it)"
            ),
            None => tracing::info!(
                limits = %config.limits,
                queue_timeout = ?config.queue_timeout,
                "upstream rate limit per replica (no --redis-url): a fleet of N replicas may send N times the limit"
            ),
        }
        let inner = Arc::new(QuotaState {
            fleet_size: AtomicU32::new(config.fleet_size_hint.max(1)),
            config,
            store,
            regions: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            limiting: Every::new(WARN_INTERVAL),
            limiter: LimiterScript(LuaScript::new(gcra::SCRIPT)),
            announce: AnnounceScript(LuaScript::new(include_str!("announce.lua"))),
        });
        if inner.store.is_some() {
            tokio::spawn(announce(Arc::downgrade(&inner)));
        }
        Some(Arc::new(Self(inner)))
    }
}

impl AttemptPacer for Quota {
    fn turn(&self, region: &Arc<str>, deadline: Instant, caller: &Caller) -> TurnFuture {
        let Some(quota) = self.0.region(region) else {
            return Box::pin(std::future::ready(Ok(())));
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let max_wait = left
            .saturating_sub(TURN_HEADROOM)
            .min(self.0.config.queue_timeout);
        let inner = Arc::clone(&self.0);
        let region = Arc::clone(region);
        let caller = caller.clone();
        Box::pin(async move {
            let label = || metrics::SharedString::from(Arc::clone(&region));
            let who = || caller.label().to_owned();
            // Nobody waiting: a turn now, if the limiter has one.
            let mut next_turn = None;
            if lock(&quota.fair).is_empty() {
                match inner.take(&quota, Duration::ZERO).await {
                    Turn::Go(_) => return Ok(()),
                    Turn::Refused(after) => next_turn = Some(after),
                }
            }
            let started = Instant::now();
            let waiting = inner.wait_in_flow(&quota, &caller, max_wait, next_turn);
            let turn = match waiting {
                Ok(turn) => tokio::time::timeout(max_wait, turn)
                    .await
                    .map_err(|_| Duration::from_millis(10))
                    .and_then(|turn| turn.map_err(|_| Duration::from_millis(10))),
                Err(estimate) => Err(estimate - max_wait),
            };
            match turn {
                Ok(()) => {
                    let waited = started.elapsed();
                    metrics::counter!(UPSTREAM_WAITED, "region" => label(), "caller" => who())
                        .increment(1);
                    metrics::histogram!(UPSTREAM_WAIT_SECONDS, "region" => label(), "caller" => who())
                        .record(waited.as_secs_f64());
                    inner.warn_limiting(&region, "waiting for their turn");
                    Ok(())
                }
                Err(retry_after) => {
                    metrics::counter!(UPSTREAM_LIMITED, "region" => label(), "caller" => who())
                        .increment(1);
                    inner.warn_limiting(&region, "refused");
                    Err(retry_after.max(Duration::from_millis(10)))
                }
            }
        })
    }

    fn throttled(&self, region: &Arc<str>, caller: u64) {
        let Some(quota) = self.0.region(region) else {
            return;
        };
        quota.throttles.increment(1);
        if !quota.account_wide(caller) {
            return;
        }
        // This replica's own limiter, for when Redis is away.
        let share = self.0.share(&quota);
        let now = self.0.now_micros();
        let lowered = lock(&quota.local).throttled(now, &share);
        if let Some(lowered) = lowered {
            quota.replica_rate.set(lowered);
        }
        let (Some(store), Some(key)) = (self.0.store.clone(), quota.key.clone()) else {
            return;
        };
        let inner = Arc::clone(&self.0);
        // Every account-wide throttle goes to the fleet's limiter, which
        // spaces its own decreases: one lost to a slow Redis is not the only
        // chance. Off the SDK's (synchronous) interceptor, as background work
        // with its own budget: the fleet hears of it a round trip later.
        tokio::spawn(async move {
            inner.tell(&store, &quota, &key, ScriptOp::Throttle).await;
        });
    }
}

impl RegionQuota {
    /// Whether a throttle of `caller` is the account's: another token was
    /// throttled within [`THROTTLE_WINDOW`].
    fn account_wide(&self, caller: u64) -> bool {
        let now = Instant::now();
        let mut last = lock(&self.last_throttled);
        let wide =
            matches!(*last, Some((other, at)) if other != caller && now - at < THROTTLE_WINDOW);
        *last = Some((caller, now));
        wide
    }
}

impl QuotaState {
    /// The limit of `region`, if it has one.
    fn region(&self, region: &Arc<str>) -> Option<Arc<RegionQuota>> {
        let mut regions = lock(&self.regions);
        if let Some(quota) = regions.get(region) {
            return Some(Arc::clone(quota));
        }
        let limit = self.config.limits.for_region(region)?;
        let label = || metrics::SharedString::from(Arc::clone(region));
        let quota = Arc::new(RegionQuota {
            limit,
            key: self
                .store
                .as_ref()
                .map(|store| store.key_name(&format!("upstream rate limit {region}"), "q")),
            local: Mutex::new(Gcra::default()),
            unreported: AtomicU32::new(0),
            reporting: AtomicBool::new(false),
            last_throttled: Mutex::new(None),
            fair: Mutex::new(FairQueue::default()),
            throttles: metrics::counter!(UPSTREAM_THROTTLES, "region" => label()),
            fleet_rate: metrics::gauge!(UPSTREAM_RATE_EFFECTIVE, "region" => label(), "scope" => "fleet"),
            replica_rate: metrics::gauge!(UPSTREAM_RATE_EFFECTIVE, "region" => label(), "scope" => "replica"),
        });
        regions.insert(Arc::clone(region), Arc::clone(&quota));
        Some(quota)
    }

    /// A turn from the fleet's limiter on Redis, or, without it (none
    /// configured, away, failing, too slow), from this replica's at its
    /// share. Each limiter also counts the turns the other gave, so the
    /// two together never give the limit twice.
    async fn take(self: &Arc<Self>, quota: &Arc<RegionQuota>, max_wait: Duration) -> Turn {
        if let (Some(store), Some(key)) = (&self.store, &quota.key) {
            let mut call = self.limiter.0.call();
            let args = self
                .params(quota.limit)
                .script_args(ScriptOp::Take(max_wait));
            call.key(key).arg(args);
            let reply = store
                .run(Op::Quota, Lane::Calls, store.timeout(), &call)
                .await
                .and_then(LimiterScript::reply);
            if let Some(LimiterReply::Turn(turn, rate)) = reply {
                quota.fleet_rate.set(rate);
                if let Turn::Go(_) = turn {
                    // When a later take times out (its script may have run
                    // and given a fleet turn), this replica's share decides
                    // what is left of it.
                    let share = self.share(quota);
                    lock(&quota.local).spent(self.now_micros(), 1, &share);
                }
                return turn;
            }
        }
        let share = self.share(quota);
        let now = self.now_micros();
        let turn = {
            let mut local = lock(&quota.local);
            let turn = local.take(now, max_wait, &share);
            quota.replica_rate.set(local.rate(now, &share));
            turn
        };
        if matches!(turn, Turn::Go(_)) && quota.key.is_some() {
            self.report(quota);
        }
        turn
    }

    /// Puts a call of `caller` in its flow's queue (starting the region's
    /// dispatcher if none runs): the receiver hears when its turn comes.
    /// A call whose turn would come later than `max_wait` (by its place in
    /// the round robin, at this replica's share of the rate, the limiter's
    /// next turn `next_turn` from now) is not queued: `Err` gives when.
    fn wait_in_flow(
        self: &Arc<Self>,
        quota: &Arc<RegionQuota>,
        caller: &Caller,
        max_wait: Duration,
        next_turn: Option<Duration>,
    ) -> Result<tokio::sync::oneshot::Receiver<()>, Duration> {
        let interval = Duration::from_secs_f64(1.0 / self.share(quota).limit);
        let mut fair = lock(&quota.fair);
        let next = next_turn.unwrap_or_else(|| {
            fair.next_turn.map_or(Duration::ZERO, |at| {
                at.saturating_duration_since(Instant::now())
            })
        });
        let estimate = fair.estimate(caller.flow(), next, interval);
        if estimate > max_wait {
            return Err(estimate);
        }
        let turn = fair.enqueue(caller.flow());
        if !fair.dispatching {
            fair.dispatching = true;
            tokio::spawn(dispatch(Arc::clone(self), Arc::clone(quota)));
        }
        Ok(turn)
    }

    /// Tells the fleet's limiter, in the background, of a turn this
    /// replica's own gave: a Redis too slow for a call's budget (or whose
    /// calls' breaker is open) still hears of it, within a report interval
    /// and the background's budget, so the fleet does not give it again.
    fn report(self: &Arc<Self>, quota: &Arc<RegionQuota>) {
        quota.unreported.fetch_add(1, Ordering::Relaxed);
        if quota.reporting.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(report(Arc::downgrade(self), Arc::clone(quota)));
    }

    /// Runs `op` on the fleet's limiter for `quota` on the background
    /// lane, and keeps the fleet's rate it answers.
    async fn tell(&self, store: &Store, quota: &RegionQuota, key: &str, op: ScriptOp) {
        let mut call = self.limiter.0.call();
        call.key(key).arg(self.params(quota.limit).script_args(op));
        if let Some(LimiterReply::Rate(rate)) = store
            .run(Op::Quota, Lane::Background, BACKGROUND_BUDGET, &call)
            .await
            .and_then(LimiterScript::reply)
        {
            quota.fleet_rate.set(rate);
        }
    }

    /// This replica's share of `quota`'s limit: all of it alone, the limit
    /// divided by the fleet's last known size in a fleet.
    fn share(&self, quota: &RegionQuota) -> Params {
        let size = self.fleet_size.load(Ordering::Relaxed).max(1);
        self.params(quota.limit / f64::from(size))
    }

    /// The limiter's parameters for `limit`, with this replica's longest
    /// wait.
    fn params(&self, limit: f64) -> Params {
        Params {
            horizon: self.config.queue_timeout,
            ..Params::for_limit(limit)
        }
    }

    /// The in-process limiters' clock, in µs.
    fn now_micros(&self) -> f64 {
        gcra::micros(self.epoch.elapsed())
    }

    fn warn_limiting(&self, region: &str, what: &'static str) {
        if let Some(suppressed) = self.limiting.ready() {
            tracing::warn!(
                region,
                suppressed,
                "the upstream rate limit is limiting calls to Cognito: attempts are {what} (see cognito_facade_upstream_rate_* metrics)"
            );
        }
    }
}

/// Gives `quota`'s turns to the calls waiting in their flows, one at a
/// time as the limiter (the fleet's or this replica's) has them, until no
/// call waits.
async fn dispatch(inner: Arc<QuotaState>, quota: Arc<RegionQuota>) {
    loop {
        match inner.take(&quota, inner.config.queue_timeout).await {
            Turn::Go(wait) => {
                lock(&quota.fair).next_turn = Some(Instant::now() + wait);
                tokio::time::sleep(wait).await;
                // A turn nobody waits for any more (their callers gave up)
                // is lost: at most one a dispatcher.
                lock(&quota.fair).grant();
            }
            Turn::Refused(after) => {
                let most = inner.config.queue_timeout.max(Duration::from_millis(1));
                tokio::time::sleep(after.clamp(Duration::from_millis(1), most)).await;
            }
        }
        let mut fair = lock(&quota.fair);
        if fair.is_empty() {
            fair.dispatching = false;
            return;
        }
    }
}

/// Reports the turns `quota`'s own limiter gave to the fleet's, every
/// [`REPORT_INTERVAL`] while there are any.
async fn report(inner: Weak<QuotaState>, quota: Arc<RegionQuota>) {
    loop {
        tokio::time::sleep(REPORT_INTERVAL).await;
        let turns = quota.unreported.swap(0, Ordering::AcqRel);
        if turns == 0 {
            quota.reporting.store(false, Ordering::Release);
            // A turn counted between the swap and the store finds the flag
            // set and leaves it to this task.
            if quota.unreported.load(Ordering::Acquire) == 0
                || quota.reporting.swap(true, Ordering::AcqRel)
            {
                return;
            }
            continue;
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let (Some(store), Some(key)) = (&inner.store, &quota.key) else {
            return;
        };
        inner.tell(store, &quota, key, ScriptOp::Spent(turns)).await;
    }
}

/// Announces this replica every [`ANNOUNCE_INTERVAL`] while the limiter
/// lives, keeping the fleet's size as Redis last told it.
async fn announce(inner: Weak<QuotaState>) {
    let mut ticks = tokio::time::interval(ANNOUNCE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ttl = ANNOUNCE_TTL.as_millis().to_string();
    loop {
        ticks.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let Some(store) = &inner.store else {
            return;
        };
        let key = store.key_name("upstream rate limit replicas", "m");
        let mut call = inner.announce.0.call();
        call.key(&key).arg(store.replica()).arg(ttl.as_str());
        // In the background, with no caller waiting, on the background's
        // own breaker: more time than a call's Redis budget, so a Redis too
        // slow for calls still tells this replica the fleet's size.
        let Some(size) = store
            .run(Op::Announce, Lane::Background, BACKGROUND_BUDGET, &call)
            .await
            .and_then(AnnounceScript::reply)
        else {
            continue;
        };
        inner.fleet_size.store(size, Ordering::Relaxed);
        metrics::gauge!(FLEET_REPLICAS).set(f64::from(size));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_for_every_region_and_by_region() {
        let limits: RateLimits = "40".parse().unwrap();
        assert_eq!(limits.for_region("eu-west-1"), Some(40.0));
        let limits: RateLimits = "eu-west-1=40, us-east-1=2.5".parse().unwrap();
        assert_eq!(limits.for_region("eu-west-1"), Some(40.0));
        assert_eq!(limits.for_region("us-east-1"), Some(2.5));
        assert_eq!(limits.for_region("ap-south-1"), None);
        let limits: RateLimits = "10,eu-west-1=40".parse().unwrap();
        assert_eq!(limits.for_region("ap-south-1"), Some(10.0));
        assert_eq!(limits.to_string(), "10,eu-west-1=40");
    }

    #[test]
    fn bad_limits_are_refused() {
        for bad in [
            "",
            "0",
            "-1",
            "0.001",
            "NaN",
            "inf",
            "fast",
            "eu-west-1=",
            "nowhere=4",
            "4,5",
            "eu-west-1=1,eu-west-1=2",
        ] {
            assert!(bad.parse::<RateLimits>().is_err(), "{bad:?}");
        }
    }
}
