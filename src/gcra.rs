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
        }
    }

    /// [`SCRIPT`]'s arguments: `op` (`take` or `throttle`), the wait bound
    /// in µs, then these parameters.
    pub fn script_args(&self, op: &str, max_wait: Duration) -> Vec<String> {
        vec![
            op.to_owned(),
            micros(max_wait).floor().to_string(),
            self.limit.to_string(),
            self.burst.to_string(),
            self.decrease.to_string(),
            (self.floor * self.limit).to_string(),
            micros(self.spacing).to_string(),
            micros(self.recovery).to_string(),
        ]
    }
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
        let interval = MICROS_PER_SECOND / self.rate(now, params);
        let tolerance = interval * (params.burst - 1.0);
        let tat = self.tat.max(now);
        let wait = (tat - tolerance - now).max(0.0);
        if wait > micros(max_wait) {
            return Turn::Refused(from_micros(wait));
        }
        self.tat = tat + interval;
        Turn::Go(from_micros(wait))
    }

    /// Cognito throttled at `now` (µs): the rate falls, unless it just did.
    /// Returns the lowered rate, or `None` if it had just fallen.
    pub fn throttled(&mut self, now: f64, params: &Params) -> Option<f64> {
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
/// region. KEYS: the hash. ARGV: [`Params::script_args`]. Returns {1, wait µs, rate ×1000} for a
/// turn, {0, retry-after µs, rate ×1000} for a refusal, and {2, 0, rate
/// ×1000} for a throttle. Times are kept as integers in `%.0f` and rates in
/// `%.17g` (Lua 5.1's `tostring` keeps 14 digits, and microseconds since the
/// epoch take 16). Before Redis 5, a script that reads `TIME` must ask for
/// its effects to be replicated (later versions always do).
pub const SCRIPT: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local max_wait = tonumber(ARGV[2])
local limit, burst = tonumber(ARGV[3]), tonumber(ARGV[4])
local decrease, floor = tonumber(ARGV[5]), tonumber(ARGV[6])
local spacing, recovery = tonumber(ARGV[7]), tonumber(ARGV[8])
local state = redis.call('HMGET', KEYS[1], 'tat', 'rate', 'at')
local tat, rate, at = tonumber(state[1]) or 0, tonumber(state[2]), tonumber(state[3])
local current = limit
if rate then
  current = math.min(limit, rate + limit * math.max(0, now - at) / recovery)
end
local function keep()
  local left = math.max(0, tat - now) / 1000
  redis.call('PEXPIRE', KEYS[1], math.ceil(left + recovery / 1000 + 1000))
end
if ARGV[1] == 'throttle' then
  if not (at and now - at < spacing) then
    current = math.max(floor, current * decrease)
    redis.call('HSET', KEYS[1], 'rate', string.format('%.17g', current),
      'at', string.format('%.0f', now))
    keep()
  end
  return {2, 0, math.floor(current * 1000)}
end
local interval = 1000000 / current
local tolerance = interval * (burst - 1)
tat = math.max(tat, now)
local wait = math.max(0, tat - tolerance - now)
if wait > max_wait then
  return {0, math.ceil(wait), math.floor(current * 1000)}
end
tat = tat + interval
redis.call('HSET', KEYS[1], 'tat', string.format('%.0f', tat))
keep()
return {1, math.ceil(wait), math.floor(current * 1000)}
";

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
    fn every_argument_is_a_plain_number() {
        let args = Params::for_limit(0.5).script_args("take", Duration::from_millis(200));
        assert_eq!(args[0], "take");
        for arg in &args[1..] {
            assert!(arg.parse::<f64>().is_ok(), "{arg}");
        }
    }
}
