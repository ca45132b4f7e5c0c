//! A breaker that skips Redis while it fails: it opens when, over the last
//! few seconds, enough operations failed and they are a large enough share
//! of all (a windowed failure ratio, so a busy store with a few slow replies
//! stays in use and an idle one that failed a handful of times in a row
//! does not stay open), and closes after a pause.

use std::{
    fmt,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::watch;

use crate::{
    base::expiring::lock, base::metric_names::FLEET_BREAKER_OPEN_SECONDS, base::telemetry::Every,
};

/// The window, in buckets of one second.
const WINDOW_BUCKETS: usize = 5;
/// Failures in the window below which the breaker never opens.
const MIN_FAILURES: u32 = 5;
/// The share of failures in the window that opens it.
const FAILURE_RATIO: f64 = 0.5;
/// How long it stays open.
pub(crate) const BREAKER_OPEN: Duration = Duration::from_secs(5);
/// Least time between two warnings.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Which work a breaker guards: calls (within `--redis-timeout`) or the
/// background (announcements, shared outcomes, unsubscribes, throttles),
/// each with its own, so a Redis too slow for calls still serves the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    Calls,
    Background,
}

/// Counts of one second.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    second: u64,
    ok: u32,
    failed: u32,
}

pub(crate) struct Breaker {
    lane: Lane,
    epoch: Instant,
    window: Mutex<[Bucket; WINDOW_BUCKETS]>,
    open_until_ms: AtomicU64,
    /// Bumped at each opening, so followers stop waiting on a dead store.
    opened: watch::Sender<u64>,
    warned: Every,
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("lane", &self.lane)
            .field("closed", &self.closed())
            .finish_non_exhaustive()
    }
}

impl Breaker {
    pub(crate) fn new(lane: Lane) -> Self {
        Self {
            lane,
            epoch: Instant::now(),
            window: Mutex::new([Bucket::default(); WINDOW_BUCKETS]),
            open_until_ms: AtomicU64::new(0),
            opened: watch::Sender::new(0),
            warned: Every::new(WARN_INTERVAL),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(crate) fn closed(&self) -> bool {
        self.now_ms() >= self.open_until_ms.load(Ordering::Relaxed)
    }

    /// Tells of each opening.
    pub(crate) fn openings(&self) -> watch::Receiver<u64> {
        self.opened.subscribe()
    }

    pub(crate) fn success(&self) {
        self.record(false);
    }

    /// Counts a failure of `op`; opens the breaker if the window says so.
    pub(crate) fn failure(&self, op: &'static str, what: &dyn fmt::Display) {
        if self.record(true) {
            self.open(op, what);
        }
    }

    /// Counts an outcome; whether the window now calls for opening.
    fn record(&self, failed: bool) -> bool {
        let second = self.now_ms() / 1000;
        let mut window = lock(&self.window);
        let bucket = &mut window[(second as usize) % WINDOW_BUCKETS];
        if bucket.second != second {
            *bucket = Bucket {
                second,
                ..Bucket::default()
            };
        }
        if !failed {
            bucket.ok = bucket.ok.saturating_add(1);
            return false;
        }
        bucket.failed = bucket.failed.saturating_add(1);
        let recent = window
            .iter()
            .filter(|b| second.saturating_sub(b.second) < WINDOW_BUCKETS as u64);
        let (ok, failed) = recent.fold((0u32, 0u32), |(ok, failed), b| {
            (ok.saturating_add(b.ok), failed.saturating_add(b.failed))
        });
        let open = failed >= MIN_FAILURES
            && f64::from(failed) >= FAILURE_RATIO * (f64::from(ok) + f64::from(failed))
            && self.closed();
        if open {
            *window = [Bucket::default(); WINDOW_BUCKETS];
        }
        open
    }

    fn open(&self, op: &'static str, what: &dyn fmt::Display) {
        let open_ms = u64::try_from(BREAKER_OPEN.as_millis()).unwrap_or(u64::MAX);
        self.open_until_ms
            .store(self.now_ms() + open_ms, Ordering::Relaxed);
        self.opened.send_modify(|n| *n += 1);
        if self.lane == Lane::Calls {
            metrics::counter!(FLEET_BREAKER_OPEN_SECONDS).increment(BREAKER_OPEN.as_secs());
        }
        if let Some(suppressed) = self.warned.ready() {
            tracing::warn!(
                op,
                lane = ?self.lane,
                error = %what,
                open_for = ?BREAKER_OPEN,
                suppressed,
                "Redis is failing; going on without the fleet store for a while"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_failures_among_many_successes_keep_it_closed() {
        let breaker = Breaker::new(Lane::Calls);
        for _ in 0..20 {
            breaker.success();
        }
        for _ in 0..MIN_FAILURES + 2 {
            breaker.failure("get", &"slow");
        }
        assert!(breaker.closed(), "7 of 27 failed");
    }

    #[test]
    fn a_failing_share_opens_it_and_tells_the_waiters() {
        let breaker = Breaker::new(Lane::Calls);
        let openings = breaker.openings();
        breaker.success();
        for _ in 0..MIN_FAILURES - 1 {
            breaker.failure("get", &"refused");
        }
        assert!(breaker.closed(), "fewer than the least number of failures");
        breaker.failure("get", &"refused");
        assert!(!breaker.closed());
        assert!(openings.has_changed().unwrap());
    }

    #[test]
    fn the_lanes_are_apart() {
        let calls = Breaker::new(Lane::Calls);
        let background = Breaker::new(Lane::Background);
        for _ in 0..MIN_FAILURES {
            calls.failure("join", &"timed out");
        }
        assert!(!calls.closed());
        assert!(background.closed());
    }
}
