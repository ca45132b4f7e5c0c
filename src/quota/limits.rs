//! `--upstream-rate-limit` and the quota's other settings: the limits by
//! region as the flag spells them, the queue timeout and the fleet size
//! hint.

use std::{collections::BTreeMap, fmt, str::FromStr, time::Duration};

use crate::token::pools::is_region;

/// Default bound on an attempt's wait for its turn: long enough to smooth a
/// burst into the limit, short against a caller's usual deadline.
pub const DEFAULT_UPSTREAM_QUEUE_TIMEOUT: Duration = Duration::from_millis(200);

/// The lowest limit: the limiter spaces turns in microseconds.
const MIN_RATE: f64 = 0.01;

/// `--upstream-rate-limit`: attempts per second to Cognito, for every region
/// and by region.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RateLimits {
    /// The rate of every region without its own entry.
    pub every: Option<f64>,
    /// Rates by region.
    pub by_region: BTreeMap<String, f64>,
}

impl RateLimits {
    /// The limit of `region`, if it has one.
    pub fn for_region(&self, region: &str) -> Option<f64> {
        self.by_region.get(region).copied().or(self.every)
    }

    /// Whether no region is limited.
    pub fn is_empty(&self) -> bool {
        self.every.is_none() && self.by_region.is_empty()
    }
}

impl FromStr for RateLimits {
    type Err = String;

    /// Comma-separated `RATE` (every region) and `REGION=RATE` entries;
    /// a rate is a positive number of attempts per second (`0.5`, `40`).
    fn from_str(text: &str) -> Result<Self, String> {
        let mut limits = Self::default();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (region, rate) = match entry.split_once('=') {
                Some((region, rate)) => (Some(region.trim()), rate.trim()),
                None => (None, entry),
            };
            let rate: f64 = rate
                .parse()
                .ok()
                .filter(|rate: &f64| (MIN_RATE..=1e6).contains(rate))
                .ok_or_else(|| {
                    format!(
                        "{entry:?}: a rate is a number per second from {MIN_RATE} to a million, such as 40"
                    )
                })?;
            let duplicate = match region {
                None => limits.every.replace(rate).is_some(),
                Some(region) if is_region(region) => {
                    limits.by_region.insert(region.to_owned(), rate).is_some()
                }
                Some(region) => return Err(format!("{region:?} is not an AWS region name")),
            };
            if duplicate {
                return Err(format!("{entry:?}: a second rate for the same region"));
            }
        }
        if limits.is_empty() {
            return Err("expected RATE or REGION=RATE entries, such as 40 or eu-west-1=40".into());
        }
        Ok(limits)
    }
}

impl fmt::Display for RateLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let every = self.every.map(|rate| rate.to_string());
        let regions = self.by_region.iter().map(|(r, rate)| format!("{r}={rate}"));
        let entries: Vec<String> = every.into_iter().chain(regions).collect();
        f.write_str(&entries.join(","))
    }
}

/// The upstream rate limit's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaConfig {
    /// Limits by region; empty: no limit.
    pub limits: RateLimits,
    /// The longest an attempt waits for its turn.
    pub queue_timeout: Duration,
    /// The fleet's size this replica assumes until Redis tells it
    /// (`--fleet-size-hint`): its share of the limit without Redis.
    pub fleet_size_hint: u32,
}

impl Default for QuotaConfig {
    /// The documented defaults: no limit.
    fn default() -> Self {
        Self {
            limits: RateLimits::default(),
            queue_timeout: DEFAULT_UPSTREAM_QUEUE_TIMEOUT,
            fleet_size_hint: 1,
        }
    }
}
