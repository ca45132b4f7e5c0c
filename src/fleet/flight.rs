//! The flight protocol. A call joins the token's flight: the fleet's memory
//! answers, or it follows the flight another replica leads, or it takes the
//! lease (a fresh flight id) and leads. A leader's outcome is stored and
//! published in one script; a leader that cannot share (its own trouble
//! reaching Cognito) leaves its flight's followers a notice to join again,
//! and exactly one of them leads the next flight.
//!
//! Every wait has one bound that the follower sets itself, whatever `PTTL`
//! Redis reports: it follows flights for at most its own lease, then takes
//! one more turn (its own call, or the flight of whoever took over), then
//! gives up; so a call without a deadline waits about twice
//! `--call-timeout` at most, however many leaders die in turn.

use std::time::{Duration, Instant, SystemTime};

use super::{
    Fleet, Joined, Names, codec,
    lease::Lease,
    scripts::{JoinReply, JoinScript, new_flight_id},
    waiters::Wake,
};
use crate::{
    base::metric_names::FLEET_LEASE_TAKEOVERS,
    base::wire::Source,
    error::{Error, UpstreamError, UpstreamErrorKind},
    store::{Lane, Op, StoreConn},
    upstream::Answer,
};

/// How often a follower looks for its flight's result itself, in case the
/// notice never comes (lost, or refused to the leader).
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// Slack over the lease's own expiry, which is on Redis's clock.
const LEASE_SLACK: Duration = Duration::from_millis(5);
/// Slack over a follower's first lease: a lease cut back to the follower's
/// own by the join script ends a round trip after the follower started
/// counting, and the follower must see it end before its last turn.
const BOUND_SLACK: Duration = Duration::from_millis(100);
/// A guard on rounds of joining: each round ends with a new flight, a
/// result, or the follower's bound.
const MAX_ROUNDS: usize = 16;

/// A follower's bound. Until its own lease has passed it follows any
/// flight (each wait no longer than that lease); then it has one more turn,
/// to lead a flight (its own call) or to follow one (for at most a lease);
/// after that it gives up.
struct Bound {
    lease: Duration,
    first: Instant,
    turn_taken: bool,
}

impl Bound {
    fn new(lease: Duration) -> Self {
        Self {
            lease,
            first: Instant::now() + lease + BOUND_SLACK,
            turn_taken: false,
        }
    }

    /// Whether the first lease has passed.
    fn past_first(&self) -> bool {
        Instant::now() >= self.first
    }

    /// Whether this call could still lead a flight (or call alone).
    fn can_lead(&self) -> bool {
        !self.past_first() || !self.turn_taken
    }

    /// Whether this call may lead a flight (or call alone) now; past the
    /// first lease, that is its last turn.
    fn may_lead(&mut self) -> bool {
        !self.past_first() || !std::mem::replace(&mut self.turn_taken, true)
    }

    /// Going on without the fleet: alone, if a turn is left.
    fn alone(&mut self) -> Joined {
        if self.may_lead() {
            Joined::Alone
        } else {
            gave_up()
        }
    }

    /// When a wait for a flight whose lease has `left` ends; `None` once
    /// the last turn is spent.
    fn next_wait(&mut self, left: Duration) -> Option<Instant> {
        let lease_end = Instant::now() + left.min(self.lease) + LEASE_SLACK;
        if !self.past_first() {
            return Some(lease_end.min(self.first));
        }
        (!std::mem::replace(&mut self.turn_taken, true)).then_some(lease_end)
    }
}

/// A follower past its bound: the call times out, as a leader's would.
fn gave_up() -> Joined {
    Joined::Shared(
        Err(UpstreamError::new(UpstreamErrorKind::Timeout).into()),
        Source::FleetCoalesced,
    )
}

/// What a remembered value is to this reader.
enum Memory {
    /// Served, as from the fleet's memory.
    Serve(Result<Answer, Error>, Source),
    /// Opened, but not for this reader (older than its own TTL): not served.
    Skip,
    /// Did not open: replaced by this replica's answer.
    Unopened,
}

/// How a follower's wait ended.
enum Followed {
    Done(Joined),
    /// Join again: after the followed flight's end (`Some`: its result may
    /// be stored), or afresh (`None`: its leader gave up).
    Rejoin(Option<String>),
}

/// A call's state across its rounds of joining.
struct Joining {
    bound: Bound,
    /// Which remembered outcomes it reads: answers, refusals.
    reads: (bool, bool),
    /// The flight it followed last, whose result it looks for first.
    followed: Option<String>,
    /// Whether it followed a flight whose leader went away.
    took_over: bool,
    /// Whether the token's kept answer was replaced by a definitive refusal.
    replaced: bool,
}

impl Joining {
    fn new(settings: &super::FleetSettings) -> Self {
        Self {
            bound: Bound::new(settings.lease),
            reads: (settings.cache_ttl.is_some(), settings.refusal_ttl.is_some()),
            followed: None,
            took_over: false,
            replaced: false,
        }
    }

    /// What a follower's wait (or a found result) leaves: the call's
    /// outcome, or `None` to join again. Going on alone asks the bound.
    fn after(&mut self, followed: Followed) -> Option<Joined> {
        match followed {
            Followed::Done(Joined::Alone) => Some(self.bound.alone()),
            Followed::Done(joined) => Some(joined),
            Followed::Rejoin(after) => {
                self.took_over |= after.is_some();
                self.followed = after;
                None
            }
        }
    }
}

impl Fleet {
    /// Joins the fleet's flight for the token `names` names (whose `exp` is
    /// `expires_at`):
    /// the fleet's memory, another replica's flight to follow, or the lease
    /// to lead one. A follower waits at most its own lease bound in all;
    /// its caller's own deadline is kept by the caller. Also says whether a
    /// definitive refusal revoked the token: then this replica forgets its
    /// own copies too. Nothing is served from the fleet before the
    /// revocations this replica heard while Redis was away are written.
    pub(crate) async fn join(
        &self,
        names: &Names,
        expires_at: Option<SystemTime>,
    ) -> (Joined, bool) {
        let Some(mut conn) = self.0.store.for_call() else {
            return (Joined::Alone, false);
        };
        if !self.revocations_written().await {
            return (Joined::Alone, false);
        }
        let names = names.clone();
        if !self.0.settings.coalesce {
            return self.remembered_only(&mut conn, names, expires_at).await;
        }
        let mut joining = Joining::new(&self.0.settings);
        for _ in 0..MAX_ROUNDS {
            if let Some(joined) = self
                .round(&mut conn, &names, &mut joining, expires_at)
                .await
            {
                return (joined, joining.replaced);
            }
        }
        (joining.bound.alone(), joining.replaced)
    }

    /// One round of joining: the join script, then what its reply calls
    /// for; `None` to join again.
    async fn round(
        &self,
        conn: &mut StoreConn,
        names: &Names,
        joining: &mut Joining,
        expires_at: Option<SystemTime>,
    ) -> Option<Joined> {
        let flight = new_flight_id();
        let call = self.0.join.call(
            names,
            &flight,
            self.0.settings.lease,
            joining.reads,
            joining.followed.as_deref(),
            joining.bound.can_lead(),
        );
        let until = self.0.store.call_budget();
        let Some(reply) = self
            .0
            .store
            .op(Op::Join, Lane::Calls, until, call.run(conn))
            .await
            .and_then(JoinScript::reply)
        else {
            return Some(self.unanswered(names, flight, &mut joining.bound, expires_at));
        };
        let memory = match reply {
            JoinReply::Answer(sealed) => self.memory(names, &sealed, false),
            JoinReply::Refusal(sealed) => self.memory(names, &sealed, true),
            JoinReply::Lead { replaced } if joining.bound.may_lead() => {
                joining.replaced |= replaced;
                if joining.took_over {
                    metrics::counter!(FLEET_LEASE_TAKEOVERS).increment(1);
                }
                return Some(Joined::Lead(self.lease(
                    names.clone(),
                    Some(flight),
                    expires_at,
                )));
            }
            JoinReply::Lead { .. } | JoinReply::Free => return Some(gave_up()),
            JoinReply::Result(sealed) => {
                let flight = joining.followed.take().unwrap_or_default();
                return joining.after(self.landed(names, &flight, &sealed));
            }
            JoinReply::Follow {
                flight,
                left,
                replaced,
            } => {
                joining.replaced |= replaced;
                let Some(until) = joining.bound.next_wait(left) else {
                    return Some(gave_up());
                };
                return joining.after(self.follow(conn, names, &flight, until).await);
            }
        };
        self.remembered(conn, names, joining, memory, expires_at)
            .await
    }

    /// A join whose reply never came: the script may have run and taken
    /// the lease for `flight`, so the call leads it (its followers are
    /// answered, and the lease is released only if it is this flight's).
    fn unanswered(
        &self,
        names: &Names,
        flight: String,
        bound: &mut Bound,
        expires_at: Option<SystemTime>,
    ) -> Joined {
        match bound.may_lead() {
            true => Joined::Lead(self.lease(names.clone(), Some(flight), expires_at)),
            false => gave_up(),
        }
    }

    /// What a remembered value found by the join leaves: served, skipped
    /// (join again without reading the memory), or replaced.
    async fn remembered(
        &self,
        conn: &mut StoreConn,
        names: &Names,
        joining: &mut Joining,
        memory: Memory,
        expires_at: Option<SystemTime>,
    ) -> Option<Joined> {
        match memory {
            Memory::Serve(outcome, source) => Some(Joined::Shared(outcome, source)),
            Memory::Skip => {
                joining.reads = (false, false);
                None
            }
            Memory::Unopened if joining.bound.may_lead() => {
                Some(self.claim(conn, names.clone(), expires_at).await)
            }
            Memory::Unopened => Some(gave_up()),
        }
    }

    /// Without fleet single flight (`--coalesce=false`): the fleet's memory
    /// alone (and whether the kept answer was replaced).
    async fn remembered_only(
        &self,
        conn: &mut StoreConn,
        names: Names,
        expires_at: Option<SystemTime>,
    ) -> (Joined, bool) {
        let settings = self.0.settings;
        if settings.cache_ttl.is_none()
            && settings.refusal_ttl.is_none()
            && settings.stale_if_error.is_none()
        {
            return (Joined::Alone, false);
        }
        let mut get = redis::cmd("MGET");
        get.arg(&names.answer)
            .arg(&names.refusal)
            .arg(&names.replaced);
        let until = self.0.store.call_budget();
        let Some(found) = self
            .0
            .store
            .op(
                Op::Get,
                Lane::Calls,
                until,
                get.query_async::<Vec<Option<Vec<u8>>>>(conn),
            )
            .await
        else {
            return (Joined::Alone, false);
        };
        let replaced = matches!(found.as_slice(), [_, _, Some(_)]);
        let memory = match found.as_slice() {
            [Some(answer), _, None] if settings.cache_ttl.is_some() => {
                self.memory(&names, answer, false)
            }
            [_, Some(refusal), ..] if settings.refusal_ttl.is_some() => {
                self.memory(&names, refusal, true)
            }
            _ => Memory::Skip,
        };
        let joined = match memory {
            Memory::Serve(outcome, source) => Joined::Shared(outcome, source),
            Memory::Skip | Memory::Unopened => Joined::Lead(self.lease(names, None, expires_at)),
        };
        (joined, replaced)
    }

    /// A remembered value as this reader may serve it: its own TTL from when
    /// the value was stored, never past the value's own time.
    fn memory(&self, names: &Names, sealed: &[u8], refusal: bool) -> Memory {
        let (name, ttl) = if refusal {
            (&names.refusal, self.0.settings.refusal_ttl)
        } else {
            (&names.answer, self.0.settings.cache_ttl)
        };
        let Some(ttl) = ttl else {
            return Memory::Skip;
        };
        let now = SystemTime::now();
        let Some(stored) = self.open(names, name, sealed, now) else {
            return Memory::Unopened;
        };
        let until = stored.stale_at.min(stored.stored_at + ttl);
        if now >= until {
            return Memory::Skip;
        }
        match stored.outcome {
            Some(Ok(mut answer)) if !refusal => {
                answer.fresh_until = Some(until);
                Memory::Serve(Ok(answer), Source::FleetCache)
            }
            Some(Err(Error::Upstream(mut up))) if refusal && up.kind.is_definitive() => {
                // Whole seconds, rounded down: a copy never outlives this.
                up.remembered_until_s = u32::try_from(codec::unix_millis(until) / 1000)
                    .ok()
                    .and_then(std::num::NonZeroU32::new);
                Memory::Serve(Err(Error::Upstream(up)), Source::FleetMemory)
            }
            _ => Memory::Skip,
        }
    }

    /// Takes the lease after a value that did not open, so this replica's
    /// answer replaces it; `Alone` if another replica holds the lease.
    async fn claim(
        &self,
        conn: &mut StoreConn,
        names: Names,
        expires_at: Option<SystemTime>,
    ) -> Joined {
        let flight = new_flight_id();
        let mut set = redis::cmd("SET");
        set.arg(&names.lease)
            .arg(&flight)
            .arg("NX")
            .arg("PX")
            .arg(super::scripts::millis(self.0.settings.lease));
        let until = self.0.store.call_budget();
        let taken: Option<Option<String>> = self
            .0
            .store
            .op(Op::TakeOver, Lane::Calls, until, set.query_async(conn))
            .await;
        match taken {
            Some(Some(_)) => Joined::Lead(self.lease(names, Some(flight), expires_at)),
            _ => Joined::Alone,
        }
    }

    fn lease(&self, names: Names, flight: Option<String>, expires_at: Option<SystemTime>) -> Lease {
        if let Some(flight) = &flight {
            self.leads(&names, flight);
        }
        Lease {
            fleet: self.clone(),
            names,
            flight,
            expires_at,
            finished: false,
        }
    }

    /// Waits for `flight`'s result: its notice, or the result found in
    /// Redis, at most until `lease_end`, or until the breaker opens. A
    /// follower that cannot subscribe in time still looks for the result.
    async fn follow(
        &self,
        conn: &mut StoreConn,
        names: &Names,
        flight: &str,
        lease_end: Instant,
    ) -> Followed {
        let (waiter, mut rx) = self
            .0
            .waiters
            .register(&self.0.store, &names.channel, flight);
        waiter.subscribe(conn, self.0.store.call_budget()).await;
        let mut openings = self.0.store.breaker_openings();
        loop {
            // The result may have landed before the subscription, or its
            // notice may never come.
            if let Some(sealed) = self.result(conn, names, flight).await {
                return self.landed(names, flight, &sealed);
            }
            let poll = (Instant::now() + FOLLOW_POLL).min(lease_end);
            tokio::select! {
                wake = &mut rx => return match wake {
                    Ok(Wake::Message(message)) => {
                        let sealed = message.get(flight.len() + 1..).unwrap_or_default();
                        self.landed(names, flight, sealed)
                    }
                    Ok(Wake::Dropped) => Followed::Rejoin(Some(flight.to_owned())),
                    Ok(Wake::Lost) | Err(_) => Followed::Done(Joined::Alone),
                },
                _ = openings.changed() => return Followed::Done(Joined::Alone),
                () = tokio::time::sleep_until(poll.into()) => {
                    if Instant::now() >= lease_end {
                        return Followed::Rejoin(Some(flight.to_owned()));
                    }
                }
            }
        }
    }

    /// `flight`'s stored result (sealed), if it is there.
    async fn result(&self, conn: &mut StoreConn, names: &Names, flight: &str) -> Option<Vec<u8>> {
        self.get(conn, &names.result(flight)).await
    }

    /// The value at `key`, if it is there and Redis answers within the
    /// call's budget.
    pub(super) async fn get(&self, conn: &mut StoreConn, key: &str) -> Option<Vec<u8>> {
        let mut get = redis::cmd("GET");
        get.arg(key);
        let until = self.0.store.call_budget();
        self.0
            .store
            .op(
                Op::Get,
                Lane::Calls,
                until,
                get.query_async::<Option<Vec<u8>>>(conn),
            )
            .await
            .flatten()
    }

    /// A flight's sealed result: its outcome, or a notice to join again
    /// afresh (its leader gave up; or the result does not open or is stale,
    /// which a new flight replaces).
    fn landed(&self, names: &Names, flight: &str, sealed: &[u8]) -> Followed {
        let now = SystemTime::now();
        match self.open(names, &names.result(flight), sealed, now) {
            Some(codec::Stored {
                outcome: Some(mut outcome),
                ..
            }) => {
                match &mut outcome {
                    // A flight's outcome: its seconds in Redis are no bound
                    // on how long the fleet remembers the refusal.
                    Err(Error::Upstream(up)) => up.remembered_until_s = None,
                    // A kept answer this reader may not serve (its own
                    // settings): as if the leader had given up.
                    Ok(answer)
                        if answer.kept_since.is_some() && !self.may_serve_kept(answer, now) =>
                    {
                        return Followed::Rejoin(None);
                    }
                    _ => {}
                }
                Followed::Done(Joined::Shared(outcome, Source::FleetCoalesced))
            }
            _ => Followed::Rejoin(None),
        }
    }
}
