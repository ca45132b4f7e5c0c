//! What a flight leaves behind: the lease a leader holds, and the script
//! that ends it (its result for the followers, the fleet's memory, the
//! answer kept for `--stale-if-error`); and the kept answer read back while
//! Cognito is unavailable.

use std::time::{Duration, Instant, SystemTime};

use super::{
    Fleet, Names,
    codec::{self, shareable},
    revocations::revoked_until,
    scripts::{Finish, FinishScript},
};
use crate::{
    base::expiring::lock,
    error::Error,
    store::{BACKGROUND_BUDGET, Lane, Op},
    upstream::Answer,
};

/// The least time given at shutdown to release the leases of calls still
/// in flight, even once the grace is spent: a follower elsewhere otherwise
/// waits out the lease.
const ABANDON_BUDGET: Duration = Duration::from_millis(200);

/// How long a flight's result stays readable for its own followers (those
/// that subscribed as it landed, or whose notice was lost).
const FLIGHT_RESULT_TTL: Duration = Duration::from_secs(2);

/// A flight this replica leads for the fleet (or, with `--coalesce=false`,
/// the outcome it remembers for the fleet).
#[derive(Debug)]
pub(crate) struct Lease {
    pub(super) fleet: Fleet,
    pub(super) names: Names,
    /// The flight's id, the lease's value; `None` without fleet flights.
    pub(super) flight: Option<String>,
    /// The token's `exp`: nothing shared outlives it.
    pub(super) expires_at: Option<SystemTime>,
    /// Set once [`Lease::finish`] has the outcome: dropped before, the
    /// lease is released for a follower to lead at once.
    pub(super) finished: bool,
}

/// What a flight leaves in Redis, before it is sealed.
struct Left {
    /// The flight's result, for its followers.
    result: Vec<u8>,
    /// The outcome the fleet remembers (whether a refusal, the value, its
    /// TTL).
    memory: Option<(bool, Vec<u8>, Duration)>,
    /// The kept answer and its TTL.
    kept: Option<(Vec<u8>, Duration)>,
    /// Until when the outcome revokes the token's copies (a definitive
    /// refusal), if it does.
    revokes: Option<SystemTime>,
}

impl Lease {
    /// Shares the leader's outcome in the background (its own caller does
    /// not wait for Redis), in one script: Cognito's answers and its
    /// refusals of the token go to the flight's followers, answers into the
    /// fleet cache and definitive refusals into its memory; with
    /// `--stale-if-error`, answers are kept and definitive refusals replace
    /// them. A kept answer standing in goes to the followers only. The
    /// leader's own trouble reaching Cognito is not shared: its followers
    /// are told to join again. Not under the calls' breaker: followers on
    /// other replicas wait for this.
    pub(crate) fn finish(mut self, outcome: &Result<Answer, Error>) {
        self.finished = true;
        let left = self.left(outcome, SystemTime::now());
        let finishing = self.fleet.0.finishing.clone();
        finishing.spawn(async move { self.store(left).await });
    }

    /// The plaintexts `outcome` leaves at `now`.
    fn left(&self, outcome: &Result<Answer, Error>, now: SystemTime) -> Left {
        let settings = self.fleet.0.settings;
        let exp = self.expires_at;
        let shared = shareable(outcome).then_some(outcome);
        // An answer is never handed on past the token's exp.
        let result_stale = match (shared, exp) {
            (Some(Ok(_)), Some(exp)) => exp.min(now + FLIGHT_RESULT_TTL),
            _ => now + FLIGHT_RESULT_TTL,
        };
        let result = match shared {
            Some(_) if result_stale <= now => codec::encode(None, now, now + FLIGHT_RESULT_TTL),
            _ => codec::encode(shared, now, result_stale),
        };
        let memory = shared.and_then(|outcome| {
            let ttl = memory_ttl(&settings, outcome, exp, now)?;
            Some((
                outcome.is_err(),
                codec::encode(Some(outcome), now, now + ttl),
                ttl,
            ))
        });
        Left {
            result,
            memory,
            kept: self.kept_value(outcome, now),
            // Whatever this replica's own settings: another's copies must
            // not outlive Cognito's refusal.
            revokes: outcome
                .as_ref()
                .err()
                .is_some_and(Error::revokes)
                .then(|| revoked_until(&self.names, exp, now)),
        }
    }

    /// With `--stale-if-error`: Cognito's answer, kept until its grace ends,
    /// never past the token's `exp`.
    fn kept_value(
        &self,
        outcome: &Result<Answer, Error>,
        now: SystemTime,
    ) -> Option<(Vec<u8>, Duration)> {
        let Ok(answer) = outcome else {
            return None;
        };
        if answer.kept_since.is_some() {
            return None;
        }
        let given = answer.given_at.unwrap_or(now);
        let until = self.fleet.0.settings.kept_until(given)?;
        let until = self.expires_at.map_or(until, |exp| exp.min(until));
        let ttl = until
            .duration_since(now)
            .ok()
            .filter(|ttl| !ttl.is_zero())?;
        let kept = Ok(Answer {
            kept_since: Some(given),
            request_id: None,
            ..answer.clone()
        });
        Some((codec::encode(Some(&kept), now, until), ttl))
    }

    /// Seals what the flight left and stores it in one script.
    async fn store(self, left: Left) {
        let store = self.fleet.store();
        let keys = store.keys();
        let names = &self.names;
        let result = self
            .flight
            .as_ref()
            .and_then(|flight| keys.seal(&names.result(flight), &left.result));
        let memory = left.memory.and_then(|(refusal, plain, ttl)| {
            let key = if refusal {
                &names.refusal
            } else {
                &names.answer
            };
            Some((key.as_str(), keys.seal(key, &plain)?, ttl))
        });
        let kept = left
            .kept
            .and_then(|(plain, ttl)| Some((keys.seal(&names.kept, &plain)?, ttl)));
        let revokes = left
            .revokes
            .and_then(|until| until.duration_since(SystemTime::now()).ok());
        let finish = Finish {
            flight: self.flight.as_deref(),
            result,
            result_ttl: FLIGHT_RESULT_TTL,
            memory,
            kept,
            revokes,
        };
        let channel = &self.fleet.0.revocations.channel;
        let call = self
            .fleet
            .0
            .finish
            .call(names, &finish, store.mode(), channel);
        let published = match store.connection(Lane::Background) {
            Ok(mut conn) => {
                let until = Instant::now() + BACKGROUND_BUDGET;
                store
                    .op(Op::Finish, Lane::Background, until, call.run(&mut conn))
                    .await
                    .and_then(FinishScript::reply)
            }
            Err(_) => None,
        };
        if let Some(flight) = &self.flight {
            lock(&self.fleet.0.leading).remove(flight);
        }
        // A revocation not written waits for Redis to answer again.
        if let (None, Some(until)) = (published, left.revokes) {
            self.fleet.queue(self.names.clone(), until);
        }
        if published == Some(false) {
            tracing::debug!(
                "a flight's notice was refused; its followers find the result themselves"
            );
        }
    }

    /// The fleet's kept answer for the flight's token, to stand in while
    /// Cognito is unavailable (`--stale-if-error`), as this reader may serve
    /// it: within its own grace. `None`: nothing kept (or it was replaced),
    /// the setting off, or Redis not answering within the call's budget.
    pub(crate) async fn kept(&self) -> Option<Answer> {
        let fleet = &self.fleet;
        fleet.0.settings.stale_if_error?;
        let mut conn = fleet.0.store.for_call()?;
        let sealed = fleet.get(&mut conn, &self.names.kept).await?;
        let now = SystemTime::now();
        match fleet
            .open(&self.names, &self.names.kept, &sealed, now)?
            .outcome
        {
            Some(Ok(answer)) if fleet.may_serve_kept(&answer, now) => Some(answer),
            _ => None,
        }
    }
}

impl Drop for Lease {
    /// Unfinished (its call cancelled, or its task dropped), a flight tells
    /// its followers that its leader gave up, and its lease goes: one of
    /// them leads at once.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let Some(flight) = self.flight.take() else {
            return;
        };
        lock(&self.fleet.0.leading).remove(&flight);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (fleet, names) = (self.fleet.clone(), self.names.clone());
        let until = Instant::now() + BACKGROUND_BUDGET;
        let finishing = fleet.0.finishing.clone();
        finishing.spawn_on(
            async move { fleet.abandon(&names, &flight, until).await },
            &runtime,
        );
    }
}

impl Fleet {
    /// Registers a flight this replica now leads.
    pub(super) fn leads(&self, names: &Names, flight: &str) {
        lock(&self.0.leading).insert(flight.to_owned(), names.clone());
    }

    /// Ends `flight` with no outcome, by `until`: its followers join again
    /// (one leads), and its lease goes if it is still the flight's.
    async fn abandon(&self, names: &Names, flight: &str, until: Instant) {
        let now = SystemTime::now();
        let plain = codec::encode(None, now, now + FLIGHT_RESULT_TTL);
        let store = self.store();
        let finish = Finish {
            flight: Some(flight),
            result: store.keys().seal(&names.result(flight), &plain),
            result_ttl: FLIGHT_RESULT_TTL,
            memory: None,
            kept: None,
            revokes: None,
        };
        let Some(mut conn) = store.connected() else {
            return;
        };
        let channel = &self.0.revocations.channel;
        let call = self.0.finish.call(names, &finish, store.mode(), channel);
        store
            .op(Op::Finish, Lane::Background, until, call.run(&mut conn))
            .await;
    }

    /// At shutdown, within `grace`: the flights this replica finished are
    /// stored and published, those it still leads are abandoned (their
    /// leases released, at least [`ABANDON_BUDGET`] given even past the
    /// grace), and the revocations waiting for Redis get one more try.
    /// What is left of `grace`.
    pub(crate) async fn drain(&self, grace: Duration) -> Duration {
        let ends = Instant::now() + grace;
        self.0.finishing.close();
        let _ = tokio::time::timeout_at(ends.into(), self.0.finishing.wait()).await;
        let leading: Vec<(String, Names)> = lock(&self.0.leading).drain().collect();
        if !leading.is_empty() {
            let until = ends.max(Instant::now() + ABANDON_BUDGET);
            for (flight, names) in &leading {
                self.abandon(names, flight, until).await;
            }
            tracing::info!(
                flights = leading.len(),
                "released the fleet's leases of calls still in flight"
            );
        }
        if Instant::now() < ends {
            self.write_pending(
                Lane::Background,
                ends.min(Instant::now() + BACKGROUND_BUDGET),
            )
            .await;
        }
        ends.saturating_duration_since(Instant::now())
    }

    /// Whether this reader's own settings let a kept answer from the fleet
    /// stand in: `--stale-if-error` on, and its grace not over.
    pub(super) fn may_serve_kept(&self, answer: &Answer, now: SystemTime) -> bool {
        answer
            .kept_since
            .and_then(|given| self.0.settings.kept_until(given))
            .is_some_and(|until| now < until)
    }
}

/// How long the fleet remembers `outcome`, from `now`: min(its TTL, exp −
/// now), for an answer with the fleet cache on and for a definitive refusal
/// with refusal memory on; `None` otherwise, or past `exp`.
fn memory_ttl(
    settings: &super::FleetSettings,
    outcome: &Result<Answer, Error>,
    expires_at: Option<SystemTime>,
    now: SystemTime,
) -> Option<Duration> {
    let ttl = match outcome {
        // A kept answer standing in is not Cognito's answer now.
        Ok(answer) if answer.kept_since.is_some() => return None,
        Ok(_) => settings.cache_ttl?,
        Err(Error::Upstream(up)) if up.kind.is_definitive() => settings.refusal_ttl?,
        Err(_) => return None,
    };
    let left = match expires_at {
        Some(exp) => exp.duration_since(now).unwrap_or_default(),
        None => ttl,
    };
    Some(ttl.min(left)).filter(|ttl| !ttl.is_zero())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use redis::Value;

    use super::super::{Fleet, FleetSettings, Joined};
    use crate::store::test_server::TestServer;
    use crate::token::{AccessToken, user::Subject};

    fn settings() -> FleetSettings {
        FleetSettings {
            lease: Duration::from_secs(30),
            coalesce: true,
            cache_ttl: None,
            refusal_ttl: None,
            stale_if_error: None,
        }
    }

    fn names(fleet: &Fleet, token: &str) -> super::super::Names {
        let subject = Subject::Token(AccessToken::for_tests(token));
        fleet.names(&subject)
    }

    async fn lead(fleet: &Fleet, token: &str) -> super::Lease {
        match fleet.join(&names(fleet, token), None).await.0 {
            Joined::Lead(lease) => lease,
            Joined::Alone => panic!("alone"),
            Joined::Shared(..) => panic!("shared"),
        }
    }

    /// Waits (bounded) until `key` is gone from the server.
    async fn until_gone(server: &TestServer, key: &str) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while server.command(&["EXISTS", key]).await != Value::Int(0) {
            assert!(Instant::now() < deadline, "{key} is still there");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_lease_dropped_unfinished_or_left_at_shutdown_is_released() {
        let server = TestServer::start();
        let fleet = Fleet::start(&server.config(), settings());
        let deadline = Instant::now() + Duration::from_secs(10);
        while fleet.store().connected().is_none() {
            assert!(Instant::now() < deadline, "the fleet did not connect");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Dropped unfinished (its task cancelled): released well before its
        // 30 s, so the next caller leads at once.
        let lease = lead(&fleet, "dropped").await;
        let key = names(&fleet, "dropped").lease;
        assert_ne!(server.command(&["EXISTS", &key]).await, Value::Int(0));
        drop(lease);
        until_gone(&server, &key).await;
        drop(lead(&fleet, "dropped").await);
        // Still held at shutdown (its call outlives the grace): released by
        // the drain, within the grace.
        let held = lead(&fleet, "held").await;
        let key = names(&fleet, "held").lease;
        let started = Instant::now();
        let left = fleet.drain(Duration::from_secs(1)).await;
        assert!(left > Duration::ZERO, "{:?}", started.elapsed());
        assert_eq!(server.command(&["EXISTS", &key]).await, Value::Int(0));
        // Its drop then does nothing more.
        drop(held);
    }
}
