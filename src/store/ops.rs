//! Operation accounting: every Redis operation is one [`Op`] with one
//! [`Outcome`], counted in `cognito_facade_fleet_redis_ops_total` through
//! handles resolved once (a dead Redis costs a call an atomic load and an
//! increment).

use std::sync::OnceLock;

use metrics::Counter;

use crate::base::metric_names::{FLEET_REDIS_OPS, FLEET_SKIPPED};

/// What a Redis operation was for (the metric's `op` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// The join script: the fleet's memory, a flight to follow, or the lease.
    Join,
    /// A follower's subscription to its flight's channel.
    Subscribe,
    /// A read of one value (the flight's result, the fleet's memory).
    Get,
    /// Taking the lease after a value that did not open.
    TakeOver,
    /// The finish script: the flight's outcome stored and published at once.
    Finish,
    /// The last follower of a channel leaving it.
    Unsubscribe,
    /// A turn, or a throttle, in the fleet's rate limiter.
    Quota,
    /// A replica announcing itself.
    Announce,
}

impl Op {
    const ALL: [Self; 8] = [
        Self::Join,
        Self::Subscribe,
        Self::Get,
        Self::TakeOver,
        Self::Finish,
        Self::Unsubscribe,
        Self::Quota,
        Self::Announce,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Join => "join",
            Self::Subscribe => "subscribe",
            Self::Get => "get",
            Self::TakeOver => "take_over",
            Self::Finish => "finish",
            Self::Unsubscribe => "unsubscribe",
            Self::Quota => "quota",
            Self::Announce => "announce",
        }
    }
}

/// How an operation ended (the metric's `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    Error,
    Timeout,
    /// `-READONLY`: the server is a replica (after a failover).
    ReadOnly,
    /// `-OOM`: the server is at `maxmemory` and evicts nothing.
    OutOfMemory,
}

impl Outcome {
    const ALL: [Self; 5] = [
        Self::Ok,
        Self::Error,
        Self::Timeout,
        Self::ReadOnly,
        Self::OutOfMemory,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Timeout => "timeout",
            Self::ReadOnly => "readonly",
            Self::OutOfMemory => "oom",
        }
    }
}

/// Why a call's lookup skipped the store (the `reason` label of
/// `cognito_facade_fleet_skipped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Skip {
    BreakerOpen,
    NotConnected,
    /// The server answered READONLY; a master is being looked for.
    ReadOnly,
}

/// The store's metric handles.
#[derive(Debug, Default)]
pub(crate) struct OpMetrics {
    skipped: [OnceLock<Counter>; 3],
    ops: [[OnceLock<Counter>; Outcome::ALL.len()]; Op::ALL.len()],
}

impl OpMetrics {
    pub(crate) fn skipped(&self, skip: Skip) {
        let (index, reason) = match skip {
            Skip::BreakerOpen => (0, "breaker_open"),
            Skip::NotConnected => (1, "not_connected"),
            Skip::ReadOnly => (2, "readonly"),
        };
        self.skipped[index]
            .get_or_init(|| metrics::counter!(FLEET_SKIPPED, "reason" => reason))
            .increment(1);
    }

    pub(crate) fn op(&self, op: Op, outcome: Outcome) {
        let o = Op::ALL.iter().position(|known| *known == op).unwrap_or(0);
        let r = Outcome::ALL
            .iter()
            .position(|known| *known == outcome)
            .unwrap_or(0);
        self.ops[o][r]
            .get_or_init(|| {
                metrics::counter!(FLEET_REDIS_OPS, "op" => op.label(), "outcome" => outcome.label())
            })
            .increment(1);
    }
}
