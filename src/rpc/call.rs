//! One call's typed context, the only channel between the handler and the
//! call's observer: the observer makes it when the call arrives (its clock,
//! its trace context) and puts it in the request's extensions; the handler
//! (and the request policy) write what only they learn (where the answer
//! came from, the pool, the error, Cognito's request id); the observer reads
//! it once the answer is known, for the metrics, the span and the line.

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use tonic::{Request, codegen::http};

use crate::{
    base::caller::Caller, base::wire::Source, error::Error, token::pools::UserPoolId,
    verify::Verification,
};

/// What is known about one call. Each fact is written at most once.
#[derive(Debug)]
pub(crate) struct CallContext {
    arrived: Instant,
    /// The call's trace context: its server span when spans are exported,
    /// else the caller's context (if it sent one).
    trace: opentelemetry::Context,
    source: OnceLock<Source>,
    /// Set when the answer is a kept one: it then reads as [`Source::Stale`].
    stale: OnceLock<()>,
    pool: OnceLock<UserPoolId>,
    /// How far the token was checked.
    verification: OnceLock<Verification>,
    error: OnceLock<Error>,
    request_id: OnceLock<String>,
    /// An ext_authz Check's decision.
    decision: OnceLock<Decision>,
    /// The caller its connection or a trusted `x-forwarded-client-cert`
    /// names.
    connected: Caller,
    /// The caller an ext_authz Check's source principal names, if it does.
    principal: OnceLock<Caller>,
}

impl CallContext {
    /// A call of `caller` arriving now, in `trace`.
    pub(crate) fn arriving(trace: opentelemetry::Context, caller: Caller) -> Arc<Self> {
        Arc::new(Self {
            arrived: Instant::now(),
            trace,
            source: OnceLock::new(),
            stale: OnceLock::new(),
            pool: OnceLock::new(),
            verification: OnceLock::new(),
            error: OnceLock::new(),
            request_id: OnceLock::new(),
            decision: OnceLock::new(),
            connected: caller,
            principal: OnceLock::new(),
        })
    }

    /// Who is calling: an ext_authz Check's source principal, else the
    /// caller its connection or forwarded header names.
    pub(crate) fn caller(&self) -> &Caller {
        self.principal.get().unwrap_or(&self.connected)
    }

    /// The caller a Check's source principal names.
    pub(crate) fn set_principal(&self, caller: Caller) {
        let _ = self.principal.set(caller);
    }

    /// The context of `extensions`' call, or a new one arriving now for a
    /// call nobody observes.
    pub(crate) fn of(extensions: &http::Extensions) -> Arc<Self> {
        extensions
            .get::<Arc<Self>>()
            .cloned()
            .unwrap_or_else(|| Self::arriving(opentelemetry::Context::new(), Caller::anonymous()))
    }

    /// When the call arrived: its one clock starts here.
    pub(crate) fn arrived(&self) -> Instant {
        self.arrived
    }

    /// The call's trace context, to parent the spans of its work.
    pub(crate) fn trace(&self) -> &opentelemetry::Context {
        &self.trace
    }

    /// Where the answer came from; `Local` until the handler says otherwise.
    pub(crate) fn source(&self) -> Source {
        if self.stale.get().is_some() {
            return Source::Stale;
        }
        self.source.get().copied().unwrap_or(Source::Local)
    }

    /// Records that the answer is a kept one standing in for Cognito
    /// (`--stale-if-error`), wherever the flight that failed came from.
    pub(crate) fn set_stale(&self) {
        let _ = self.stale.set(());
    }

    /// Records an ext_authz Check's decision.
    pub(crate) fn set_decision(&self, decision: Decision) {
        let _ = self.decision.set(decision);
    }

    /// The ext_authz decision, for a Check; `""` for the RPC.
    pub(crate) fn decision(&self) -> &'static str {
        self.decision.get().map_or("", |d| d.as_str())
    }

    /// Records where the answer comes from.
    pub(crate) fn set_source(&self, source: Source) {
        let _ = self.source.set(source);
    }

    /// The configured user pool of the call's token, or `""`.
    pub(crate) fn pool(&self) -> &str {
        self.pool.get().map_or("", UserPoolId::as_str)
    }

    /// Records the token's pool.
    pub(crate) fn set_pool(&self, pool: UserPoolId) {
        let _ = self.pool.set(pool);
    }

    /// How far the call's token was checked, as the line says it (`""` when
    /// not asked or not known).
    pub(crate) fn verification(&self) -> &'static str {
        self.verification
            .get()
            .map_or("", |verification| verification.as_str())
    }

    /// Records how far the token was checked.
    pub(crate) fn set_verification(&self, verification: Verification) {
        let _ = self.verification.set(verification);
    }

    /// The documented error the call failed with, if it did.
    pub(crate) fn error(&self) -> Option<&Error> {
        self.error.get()
    }

    /// Records the error the call fails with.
    pub(crate) fn set_error(&self, error: Error) {
        let _ = self.error.set(error);
    }

    /// Cognito's request id of a success, or `""`.
    pub(crate) fn request_id(&self) -> &str {
        self.request_id.get().map_or("", String::as_str)
    }

    /// Records Cognito's request id.
    pub(crate) fn set_request_id(&self, id: String) {
        let _ = self.request_id.set(id);
    }
}

/// We answer DEADLINE_EXCEEDED a little before the caller's deadline, so the
/// answer (with its ErrorInfo) reaches the caller before its own timer fires
/// and before tonic's `grpc-timeout` timer answers CANCELLED: 5% of the
/// deadline, at least 2 ms (tokio timers tick in whole milliseconds) and at
/// most 50 ms.
const DEADLINE_MARGIN_MIN: Duration = Duration::from_millis(2);
/// See [`DEADLINE_MARGIN_MIN`].
const DEADLINE_MARGIN_MAX: Duration = Duration::from_millis(50);

/// How much of the caller's `timeout` the upstream call may use.
fn upstream_budget(timeout: Duration) -> Duration {
    let margin = (timeout / 20).clamp(DEADLINE_MARGIN_MIN, DEADLINE_MARGIN_MAX);
    timeout.saturating_sub(margin)
}

/// The caller's deadline, less a margin so the answer beats its timer; none
/// without a (readable, representable) `grpc-timeout`.
pub(crate) fn deadline<T>(request: &Request<T>, arrived: Instant) -> Option<Instant> {
    let timeout = request
        .metadata()
        .get("grpc-timeout")
        .and_then(|value| value.to_str().ok())
        .and_then(parse_grpc_timeout)?;
    arrived.checked_add(upstream_budget(timeout))
}

/// Parses a `grpc-timeout` value: at most 8 digits and a unit (H, M, S, m, u,
/// n), per <https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md>.
/// Returns `None` for anything else; tonic ignores such values too.
pub(crate) fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let split = value.len().checked_sub(1)?;
    let (digits, unit) = value.split_at_checked(split)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_are_written_once_and_default_to_a_local_answer() {
        let context = CallContext::arriving(opentelemetry::Context::new(), Caller::anonymous());
        assert_eq!(context.source(), Source::Local);
        assert_eq!(context.pool(), "");
        assert!(context.error().is_none());
        context.set_source(Source::Cache);
        context.set_source(Source::Cognito);
        assert_eq!(context.source(), Source::Cache);
        context.set_error(Error::Overloaded);
        assert!(matches!(context.error(), Some(Error::Overloaded)));
        let mut extensions = http::Extensions::new();
        extensions.insert(Arc::clone(&context));
        assert!(Arc::ptr_eq(&CallContext::of(&extensions), &context));
    }

    #[test]
    fn the_upstream_budget_leaves_a_bounded_margin() {
        let ms = Duration::from_millis;
        assert_eq!(upstream_budget(ms(1)), ms(0));
        assert_eq!(upstream_budget(ms(20)), ms(18));
        assert_eq!(upstream_budget(ms(300)), ms(285));
        assert_eq!(upstream_budget(Duration::from_secs(5)), ms(4950));
    }

    #[test]
    fn parses_every_grpc_timeout_unit() {
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("4S"), Some(Duration::from_secs(4)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(
            parse_grpc_timeout("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(parse_grpc_timeout("7n"), Some(Duration::from_nanos(7)));
    }

    #[test]
    fn refuses_malformed_grpc_timeouts() {
        for value in [
            "",
            "S",
            "100",
            "123456789S",
            "1.5S",
            "-1S",
            "10x",
            "1é",
            "é",
        ] {
            assert_eq!(parse_grpc_timeout(value), None, "{value:?}");
        }
    }
}

/// What a Check decided, as its metrics and log line say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Allowed,
    DeniedUnauthenticated,
    DeniedPolicy,
    /// The route's configuration is wrong (denied 500).
    DeniedConfiguration,
    /// Cognito (or the facade) could not say: a gRPC error.
    Error,
}

impl Decision {
    /// Every decision, in [`Decision::index`]'s order.
    pub(crate) const ALL: [Self; 5] = [
        Self::Allowed,
        Self::DeniedUnauthenticated,
        Self::DeniedPolicy,
        Self::DeniedConfiguration,
        Self::Error,
    ];

    /// Its place in [`Decision::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::DeniedUnauthenticated => "denied_unauthenticated",
            Self::DeniedPolicy => "denied_policy",
            Self::DeniedConfiguration => "denied_configuration",
            Self::Error => "error",
        }
    }
}

#[cfg(test)]
mod decision_tests {
    use super::*;

    #[test]
    fn every_decision_is_in_all_at_its_index() {
        for (n, decision) in Decision::ALL.into_iter().enumerate() {
            assert_eq!(decision.index(), n);
            // Exhaustive: a new variant must be placed here and in `ALL`.
            match decision {
                Decision::Allowed
                | Decision::DeniedUnauthenticated
                | Decision::DeniedPolicy
                | Decision::DeniedConfiguration
                | Decision::Error => {}
            }
        }
        assert_eq!(Decision::ALL.len(), Decision::Error.index() + 1);
    }
}
