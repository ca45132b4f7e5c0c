//! One call's typed context, the only channel between the handler and the
//! call's observer: the observer makes it when the call arrives (its clock,
//! its trace context) and puts it in the request's extensions; the handler
//! (and the request policy) write what only they learn (where the answer
//! came from, the pool, the error, Cognito's request id); the observer reads
//! it once the answer is known, for the metrics, the span and the line.

use std::{
    sync::{Arc, OnceLock},
    time::Instant,
};

use tonic::codegen::http;

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
