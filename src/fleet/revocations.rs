//! Revocations across the fleet: once any replica hears Cognito refuse a
//! token definitively, no replica answers it from any copy. The replica
//! that heard deletes the fleet's copies, marks the token until its `exp`
//! and tells every replica on one fleet-wide channel (`finish.lua`); each
//! replica forgets its own copies (the callback the economy registers). A
//! revocation heard while Redis is away waits in a bounded queue, written
//! as soon as Redis answers and before this replica serves anything from
//! the fleet.

use std::{
    collections::VecDeque,
    sync::{
        Mutex, OnceLock, Weak,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use redis::{PushInfo, PushKind, Value};

use super::{
    Fleet, FleetState, Names,
    scripts::{Finish, FinishScript},
};
use crate::{
    base::{expiring::lock, metric_names, wire::Operation},
    error::Error,
    store::{BACKGROUND_BUDGET, Lane, Op},
    token::user::revocation_horizon,
};

/// Most revocations waiting for Redis; past it the oldest goes (counted).
pub(super) const PENDING_MAX: usize = 1024;
/// Pauses between tries to write pending revocations.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Told of a revoked token's tag.
type Heard = Box<dyn Fn(&str) + Send + Sync>;

/// The fleet's revocations: the channel, who hears, what waits for Redis.
pub(super) struct Revocations {
    /// The fleet-wide channel every replica listens to.
    pub(super) channel: String,
    heard: OnceLock<Heard>,
    /// Revocations not yet written, with the token's `exp`.
    pending: Mutex<VecDeque<(Names, SystemTime)>>,
    /// How many are not yet written (those being written included).
    unwritten: AtomicUsize,
    /// Whether a task is trying to write them.
    retrying: AtomicBool,
}

impl Revocations {
    pub(super) fn new(channel: String) -> Self {
        Self {
            channel,
            heard: OnceLock::new(),
            pending: Mutex::new(VecDeque::new()),
            unwritten: AtomicUsize::new(0),
            retrying: AtomicBool::new(false),
        }
    }

    /// A notice on the fleet-wide channel: told to whoever hears; `false`
    /// for any other push.
    pub(super) fn deliver(&self, push: &PushInfo) -> bool {
        if push.kind != PushKind::Message {
            return false;
        }
        let [Value::BulkString(channel), Value::BulkString(tag)] = push.data.as_slice() else {
            return false;
        };
        if channel.as_slice() != self.channel.as_bytes() {
            return false;
        }
        if let (Some(heard), Ok(tag)) = (self.heard.get(), std::str::from_utf8(tag)) {
            heard(tag);
        }
        true
    }

    fn gauge(&self) {
        metrics::gauge!(metric_names::FLEET_REVOCATIONS_PENDING)
            .set(self.unwritten.load(Ordering::Relaxed) as f64);
    }
}

/// Until when a revocation of `names`' subject (a token expiring at
/// `expires_at`, or a named user) lasts.
pub(super) fn revoked_until(
    names: &Names,
    expires_at: Option<SystemTime>,
    now: SystemTime,
) -> SystemTime {
    let most = now + revocation_horizon(names.operation());
    expires_at.map_or(most, |exp| exp.min(most))
}

/// How long the mark of a revocation (of a subject `operation` answers
/// for) lasting until `exp` has left at `now`,
/// or `None` when nothing is left to do. A token past its `exp` has no
/// copies anywhere. A named user's copies (the fleet cache, kept answers)
/// can outlive its few minutes' mark, so a revocation queued while Redis
/// was away longer than that still deletes them and tells every replica,
/// with a mark of a millisecond.
fn mark_left(operation: Operation, exp: SystemTime, now: SystemTime) -> Option<Duration> {
    match exp.duration_since(now) {
        Ok(left) if !left.is_zero() => Some(left),
        _ if operation == Operation::AdminGetUserAuthFactors => Some(Duration::from_millis(1)),
        _ => None,
    }
}

impl Fleet {
    /// Registers who is told when another replica revokes a token (by its
    /// tag, [`Names::tag`]).
    pub(crate) fn hear_revocations(&self, heard: impl Fn(&str) + Send + Sync + 'static) {
        let _ = self.0.revocations.heard.set(Box::new(heard));
    }

    /// A call this replica made without the fleet (Redis away, or its
    /// breaker open): a revocation waits to be written.
    pub(crate) fn made_alone(
        &self,
        names: &Names,
        expires_at: Option<SystemTime>,
        outcome: &Result<crate::upstream::Answer, Error>,
    ) {
        if let Err(err) = outcome
            && err.revokes()
        {
            self.queue(
                names.clone(),
                revoked_until(names, expires_at, SystemTime::now()),
            );
        }
    }

    /// Queues a revocation for Redis, and starts trying to write it.
    pub(super) fn queue(&self, names: Names, until: SystemTime) {
        let revocations = &self.0.revocations;
        {
            let mut pending = lock(&revocations.pending);
            if pending.len() >= PENDING_MAX {
                pending.pop_front();
                revocations.unwritten.fetch_sub(1, Ordering::Relaxed);
                metrics::counter!(metric_names::FLEET_REVOCATIONS_DROPPED).increment(1);
            }
            pending.push_back((names, until));
            revocations.unwritten.fetch_add(1, Ordering::Relaxed);
        }
        revocations.gauge();
        if !revocations.retrying.swap(true, Ordering::AcqRel) {
            tokio::spawn(retry(std::sync::Arc::downgrade(&self.0)));
        }
    }

    /// Whether every revocation this replica heard is written: if not, it
    /// tries within the call's budget. Until they are, the call goes on
    /// without the fleet.
    pub(super) async fn revocations_written(&self) -> bool {
        if self.0.revocations.unwritten.load(Ordering::Acquire) == 0 {
            return true;
        }
        self.write_pending(Lane::Calls, self.0.store.call_budget())
            .await
    }

    /// Writes the pending revocations, oldest first, by `until`; whether
    /// none is left.
    pub(super) async fn write_pending(&self, lane: Lane, until: Instant) -> bool {
        let revocations = &self.0.revocations;
        loop {
            let Some((names, exp)) = lock(&revocations.pending).pop_front() else {
                break;
            };
            let written = self.write_revocation(&names, exp, lane, until).await;
            if !written {
                lock(&revocations.pending).push_front((names, exp));
                break;
            }
            revocations.unwritten.fetch_sub(1, Ordering::AcqRel);
        }
        revocations.gauge();
        revocations.unwritten.load(Ordering::Acquire) == 0
    }

    /// The revocation of `names`' token, until `exp`, written and told
    /// (or already over); whether it was.
    async fn write_revocation(
        &self,
        names: &Names,
        exp: SystemTime,
        lane: Lane,
        until: Instant,
    ) -> bool {
        let Some(left) = mark_left(names.operation(), exp, SystemTime::now()) else {
            return true;
        };
        let store = &self.0.store;
        let Ok(mut conn) = store.connection(lane) else {
            return false;
        };
        let finish = Finish {
            flight: None,
            result: None,
            result_ttl: Duration::ZERO,
            memory: None,
            kept: None,
            revokes: Some(left),
        };
        let channel = &self.0.revocations.channel;
        let call = self.0.finish.call(names, &finish, store.mode(), channel);
        store
            .op(Op::Finish, lane, until, call.run(&mut conn))
            .await
            .and_then(FinishScript::reply)
            .is_some()
    }
}

/// Tries, a growing pause apart, to write the pending revocations, until
/// none is left or the fleet is gone.
async fn retry(fleet: Weak<FleetState>) {
    let mut pause = RETRY_MIN;
    loop {
        tokio::time::sleep(pause).await;
        let Some(state) = fleet.upgrade() else {
            return;
        };
        let fleet = Fleet(state);
        let revocations = &fleet.0.revocations;
        if fleet
            .write_pending(Lane::Background, Instant::now() + BACKGROUND_BUDGET)
            .await
        {
            revocations.retrying.store(false, Ordering::Release);
            // One queued meanwhile finds no task running: go on for it.
            if revocations.unwritten.load(Ordering::Acquire) == 0
                || revocations.retrying.swap(true, Ordering::AcqRel)
            {
                return;
            }
        }
        pause = (pause * 2).min(RETRY_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_revocation_still_deletes_its_copies_once_its_mark_is_over() {
        let now = SystemTime::now();
        let later = now + Duration::from_secs(60);
        let past = now - Duration::from_secs(1);
        for operation in [
            Operation::GetUserAuthFactors,
            Operation::AdminGetUserAuthFactors,
        ] {
            assert_eq!(
                mark_left(operation, later, now),
                Some(Duration::from_secs(60))
            );
        }
        // A token past its `exp` has nothing left anywhere.
        assert_eq!(mark_left(Operation::GetUserAuthFactors, past, now), None);
        assert_eq!(mark_left(Operation::GetUserAuthFactors, now, now), None);
        // A user's copies outlive its mark: written with a mark of 1 ms.
        for exp in [past, now] {
            assert_eq!(
                mark_left(Operation::AdminGetUserAuthFactors, exp, now),
                Some(Duration::from_millis(1))
            );
        }
    }
}
