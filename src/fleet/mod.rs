//! The fleet's one memory, on the store (`crate::store`): single flight
//! across replicas (one replica's Cognito call; the others wait for its
//! result over pub/sub) and, with `--cache-ttl`, `--refusal-ttl` and
//! `--stale-if-error`, a second tier behind each replica's own cache,
//! refusal memory and kept answers. Layer 5, above `store` and `upstream`.
//!
//! It owns the flight protocol (`flight`: join, follow), what a flight
//! leaves behind (`lease`: its result, the fleet's memory, the kept
//! answer), the waiter registry (`waiters`), the values' codec (`codec`)
//! and the scripts
//! (`scripts`, `join.lua`, `finish.lua`). Whatever goes wrong in Redis, a
//! call goes on as a replica alone would, and no value in Redis makes it
//! wait past its own bound.
//!
//! Files, lowest first: `codec`, `scripts`, `waiters`, `revocations` (a
//! definitive refusal reaching every replica's copies), `lease`, `flight`.

mod codec;
mod flight;
mod lease;
mod revocations;
mod scripts;
mod waiters;

use std::{
    fmt,
    sync::Arc,
    time::{Duration, SystemTime},
};

use crate::{
    base::wire::Source,
    error::Error,
    store::{Domain, FleetConfig, Store},
    token::user::Subject,
    upstream::Answer,
};

pub(crate) use self::lease::Lease;
use self::{
    revocations::Revocations,
    scripts::{FinishScript, JoinScript},
    waiters::Waiters,
};

/// The label of the fleet-wide channel revocations are told on, which the
/// store subscribes on each connection before using it.
const REVOCATIONS: &str = "revocations";

/// How a leader's call joins the fleet.
#[derive(Debug)]
pub(crate) enum Joined {
    /// The fleet had the outcome: from its memory, or from another
    /// replica's flight.
    Shared(Result<Answer, Error>, Source),
    /// This replica leads the fleet's flight: it calls Cognito and shares
    /// the outcome with [`Lease::finish`].
    Lead(Lease),
    /// No help from the fleet (Redis away, the breaker open, a value that
    /// did not open, no flight within the bound): call Cognito alone.
    Alone,
}

/// The fleet's settings that are the reader's own: each replica serves
/// from the fleet's memory only what its own settings allow.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FleetSettings {
    /// How long a leader may hold a flight (its upstream call's bound);
    /// also the most a follower waits, in all.
    pub(crate) lease: Duration,
    /// Whether replicas share flights (`--coalesce`).
    pub(crate) coalesce: bool,
    /// The fleet cache's TTL (`--cache-ttl`); `None`: no fleet cache.
    pub(crate) cache_ttl: Option<Duration>,
    /// How long definitive refusals are remembered (`--refusal-ttl`).
    pub(crate) refusal_ttl: Option<Duration>,
    /// How long answers are kept past their freshness, to stand in while
    /// Cognito is unavailable (`--stale-if-error`).
    pub(crate) stale_if_error: Option<Duration>,
}

impl FleetSettings {
    /// Until when an answer Cognito gave at `given` is kept for
    /// `--stale-if-error` by this reader: its freshness (`--cache-ttl`, or
    /// none) and the grace past it; `None` with the setting off.
    pub(crate) fn kept_until(&self, given: SystemTime) -> Option<SystemTime> {
        let grace = self.stale_if_error?;
        let fresh = self.cache_ttl.unwrap_or_default();
        given.checked_add(fresh.saturating_add(grace))
    }
}

/// The fleet, shared by every call.
#[derive(Clone)]
pub(crate) struct Fleet(Arc<FleetState>);

impl fmt::Debug for Fleet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fleet")
            .field("store", &self.0.store)
            .field("settings", &self.0.settings)
            .finish_non_exhaustive()
    }
}

struct FleetState {
    store: Store,
    settings: FleetSettings,
    waiters: Arc<Waiters>,
    join: JoinScript,
    finish: FinishScript,
    revocations: Revocations,
    /// The flights this replica leads and has not finished, by flight id:
    /// released at shutdown if their calls outlive it.
    leading: std::sync::Mutex<std::collections::HashMap<String, Names>>,
    /// The tasks that finish flights: awaited at shutdown.
    finishing: tokio_util::task::TaskTracker,
}

/// The key space of a named user's names (a token's are `cf:{…}`).
const USER_SPACE: &str = "cf:u:";

/// The Redis names of one token's keys (all in the token's slot).
#[derive(Debug, Clone)]
pub(crate) struct Names {
    /// A remembered answer (the fleet cache).
    answer: String,
    /// A remembered definitive refusal.
    refusal: String,
    /// The current flight's lease: its flight id.
    lease: String,
    /// What flights' results are named after: `…:r:` and the flight id.
    results: String,
    /// Where results are published.
    channel: String,
    /// The answer kept for `--stale-if-error`.
    kept: String,
    /// The token's revocation mark (a definitive refusal): no copy of an
    /// answer is served or written while it lasts, and every replica
    /// forgets its own.
    replaced: String,
}

impl Names {
    /// A token's names are `cf:{<tag>}:…`; a named user's, in a key space
    /// of their own, `cf:u:{<tag>}:…`, the tag under its own domain.
    fn of(store: &Store, subject: &Subject) -> Self {
        let (domain, space) = match subject {
            Subject::Token(_) => (Domain::Token, "cf:"),
            Subject::User(..) => (Domain::User, USER_SPACE),
        };
        let tag = store.keys().tag(domain, &subject.keyed());
        let name = |suffix: &str| format!("{space}{{{tag}}}:{suffix}");
        Self {
            answer: name("a"),
            refusal: name("m"),
            lease: name("l"),
            results: name("r:"),
            channel: name("c"),
            kept: name("k"),
            replaced: name("x"),
        }
    }

    /// The operation that answers for its subject (a user's names are in
    /// [`USER_SPACE`]): what a stored refusal's code means, and how long a
    /// revocation lasts.
    fn operation(&self) -> crate::base::wire::Operation {
        if self.answer.starts_with(USER_SPACE) {
            crate::base::wire::Operation::AdminGetUserAuthFactors
        } else {
            crate::base::wire::Operation::GetUserAuthFactors
        }
    }

    /// The token's tag, as a revocation notice names it (what is between
    /// the braces of every one of its names).
    pub(crate) fn tag(&self) -> &str {
        self.answer
            .split_once('{')
            .and_then(|(_, rest)| rest.split_once('}'))
            .map_or("", |(tag, _)| tag)
    }

    /// The name of a flight's result, which it is also sealed under: a
    /// result is found, and opens, only for its own flight.
    fn result(&self, flight: &str) -> String {
        format!("{}{flight}", self.results)
    }
}

impl Fleet {
    /// Starts the store (in the background) and the fleet on it; each
    /// connection subscribes the fleet-wide revocation channel before the
    /// fleet uses it.
    pub(crate) fn start(config: &FleetConfig, settings: FleetSettings) -> Self {
        let mode = config.mode;
        let state = Arc::new_cyclic(|fleet: &std::sync::Weak<FleetState>| {
            let fleet = fleet.clone();
            let deliver = move |push: redis::PushInfo| {
                if let Some(fleet) = fleet.upgrade()
                    && !fleet.revocations.deliver(&push)
                {
                    fleet.waiters.deliver(mode, push);
                }
            };
            let store = Store::start(config, REVOCATIONS, deliver);
            let channel = store.broadcast().to_owned();
            FleetState {
                store,
                settings,
                waiters: Arc::new(Waiters::default()),
                join: JoinScript::new(),
                finish: FinishScript::new(),
                revocations: Revocations::new(channel),
                leading: std::sync::Mutex::default(),
                finishing: tokio_util::task::TaskTracker::new(),
            }
        });
        Self(state)
    }

    /// The Redis names of `subject`'s keys, and its tag.
    pub(crate) fn names(&self, subject: &Subject) -> Names {
        Names::of(&self.0.store, subject)
    }

    /// The store under the fleet (the rate limit shares it).
    pub(crate) fn store(&self) -> &Store {
        &self.0.store
    }

    /// Whether the store may be asked now (it is connected and the calls'
    /// breaker is closed); a skip is counted.
    pub(crate) fn usable_now(&self) -> bool {
        self.0.store.for_call().is_some()
    }

    /// A sealed value of `names`' subject, under `name`, opened and decoded;
    /// a value that does not open is counted.
    fn open(
        &self,
        names: &Names,
        name: &str,
        sealed: &[u8],
        now: SystemTime,
    ) -> Option<codec::Stored> {
        let stored = self
            .0
            .store
            .keys()
            .open(name, sealed)
            .and_then(|plain| codec::decode(&plain, now, names.operation()));
        if stored.is_none() {
            metrics::counter!(crate::base::metric_names::FLEET_UNOPENED).increment(1);
        }
        stored
    }
}
