//! A flight's leader: the one call that goes upstream for a key, and what
//! its outcome teaches the economy (the cache, refusal memory, kept answers,
//! revocation marks) before its followers get it.

use super::*;

/// The right (and duty) to make the upstream call for a key.
pub(crate) struct Leader {
    pub(super) economy: Arc<Economy>,
    pub(super) key: Option<TokenKey>,
    /// The token's fleet tag, with a fleet: a revocation notice names it.
    pub(super) tag: Option<String>,
    /// The token's `exp`: no cached answer outlives it.
    pub(super) token_expires: Option<SystemTime>,
    /// The longest a revocation of the subject lasts
    /// ([`Subject::revocation_horizon`]).
    pub(super) revocation_horizon: Duration,
    pub(super) sender: watch::Sender<Option<Outcome>>,
    pub(super) span: FlightSpan,
}

impl std::fmt::Debug for Leader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leader").finish_non_exhaustive()
    }
}

impl Leader {
    /// The token's key in this replica's maps; `None` when nothing is
    /// remembered or shared.
    pub(crate) fn key(&self) -> Option<TokenKey> {
        self.key
    }

    /// Names the token by its fleet tag: told that another replica saw it
    /// revoked, this replica drops its copies.
    pub(crate) fn share_as(&mut self, tag: &str) {
        self.tag = Some(tag.to_owned());
    }

    /// This replica's own copies of the token's answer, for the flight to
    /// drop when the fleet says the token was revoked.
    pub(crate) fn kept_copy(&self) -> KeptCopy {
        let until = Instant::now() + self.revoked_for();
        KeptCopy(self.key.map(|key| (Arc::clone(&self.economy), key, until)))
    }

    /// How long a revocation of the subject lasts: a token's until its
    /// `exp`, a named user's a few minutes.
    fn revoked_for(&self) -> Duration {
        self.lifetime(self.revocation_horizon, None)
    }

    /// How long this replica's copies of the answer can last (cached, then
    /// kept for `--stale-if-error`): its fleet tag is known as long, so a
    /// revocation another replica hears reaches every copy.
    fn copies_last(&self) -> Duration {
        let config = &self.economy.config;
        let fresh = config.cache_ttl.unwrap_or_default();
        self.lifetime(
            fresh.saturating_add(config.stale_if_error.unwrap_or_default()),
            None,
        )
    }

    /// The token's `exp`, as the ticket was given it.
    pub(crate) fn token_expires(&self) -> Option<SystemTime> {
        self.token_expires
    }

    /// Names the span of the upstream call, for the followers to link to.
    pub(crate) fn set_span(&self, span: SpanContext) {
        let _ = self.span.set(span);
    }

    /// The leader's share of the flight: a future that runs `upstream` in the
    /// leader's own task (no hand-off on the common path) and publishes its
    /// outcome to the followers. If the leader gives up first (its deadline,
    /// its cancellation), the call moves to a task of its own and still
    /// lands for the followers and the cache.
    pub(crate) fn run<F>(self, upstream: F) -> Flight
    where
        F: Future<Output = Outcome> + Send + 'static,
    {
        Flight {
            leader: Some(self),
            call: Some(Box::pin(upstream)),
        }
    }

    /// Ends the flight without an upstream call (the call was shed); its
    /// followers get the same answer.
    pub(crate) fn abandon(self, outcome: Outcome) {
        let _ = self.finish(outcome);
    }

    /// Remembers what `outcome` teaches (see [`Economy::ticket`]), stands a
    /// kept answer in for Cognito's unavailability, and publishes the
    /// result to the followers; returns it.
    pub(super) fn finish(self, outcome: Outcome) -> Outcome {
        let outcome = match self.key {
            Some(key) => {
                self.remember(key, &outcome);
                self.economy.stale_if_unavailable(key, outcome)
            }
            None => outcome,
        };
        // Publish first, then leave the map: a call arriving in between
        // follows a flight that has already landed and gets its outcome.
        self.sender.send_replace(Some(outcome.clone()));
        outcome
    }

    /// The cache, refusal memory and kept answers learn from `outcome`.
    fn remember(&self, key: TokenKey, outcome: &Outcome) {
        match outcome {
            // A kept answer the fleet stood in teaches nothing but the
            // outage.
            Ok(answer) if answer.kept_since.is_some() => {
                let economy = &self.economy;
                economy.warn_stale(economy.unavailable_since(), "fleet");
            }
            Ok(answer) => self.remember_answer(key, answer),
            Err(refusal @ Error::Upstream(up)) => {
                let economy = &self.economy;
                if refusal.revokes() {
                    economy.revoke(key, Instant::now() + self.revoked_for());
                }
                if up.kind.is_definitive()
                    && let Some(ttl) = economy.config.refusal_ttl
                {
                    // A refusal from the fleet's memory: no longer than there.
                    let remembered_until = up
                        .remembered_until_s
                        .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s.get().into()));
                    let lifetime = self.lifetime(ttl, remembered_until);
                    if !lifetime.is_zero() {
                        let expires = Instant::now() + lifetime;
                        economy.refusals.insert(key, refusal.clone(), expires);
                    }
                }
            }
            Err(_) => {}
        }
    }

    /// A fresh answer goes into the cache and is kept for `--stale-if-error`.
    fn remember_answer(&self, key: TokenKey, answer: &Answer) {
        let economy = &self.economy;
        // Cognito itself answered: an outage, if there was one, ends.
        if answer.given_at.is_none() {
            *lock(&economy.unavailable_since) = None;
        }
        // A revoked token's answer (one given before the revocation, landing
        // after it) is served to its callers but never copied.
        if economy.revoked.get(&key, Instant::now()).is_some() {
            return;
        }
        if let Some(tag) = &self.tag
            && copies_held(&economy.config) > 0
        {
            let tagged = (key, self.revocation_horizon, self.token_expires);
            let until = Instant::now() + self.copies_last();
            economy.by_tag.insert(economy.keyer.key(tag), tagged, until);
        }
        if let Some(ttl) = economy.config.cache_ttl {
            let lifetime = self.lifetime(ttl, answer.fresh_until);
            if !lifetime.is_zero() {
                let expires = Instant::now() + lifetime;
                economy.cache.insert(key, answer.clone(), expires);
            }
        }
        if let Some(grace) = economy.config.stale_if_error {
            // Kept for the grace past its freshness, counted from when
            // Cognito gave it (a fleet answer may be older).
            let given = answer.given_at.unwrap_or_else(SystemTime::now);
            let fresh = economy.config.cache_ttl.unwrap_or_default();
            let until = given.checked_add(fresh.saturating_add(grace));
            let lifetime = self.lifetime(Duration::MAX, until.or(Some(given)));
            economy.keep(key, answer, given, lifetime);
        }
    }

    /// `ttl`, cut to what is left before the token's `exp` and `until`. An
    /// `exp` already past (or unreadable as a time) keeps nothing; nor does
    /// an answer from the fleet's cache past its own time.
    fn lifetime(&self, ttl: Duration, until: Option<SystemTime>) -> Duration {
        cut(ttl, [self.token_expires, until])
    }
}

/// `ttl`, cut to what is left before each of `untils` (none left of one
/// already past).
pub(super) fn cut(ttl: Duration, untils: [Option<SystemTime>; 2]) -> Duration {
    let now = SystemTime::now();
    untils
        .into_iter()
        .flatten()
        .map(|until| until.duration_since(now).unwrap_or_default())
        .fold(ttl, Duration::min)
}

impl Drop for Leader {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            lock(&self.economy.flights).remove(&key);
        }
        // If the task ended without an outcome (it cannot, short of a panic),
        // followers see the sender gone and answer UNAVAILABLE.
    }
}

/// A replica's own copies of one token's answer (cached, and kept for
/// `--stale-if-error`), and until when a revocation of it lasts. See
/// [`Leader::kept_copy`].
#[derive(Clone)]
pub(crate) struct KeptCopy(Option<(Arc<Economy>, TokenKey, Instant)>);

impl KeptCopy {
    /// Forgets them, for as long as the token lives: the fleet says it was
    /// revoked.
    pub(crate) fn forget(&self) {
        if let Some((economy, key, until)) = &self.0 {
            economy.revoke(*key, *until);
        }
    }
}
