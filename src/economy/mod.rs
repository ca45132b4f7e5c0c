//! Upstream-call economy: concurrent identical calls share one Cognito call
//! (single flight), and an opt-in cache answers repeats for a short TTL.
//!
//! Both are keyed by the token's MAC (`crate::base::expiring`), or for a user
//! named by pool and username, by the MAC of those in a key space of their
//! own (`Subject::keyed`): the token or username itself is never a map key
//! and never kept.
//!
//! Layer 5, above `upstream`.
//!
//! Files, lowest first: this one (the maps, the ticket), `leader` (what a
//! flight's outcome teaches them).

mod leader;

use self::leader::cut;
pub(crate) use self::leader::{KeptCopy, Leader};

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, OnceLock},
    task::{Context, Poll, ready},
    time::{Duration, Instant, SystemTime},
};

use opentelemetry::trace::SpanContext;
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::{
    base::expiring::{ExpiringMap, TokenKey, TokenKeyer, lock},
    base::metric_names,
    base::telemetry::Every,
    error::{Error, KeptAnswer, UpstreamError, UpstreamErrorKind},
    token::user::Subject,
    upstream::Answer,
};

/// The outcome every waiter of one flight receives.
pub(crate) type Outcome = Result<Answer, Error>;

/// The span of a flight's upstream call, once its leader has started it: its
/// followers' spans link to it.
pub(crate) type FlightSpan = Arc<OnceLock<SpanContext>>;

/// A flight in the map: its outcome to wait for, and its upstream span.
type InFlight = (watch::Receiver<Option<Outcome>>, FlightSpan);

/// Default bound on cached answers: a few hundred bytes each, so at most a
/// few MiB.
pub const DEFAULT_CACHE_MAX_ENTRIES: usize = 10_000;

/// At most one "serving stale answers" warning per this long: an outage
/// stays visible in the logs.
const STALE_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Default lifetime of a remembered refusal: a revoked token sent again and
/// again costs one call to Cognito a minute, at most.
pub const DEFAULT_REFUSAL_TTL: Duration = Duration::from_secs(60);

/// Single flight, cache and refusal memory settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EconomyConfig {
    /// Whether concurrent identical calls share one upstream call.
    pub coalesce: bool,
    /// How long a success may be served from the cache; `None` turns it off.
    pub cache_ttl: Option<Duration>,
    /// Most cached answers (and, apart, most remembered refusals); the
    /// oldest go first.
    pub cache_max_entries: usize,
    /// How long Cognito's definitive refusals of a token are remembered
    /// (never past its `exp`); `None` turns refusal memory off.
    pub refusal_ttl: Option<Duration>,
    /// How long a successful answer is kept past its freshness (`cache_ttl`,
    /// or none), never past the token's `exp`, to stand in while Cognito is
    /// unavailable; `None` turns it off.
    pub stale_if_error: Option<Duration>,
}

impl Default for EconomyConfig {
    /// The documented defaults: single flight on, the cache off, refusals
    /// remembered for a minute.
    fn default() -> Self {
        Self {
            coalesce: true,
            cache_ttl: None,
            cache_max_entries: DEFAULT_CACHE_MAX_ENTRIES,
            refusal_ttl: Some(DEFAULT_REFUSAL_TTL),
            stale_if_error: None,
        }
    }
}

/// Shared by every call of the service.
pub(crate) struct Economy {
    config: EconomyConfig,
    keyer: TokenKeyer,
    flights: Mutex<HashMap<TokenKey, InFlight>>,
    cache: ExpiringMap<Answer>,
    /// Cognito's definitive refusals, remembered.
    refusals: ExpiringMap<Error>,
    /// Answers kept for `--stale-if-error`, with when Cognito gave them.
    kept: ExpiringMap<(Answer, SystemTime)>,
    /// Tokens Cognito refused definitively (here, or as the fleet told),
    /// until their `exp` (a named user's, for a few minutes): nothing is
    /// cached or kept for them again meanwhile.
    revoked: ExpiringMap<()>,
    /// The tokens this replica holds copies for, by the key of their fleet
    /// tag (what a revocation notice names), for as long as the copies
    /// last: the token's key here, and its revocation's horizon and `exp`.
    by_tag: ExpiringMap<(TokenKey, Duration, Option<SystemTime>)>,
    /// Since when Cognito has been unavailable (none since its last
    /// answer), and at most one warning per [`STALE_WARN_INTERVAL`].
    unavailable_since: Mutex<Option<Instant>>,
    stale_warning: Every,
    /// The cache-hit and coalesced counters, resolved from the recorder on
    /// first use rather than looked up on every call.
    cache_hits: OnceLock<metrics::Counter>,
    coalesced: OnceLock<metrics::Counter>,
}

impl std::fmt::Debug for Economy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Economy")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// How the caller's answer was obtained.
#[derive(Debug)]
pub(crate) enum Ticket {
    /// From the cache.
    Cached(Answer),
    /// Cognito's remembered refusal of the token.
    Remembered(Error),
    /// Another call for the same token is in flight: wait for its outcome
    /// (and link to its upstream span).
    Follow(watch::Receiver<Option<Outcome>>, FlightSpan, TokenKey),
    /// This call leads: run the upstream call with [`Leader::run`].
    Lead(Leader),
}

impl Economy {
    /// An economy keying tokens with `keyer`.
    pub(crate) fn new(config: EconomyConfig, keyer: TokenKeyer) -> Arc<Self> {
        Arc::new(Self {
            config,
            keyer,
            flights: Mutex::new(HashMap::new()),
            cache: ExpiringMap::new(config.cache_max_entries),
            refusals: ExpiringMap::new(config.cache_max_entries),
            kept: ExpiringMap::new(if config.stale_if_error.is_some() {
                config.cache_max_entries
            } else {
                0
            }),
            revoked: ExpiringMap::new(copies_held(&config)),
            by_tag: ExpiringMap::new(copies_held(&config)),
            unavailable_since: Mutex::new(None),
            stale_warning: Every::new(STALE_WARN_INTERVAL),
            cache_hits: OnceLock::new(),
            coalesced: OnceLock::new(),
        })
    }

    fn key(&self, subject: &Subject) -> TokenKey {
        self.keyer.key(subject.keyed())
    }

    /// Whether answers or refusals are remembered (then a token's `exp`
    /// matters).
    pub(crate) fn remembers(&self) -> bool {
        self.config.cache_ttl.is_some()
            || self.config.refusal_ttl.is_some()
            || self.config.stale_if_error.is_some()
    }

    /// Decides how the call for `subject` (a token's owner, or a user named
    /// by pool and username) gets its answer. An outcome it leads to is
    /// remembered (a success in the cache, a definitive refusal in refusal
    /// memory) until its TTL ends or `expires_at` (the token's `exp`, asked
    /// for only when this call leads; a named user has none), whichever
    /// comes first.
    pub(crate) fn ticket(
        self: &Arc<Self>,
        subject: &Subject,
        expires_at: impl FnOnce() -> Option<SystemTime>,
    ) -> Ticket {
        if !self.config.coalesce && !self.remembers() {
            return Ticket::Lead(self.leader(None, None, subject));
        }
        let key = self.key(subject);
        if self.config.cache_ttl.is_some()
            && let Some(answer) = self.cache.get(&key, Instant::now())
        {
            self.cache_hits
                .get_or_init(|| metrics::counter!(metric_names::CACHE_HITS))
                .increment(1);
            return Ticket::Cached(answer);
        }
        if self.config.refusal_ttl.is_some()
            && let Some(refusal) = self.refusals.get(&key, Instant::now())
        {
            return Ticket::Remembered(refusal);
        }
        if !self.config.coalesce {
            return Ticket::Lead(self.leader(Some(key), expires_at(), subject));
        }
        let mut flights = lock(&self.flights);
        if let Some((receiver, span)) = flights.get(&key) {
            self.coalesced
                .get_or_init(|| metrics::counter!(metric_names::COALESCED))
                .increment(1);
            return Ticket::Follow(receiver.clone(), Arc::clone(span), key);
        }
        let leader = self.leader(Some(key), expires_at(), subject);
        flights.insert(key, (leader.sender.subscribe(), Arc::clone(&leader.span)));
        Ticket::Lead(leader)
    }

    /// Keeps `answer` (given by Cognito at `given`) for `lifetime`.
    fn keep(&self, key: TokenKey, answer: &Answer, given: SystemTime, lifetime: Duration) {
        if lifetime.is_zero() {
            return;
        }
        self.kept
            .insert(key, (answer.clone(), given), Instant::now() + lifetime);
        metrics::gauge!(metric_names::KEPT_ANSWERS).set(self.kept.len() as f64);
    }

    /// The token under `key` is revoked until `until`: its copies here go,
    /// and none is made again while the mark lasts.
    fn revoke(&self, key: TokenKey, until: Instant) {
        if copies_held(&self.config) == 0 {
            return;
        }
        self.cache.remove(&key);
        self.kept.remove(&key);
        self.revoked.insert(key, (), until);
        metrics::gauge!(metric_names::KEPT_ANSWERS).set(self.kept.len() as f64);
        metrics::gauge!(metric_names::REVOKED_TOKENS).set(self.revoked.len() as f64);
    }

    /// Another replica told the fleet that Cognito refused the token whose
    /// fleet tag is `tag` definitively: this replica's copies go. A tag it
    /// holds nothing for is nothing to it.
    pub(crate) fn heard_revoked(&self, tag: &str) {
        let now = Instant::now();
        if let Some(((key, horizon, exp), _)) = self.by_tag.take(&self.keyer.key(tag), now) {
            self.revoke(key, now + cut(horizon, [exp, None]));
        }
    }

    /// `outcome`, or, when it says Cognito is unavailable and an answer is
    /// kept for the token, that answer marked stale (with a warning, at
    /// most one per [`STALE_WARN_INTERVAL`], saying for how long).
    fn stale_if_unavailable(&self, key: TokenKey, outcome: Outcome) -> Outcome {
        let Err(Error::Upstream(up)) = &outcome else {
            return outcome;
        };
        let reason = up.kind.status().1;
        self.stand_in(key, outcome, reason)
    }

    /// For a caller whose deadline passed before its flight landed (Cognito
    /// did not answer in time for it): the token's kept answer, marked
    /// stale, or `DEADLINE_EXCEEDED`.
    pub(crate) fn stale_at_deadline(&self, key: TokenKey) -> Outcome {
        self.stand_in(key, Err(UpstreamError::deadline().into()), "deadline")
    }

    fn stand_in(&self, key: TokenKey, outcome: Outcome, reason: &'static str) -> Outcome {
        let Err(Error::Upstream(up)) = &outcome else {
            return outcome;
        };
        if up.kind.kept_answer() != KeptAnswer::StandsIn || self.config.stale_if_error.is_none() {
            return outcome;
        }
        let since = self.unavailable_since();
        let kept = self.kept.get(&key, Instant::now());
        metrics::gauge!(metric_names::KEPT_ANSWERS).set(self.kept.len() as f64);
        let Some((answer, given)) = kept else {
            return outcome;
        };
        self.warn_stale(since, reason);
        // Not this call's request: Cognito's request id is not passed on.
        Ok(Answer {
            kept_since: Some(given),
            request_id: None,
            ..answer
        })
    }

    /// When this replica first saw Cognito unavailable, since it last
    /// answered.
    fn unavailable_since(&self) -> Instant {
        *lock(&self.unavailable_since).get_or_insert_with(Instant::now)
    }

    /// Serving a kept answer says so, at most once per
    /// [`STALE_WARN_INTERVAL`], with how long Cognito has been unavailable
    /// and why (`reason`: the error's status, `deadline` for a caller's
    /// deadline, or `fleet` for a kept answer another replica's flight stood
    /// in).
    fn warn_stale(&self, since: Instant, reason: &'static str) {
        if let Some(suppressed) = self.stale_warning.ready() {
            tracing::warn!(
                unavailable_for_s = since.elapsed().as_secs(),
                reason,
                suppressed,
                "Cognito is unavailable: serving kept answers (--stale-if-error)"
            );
        }
    }

    fn leader(
        self: &Arc<Self>,
        key: Option<TokenKey>,
        token_expires: Option<SystemTime>,
        subject: &Subject,
    ) -> Leader {
        let (sender, _) = watch::channel(None);
        Leader {
            economy: Arc::clone(self),
            key,
            tag: None,
            token_expires,
            revocation_horizon: subject.revocation_horizon(),
            sender,
            span: FlightSpan::default(),
        }
    }
}

/// How many tokens' copies this replica may hold (0 when it keeps none):
/// the bound on its revocation marks too.
fn copies_held(config: &EconomyConfig) -> usize {
    if config.cache_ttl.is_some() || config.stale_if_error.is_some() {
        config.cache_max_entries
    } else {
        0
    }
}

/// The upstream call of a flight, driven by its leader. See [`Leader::run`].
pub(crate) struct Flight {
    leader: Option<Leader>,
    call: Option<Pin<Box<dyn Future<Output = Outcome> + Send>>>,
}

impl std::fmt::Debug for Flight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flight").finish_non_exhaustive()
    }
}

impl Future for Flight {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let Some(call) = self.call.as_mut() else {
            return Poll::Ready(Err(lost_flight()));
        };
        let outcome = ready!(call.as_mut().poll(cx));
        self.call = None;
        match self.leader.take() {
            Some(leader) => Poll::Ready(leader.finish(outcome)),
            None => Poll::Ready(outcome),
        }
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        let (Some(leader), Some(call)) = (self.leader.take(), self.call.take()) else {
            return;
        };
        // The leader gave up before the call landed: finish it in the
        // background, bounded by the call timeout, for the followers. Outside
        // a runtime (the process is exiting) nobody is left to answer.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(
                async move {
                    let outcome = call.await;
                    let _ = leader.finish(outcome);
                }
                .in_current_span(),
            );
        }
    }
}

/// What a caller that does not answer from the cache waits on.
#[derive(Debug)]
pub(crate) enum Wait {
    /// Another caller's flight.
    Follow(watch::Receiver<Option<Outcome>>),
    /// This caller's own flight, which it drives.
    Lead(Flight),
}

impl Wait {
    /// The flight's outcome.
    pub(crate) async fn outcome(self) -> Outcome {
        match self {
            Self::Follow(receiver) => follow(receiver).await,
            Self::Lead(flight) => flight.await,
        }
    }
}

/// Waits for another caller's flight to land.
async fn follow(mut receiver: watch::Receiver<Option<Outcome>>) -> Outcome {
    match receiver.wait_for(Option::is_some).await {
        Ok(outcome) => outcome.clone().unwrap_or_else(|| Err(lost_flight())),
        Err(_) => Err(lost_flight()),
    }
}

fn lost_flight() -> Error {
    UpstreamError::new(UpstreamErrorKind::Unavailable).into()
}

#[cfg(test)]
mod tests;
