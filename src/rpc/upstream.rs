//! One call to Cognito as a flight's leader makes it: alone, or as the
//! fleet's flight for the subject (joining, leading, standing a kept answer
//! in), in its client span, with the upstream metrics.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use opentelemetry::trace::FutureExt as _;

use crate::{
    base::caller::Caller,
    base::metric_names,
    base::wire::Source,
    economy::KeptCopy,
    error::{Error, KeptAnswer, UpstreamError, UpstreamErrorKind},
    fleet::{Fleet, Joined, Lease, Names},
    observability::traces,
    rpc::{call::CallContext, slots::Slot},
    token::{pools::UserPoolId, user::Subject},
    upstream::{Answer, Cognito},
};

/// One call to Cognito, as a flight's leader makes it.
pub(super) struct Upstream {
    pub(super) cognito: Cognito,
    pub(super) subject: Subject,
    pub(super) pool: Option<UserPoolId>,
    pub(super) deadline: Option<Instant>,
    pub(super) region: Arc<str>,
    pub(super) trace: opentelemetry::Context,
    /// This replica's own kept answer for the token, dropped if the fleet
    /// says a definitive refusal replaced it.
    pub(super) kept_copy: KeptCopy,
    /// The leading call's caller, whose turn the call takes.
    pub(super) caller: Caller,
}

impl Upstream {
    /// Calls Cognito in the client span, ends the span and records the
    /// upstream metrics.
    pub(super) async fn call(self) -> Result<Answer, Error> {
        let started = Instant::now();
        let pool_region = self.pool.as_ref().map(UserPoolId::region);
        let result = self
            .cognito
            .factors(&self.subject, pool_region, self.deadline, &self.caller)
            .with_context(self.trace.clone())
            .await;
        let (request_id, failure) = match &result {
            Ok(answer) => (answer.request_id.as_deref(), None),
            Err(err) => (err.request_id.as_deref(), Some(err.kind.status().1)),
        };
        traces::end_client_span(&self.trace, request_id, failure);
        record_upstream(&result, started.elapsed(), &self.region);
        result.map_err(Error::from)
    }

    /// The call, this replica's own (under `permit`, if it took one): with
    /// the fleet's `names`, Redis away or its breaker open.
    pub(super) async fn alone(
        self,
        permit: Option<Slot>,
        names: Option<(Fleet, Names)>,
        expires_at: Option<SystemTime>,
        context: &CallContext,
    ) -> Result<Answer, Error> {
        context.set_source(Source::Cognito);
        let result = match permit {
            Some(slot) => slot.hold(self.call()).await,
            None => self.call().await,
        };
        // A revocation heard without the fleet is written once Redis
        // answers.
        if let Some((fleet, names)) = names {
            fleet.made_alone(&names, expires_at, &result);
        }
        result
    }

    /// The call, for the whole fleet: another replica's answer if the fleet
    /// has it or is fetching it, else this replica's own call to Cognito
    /// (with a permit from `permit`), shared when this replica leads.
    pub(super) async fn call_in(
        self,
        fleet: &Fleet,
        names: &Names,
        expires_at: Option<SystemTime>,
        context: &CallContext,
        permit: impl FnOnce(&Caller) -> Result<Slot, Error>,
    ) -> Result<Answer, Error> {
        // Boxed: the fleet's join is a large state machine that a flight
        // without the fleet should not carry.
        let (joined, replaced) = Box::pin(fleet.join(names, expires_at)).await;
        if replaced {
            self.kept_copy.forget();
        }
        let lease = match joined {
            Joined::Shared(outcome, source) => {
                context.set_source(source);
                if let (Source::FleetMemory, Err(refusal)) = (source, &outcome) {
                    count_remembered(refusal, "fleet");
                }
                return outcome;
            }
            Joined::Lead(lease) => Some(lease),
            Joined::Alone => None,
        };
        context.set_source(Source::Cognito);
        let outcome = match permit(context.caller()) {
            Ok(slot) => slot.hold(self.call()).await,
            Err(shed) => Err(shed),
        };
        match lease {
            Some(lease) => {
                let outcome = stand_in(&lease, outcome).await;
                lease.finish(&outcome);
                outcome
            }
            None => {
                fleet.made_alone(names, expires_at, &outcome);
                outcome
            }
        }
    }
}

/// `outcome`, or, when Cognito is unavailable for it, the fleet's kept
/// answer for the flight's token (`--stale-if-error`), for this call and the
/// flight's followers.
async fn stand_in(lease: &Lease, outcome: Result<Answer, Error>) -> Result<Answer, Error> {
    match outcome {
        Err(Error::Upstream(up)) if up.kind.kept_answer() == KeptAnswer::StandsIn => {
            match lease.kept().await {
                Some(kept) => Ok(kept),
                None => Err(Error::Upstream(up)),
            }
        }
        outcome => outcome,
    }
}

/// The upstream call metrics. A call the rate limit refused before it
/// reached Cognito is counted by the limiter, not here.
fn record_upstream(result: &Result<Answer, UpstreamError>, elapsed: Duration, region: &Arc<str>) {
    let outcome: metrics::SharedString = match result {
        Ok(_) => "ok".into(),
        Err(err) if err.kind == UpstreamErrorKind::RateLimited => return,
        Err(err) => match &err.aws_error_code {
            // Only modeled codes become labels: an unmodeled code is free
            // text from the upstream and could grow the label set. (A code
            // modeled only for the other operation left its kind unmodeled.)
            Some(code)
                if UpstreamErrorKind::is_modeled_code(code)
                    && err.kind != UpstreamErrorKind::Unmodeled =>
            {
                code.clone().into()
            }
            _ => err.kind.status().1.into(),
        },
    };
    let region = metrics::SharedString::from(Arc::clone(region));
    metrics::counter!(metric_names::UPSTREAM_REQUESTS, "outcome" => outcome, "region" => region.clone())
        .increment(1);
    metrics::histogram!(metric_names::UPSTREAM_DURATION, "region" => region)
        .record(elapsed.as_secs_f64());
}

/// A call answered from refusal memory, by its reason and the memory's
/// `scope` (`replica`, `fleet`).
pub(super) fn count_remembered(refusal: &Error, scope: &'static str) {
    metrics::counter!(metric_names::REFUSALS_REMEMBERED, "reason" => refusal.status().1, "scope" => scope)
        .increment(1);
}
