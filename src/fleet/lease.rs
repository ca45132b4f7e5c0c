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
    error::Error,
    store::{BACKGROUND_BUDGET, Lane, Op},
    upstream::Answer,
};

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
    pub(crate) fn finish(self, outcome: &Result<Answer, Error>) {
        let left = self.left(outcome, SystemTime::now());
        tokio::spawn(async move { self.store(left).await });
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
                .then(|| revoked_until(exp, now)),
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
        match fleet.open(&self.names.kept, &sealed, now)?.outcome {
            Some(Ok(answer)) if fleet.may_serve_kept(&answer, now) => Some(answer),
            _ => None,
        }
    }
}

impl Fleet {
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
