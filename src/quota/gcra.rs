//! The upstream rate limiter's algorithm, once in Rust (a replica alone) and
//! once as a Redis Lua script (the fleet, on Redis's own clock): GCRA, the
//! generic cell rate algorithm, with reservations (a caller may take a turn
//! a little in the future and wait for it) and an adaptive rate that halves
//! when Cognito throttles and climbs back linearly.
//!
//! Both read the same [`Params`], keep the same state (the theoretical
//! arrival time, and the rate and time of the last decrease) and compute in
//! the same units (microseconds, as `f64`, exact below 2^53), so they agree
//! to the microsecond; `tests/fixtures/gcra-cases.json` runs both on the same
//! cases. See <https://en.wikipedia.org/wiki/Generic_cell_rate_algorithm>.

use std::time::Duration;

const MICROS_PER_SECOND: f64 = 1_000_000.0;

/// How the rate falls under throttling and recovers from it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// The configured limit, in turns per second.
    pub limit: f64,
    /// Turns that may be taken at once after a quiet spell (at least 1).
    pub burst: f64,
    /// The rate is multiplied by this on throttling (0 < factor < 1).
    pub decrease: f64,
    /// The lowest the rate falls, as a fraction of the limit: the fleet keeps
    /// probing, so it notices when the throttling ends.
    pub floor: f64,
    /// At most one decrease per this long: one burst of throttled attempts
    /// is one signal, not many.
    pub spacing: Duration,
    /// The time the rate takes to climb from zero back to the limit
    /// (linearly) once the throttling stops.
    pub recovery: Duration,
    /// The longest wait any caller is given (`--upstream-queue-timeout`):
    /// with the burst and the slowest spacing, how far ahead of the clock a
    /// writer can have reserved. State further ahead is not believed.
    pub horizon: Duration,
}

impl Params {
    /// The documented behaviour for `limit` turns per second: a burst of a
    /// tenth of a second's worth (at least one), halving on throttling at
    /// most every 200 ms down to a twentieth of the limit, and five seconds
    /// to climb from zero back to the limit.
    pub fn for_limit(limit: f64) -> Self {
        Self {
            limit,
            burst: (limit / 10.0).ceil().max(1.0),
            decrease: 0.5,
            floor: 0.05,
            spacing: Duration::from_millis(200),
            recovery: Duration::from_secs(5),
            horizon: Duration::from_millis(200),
        }
    }

    /// The burst's tolerance, fixed in time at the configured limit (µs): a
    /// lowered rate spaces turns further apart but never lets more through
    /// at once.
    fn tolerance(&self) -> f64 {
        MICROS_PER_SECOND / self.limit * (self.burst - 1.0)
    }

    /// The furthest ahead of the clock any writer can have reserved (µs).
    fn furthest_ahead(&self) -> f64 {
        micros(self.horizon) + self.tolerance() + MICROS_PER_SECOND / (self.floor * self.limit)
    }

    /// [`SCRIPT`]'s arguments: the operation and its argument, then these
    /// parameters.
    pub fn script_args(&self, op: ScriptOp) -> Vec<String> {
        let (name, argument) = match op {
            ScriptOp::Take(max_wait) => ("take", micros(max_wait).floor()),
            ScriptOp::Throttle => ("throttle", 0.0),
            ScriptOp::Spent(turns) => ("spent", f64::from(turns)),
        };
        vec![
            name.to_owned(),
            argument.to_string(),
            self.limit.to_string(),
            self.burst.to_string(),
            self.decrease.to_string(),
            (self.floor * self.limit).to_string(),
            micros(self.spacing).to_string(),
            micros(self.recovery).to_string(),
            micros(self.horizon).to_string(),
        ]
    }
}

/// What [`SCRIPT`] is asked to do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScriptOp {
    /// Take a turn that comes within this wait ([`Gcra::take`]).
    Take(Duration),
    /// Cognito throttled ([`Gcra::throttled`]).
    Throttle,
    /// Count this many turns given elsewhere ([`Gcra::spent`]).
    Spent(u32),
}

/// What the limiter answered a caller.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Turn {
    /// The turn is reserved: go after waiting this long (often zero).
    Go(Duration),
    /// No turn within the caller's bound; one is expected after this long.
    Refused(Duration),
}

/// One limiter's state, for a replica alone (the script keeps the same in a
/// Redis hash).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gcra {
    /// The theoretical arrival time of the next turn, µs; 0 when unused.
    tat: f64,
    /// The rate set by the last decrease and when (µs); `None`: the limit.
    decreased: Option<(f64, f64)>,
}

impl Gcra {
    /// A limiter in the given state (as a Redis hash may hold it): the
    /// theoretical arrival time, and the last decrease's rate and time.
    pub fn from_state(tat: f64, decreased: Option<(f64, f64)>) -> Self {
        Self { tat, decreased }
    }

    /// The state clamped to what could have been written by `now`, as the
    /// script clamps what it reads: a decrease in the future is not
    /// believed (the limit holds), its rate lies between the floor and the limit, and a theoretical arrival
    /// time further ahead than any caller could have reserved starts afresh.
    fn clamp(&mut self, now: f64, params: &Params) {
        if self.tat.is_nan() || self.tat > now + params.furthest_ahead() {
            self.tat = 0.0;
        }
        self.decreased = self.decreased.and_then(|(rate, at)| {
            let floor = params.floor * params.limit;
            (!rate.is_nan() && at <= now).then(|| (rate.clamp(floor, params.limit), at))
        });
    }

    /// The effective rate at `now` (µs): the limit, or the last decrease's
    /// rate plus its recovery since.
    pub fn rate(&self, now: f64, params: &Params) -> f64 {
        match self.decreased {
            None => params.limit,
            Some((rate, at)) => {
                let climbed = params.limit * (now - at).max(0.0) / micros(params.recovery);
                (rate + climbed).min(params.limit)
            }
        }
    }

    /// Takes a turn at `now` (µs) if it comes within `max_wait`.
    pub fn take(&mut self, now: f64, max_wait: Duration, params: &Params) -> Turn {
        self.clamp(now, params);
        let interval = MICROS_PER_SECOND / self.rate(now, params);
        let tolerance = params.tolerance();
        let tat = self.tat.max(now);
        let wait = (tat - tolerance - now).max(0.0);
        if wait > micros(max_wait) {
            return Turn::Refused(from_micros(wait));
        }
        self.tat = tat + interval;
        Turn::Go(from_micros(wait))
    }

    /// Counts `turns` that another limiter gave at `now` (µs): the fleet's
    /// turns in a replica's own limiter, which decides when the fleet's
    /// cannot answer in time, and the turns a replica's own limiter gave in
    /// the fleet's. Each then leaves only the rest of its rate to its own
    /// callers. It refuses nothing and runs up at most one turn of debt
    /// past the longest wait: when the other stops giving turns, this one
    /// gives its first within one turn of the longest wait.
    pub fn spent(&mut self, now: f64, turns: u32, params: &Params) {
        self.clamp(now, params);
        let interval = MICROS_PER_SECOND / self.rate(now, params);
        let most = now + params.tolerance() + micros(params.horizon) + interval;
        let tat = (self.tat.max(now) + f64::from(turns) * interval).min(most);
        self.tat = self.tat.max(tat);
    }

    /// Cognito throttled at `now` (µs): the rate falls, unless it just did.
    /// Returns the lowered rate, or `None` if it had just fallen.
    pub fn throttled(&mut self, now: f64, params: &Params) -> Option<f64> {
        self.clamp(now, params);
        if let Some((_, at)) = self.decreased
            && now - at < micros(params.spacing)
        {
            return None;
        }
        let current = self.rate(now, params);
        let lowered = (current * params.decrease).max(params.floor * params.limit);
        self.decreased = Some((lowered, now));
        Some(lowered)
    }
}

/// The same algorithm on Redis, on Redis's clock (`TIME`), in one hash per
/// region and limit. KEYS: the hash. ARGV: [`Params::script_args`]. Returns
/// {1, wait µs, rate ×1000} for a turn, {0, retry-after µs, rate ×1000} for
/// a refusal, {2, 0, rate ×1000} for a throttle and {3, 0, rate ×1000} for
/// turns spent elsewhere.
pub const SCRIPT: &str = include_str!("gcra.lua");

/// A duration in µs.
pub(crate) fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * MICROS_PER_SECOND
}

/// µs as a duration, rounded up to the microsecond (as the script returns
/// them), so both implementations answer the same.
pub(crate) fn from_micros(micros: f64) -> Duration {
    Duration::from_micros(micros.ceil().max(0.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: f64 = 1000.0;

    #[test]
    fn a_quiet_limiter_allows_its_burst_then_spaces_turns() {
        let params = Params::for_limit(10.0);
        assert_eq!(params.burst, 1.0);
        let params = Params {
            burst: 3.0,
            ..params
        };
        // Fixed at the limit: 2 × 100 ms.
        assert_eq!(params.tolerance(), 200_000.0);
        let mut gcra = Gcra::default();
        let now = 1_700_000_000_000_000.0;
        for _ in 0..3 {
            assert_eq!(
                gcra.take(now, Duration::ZERO, &params),
                Turn::Go(Duration::ZERO)
            );
        }
        assert_eq!(
            gcra.take(now, Duration::ZERO, &params),
            Turn::Refused(Duration::from_millis(100))
        );
        assert_eq!(
            gcra.take(now, Duration::from_millis(150), &params),
            Turn::Go(Duration::from_millis(100))
        );
    }

    #[test]
    fn turns_spent_elsewhere_leave_this_limiter_only_the_rest_of_its_share() {
        // 10/s, burst 1, a 200 ms horizon: turns 100 ms apart.
        let params = Params::for_limit(10.0);
        let mut gcra = Gcra::default();
        let now = 1_000.0 * MS;
        // The fleet gave this replica 2 turns within 100 ms: its share of
        // those 100 ms and the next are spent.
        gcra.spent(now, 1, &params);
        gcra.spent(now + 50.0 * MS, 1, &params);
        assert_eq!(
            gcra.take(now + 100.0 * MS, Duration::ZERO, &params),
            Turn::Refused(Duration::from_millis(100))
        );
        assert_eq!(
            gcra.take(now + 200.0 * MS, Duration::ZERO, &params),
            Turn::Go(Duration::ZERO)
        );
        // However much the fleet gave, the debt stops one turn past the
        // longest wait, and the first turn of its own comes within it.
        gcra.spent(now + 300.0 * MS, 100, &params);
        let later = now + 300.0 * MS;
        assert_eq!(
            gcra.take(later, Duration::from_millis(200), &params),
            Turn::Refused(Duration::from_millis(300))
        );
        assert_eq!(
            gcra.take(later + 100.0 * MS, Duration::from_millis(200), &params),
            Turn::Go(Duration::from_millis(200))
        );
    }

    #[test]
    fn throttling_halves_the_rate_once_per_spacing_and_it_climbs_back() {
        let params = Params::for_limit(40.0);
        let mut gcra = Gcra::default();
        let now = 5_000.0 * MS;
        assert_eq!(gcra.throttled(now, &params), Some(20.0));
        assert_eq!(gcra.throttled(now + 100.0 * MS, &params), None);
        let lowered = gcra.throttled(now + 200.0 * MS, &params).unwrap();
        assert!(
            (lowered - (20.0 + 40.0 * 0.2 / 5.0) / 2.0).abs() < 1e-9,
            "{lowered}"
        );
        for step in 2..30 {
            assert!(
                gcra.throttled(now + f64::from(step) * 200.0 * MS, &params)
                    .is_some()
            );
        }
        let at = now + 29.0 * 200.0 * MS;
        assert_eq!(gcra.rate(at, &params), 2.0, "the floor");
        assert_eq!(gcra.rate(at + 2_500.0 * MS, &params), 22.0);
        assert_eq!(gcra.rate(at + 5_000.0 * MS, &params), 40.0);
    }

    #[test]
    fn state_ahead_of_the_clock_is_clamped_and_a_low_rate_goes_through() {
        let params = Params::for_limit(10.0);
        let now = 1_700_000_000_000_000.0;
        let hour = 3_600_000_000.0;
        let mut gcra = Gcra::from_state(now + hour, Some((0.0, now + hour)));
        for call in 0..5 {
            let at = now + f64::from(call) * 1_000_000.0;
            assert_eq!(
                gcra.take(at, Duration::ZERO, &params),
                Turn::Go(Duration::ZERO),
                "call {call}"
            );
        }
        let mut gcra = Gcra::from_state(f64::NAN, Some((f64::INFINITY, now)));
        assert_eq!(
            gcra.take(now, Duration::ZERO, &params),
            Turn::Go(Duration::ZERO)
        );
        assert_eq!(
            gcra.rate(now, &params),
            10.0,
            "a rate above the limit is the limit"
        );
    }

    #[test]
    fn a_decrease_never_widens_the_burst() {
        let params = Params {
            burst: 5.0,
            ..Params::for_limit(10.0)
        };
        let now = 1_700_000_000_000_000.0;
        let mut gcra = Gcra::default();
        assert_eq!(gcra.throttled(now, &params), Some(5.0));
        let went = (0..10)
            .filter(|_| matches!(gcra.take(now, Duration::ZERO, &params), Turn::Go(_)))
            .count();
        assert_eq!(went, 3, "400 ms of tolerance at 200 ms a turn");
    }

    #[test]
    fn every_argument_is_a_plain_number() {
        let args = Params::for_limit(0.5).script_args(ScriptOp::Take(Duration::from_millis(200)));
        assert_eq!(args[0], "take");
        for arg in &args[1..] {
            assert!(arg.parse::<f64>().is_ok(), "{arg}");
        }
    }
}
