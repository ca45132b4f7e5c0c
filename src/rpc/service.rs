//! The `cognito.idp.v1.IdentityProviderService` RPCs: a token (or, for the
//! callers allowed, a pool and username) in, Cognito's answer (or a precise
//! status) out, with where the answer came from. The call's metrics and log
//! line are written by `crate::server::observe`.

use std::{
    sync::Arc,
    time::{Instant, SystemTime},
};

use opentelemetry::trace::TraceContextExt as _;
use tokio::sync::watch;
use tonic::{Request, Response, Status, metadata::MetadataValue};

use crate::{
    base::expiring::{TokenKey, TokenKeyer},
    base::metric_names,
    base::wire::Source,
    base::wire::{ADMIN_METHOD, METHOD},
    base::wire::{AGE_METADATA, REQUEST_ID_METADATA, SOURCE_METADATA},
    economy::{Economy, EconomyConfig, Flight, FlightSpan, Leader, Outcome, Ticket, Wait},
    error::{Error, UpstreamError},
    fleet::Fleet,
    observability::traces::Tracing,
    proto::{
        AdminGetUserAuthFactorsRequest, AdminGetUserAuthFactorsResponse, GetUserAuthFactorsRequest,
        GetUserAuthFactorsResponse, identity_provider_service_server::IdentityProviderService,
    },
    rpc::call::{CallContext, deadline},
    token::pools::UserPoolId,
    token::user::{Subject, Username},
    token::{self, AccessToken},
    upstream::{Answer, Cognito},
    verify::{TokenGate, unverified_expiry},
};

use crate::base::caller::{AdminCallers, Caller, CallerConfig, Callers};
use crate::rpc::slots::{Slot, Slots};
use crate::rpc::upstream::{Upstream, count_remembered};

/// Default bound on concurrent upstream calls. Each costs a few KiB; a
/// thousand in flight stays far below Cognito's per-pool request quotas'
/// usual concurrency and this process's memory budget.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 1000;

/// The RPC's own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Most upstream calls in flight at once; more are shed.
    pub max_concurrent_requests: usize,
    /// Envoy's ext_authz (`envoy.service.auth.v3.Authorization`).
    pub ext_authz: ExtAuthzConfig,
    /// How callers are told apart (`--caller-weight`,
    /// `--trust-forwarded-client-cert`).
    pub callers: CallerConfig,
}

impl Default for ServiceConfig {
    /// The documented defaults.
    fn default() -> Self {
        Self {
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            ext_authz: ExtAuthzConfig::default(),
            callers: CallerConfig::default(),
        }
    }
}

/// The ext_authz settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtAuthzConfig {
    /// The upstream request header that carries the username; `None` (the
    /// default): the username never leaves the facade.
    pub username_header: Option<String>,
    /// Whether the `authorization` header is removed before the request
    /// goes upstream.
    pub remove_authorization: bool,
}

/// The service implementation.
#[derive(Debug, Clone)]
pub(crate) struct FacadeService {
    cognito: Cognito,
    /// Pools, routing and local verification.
    gate: TokenGate,
    /// Spans of the calls to Cognito.
    tracing: Tracing,
    /// One slot per upstream call in flight, shared fairly among callers.
    limiter: Arc<Slots>,
    /// Single flight and cache.
    economy: Arc<Economy>,
    /// The fleet's single flight and cache on Redis, if configured.
    fleet: Option<Fleet>,
    /// Envoy's ext_authz settings.
    ext_authz: Arc<ExtAuthzConfig>,
    /// What each identity counts as.
    callers: Arc<Callers>,
    /// Who may call AdminGetUserAuthFactors.
    admin: Arc<AdminCallers>,
}

impl FacadeService {
    /// A service that checks tokens with `gate` and answers through `cognito`.
    pub(crate) fn new(
        cognito: Cognito,
        gate: TokenGate,
        tracing: Tracing,
        config: &ServiceConfig,
        economy: EconomyConfig,
        keyer: TokenKeyer,
        fleet: Option<Fleet>,
    ) -> Self {
        let economy = Economy::new(economy, keyer);
        if let Some(fleet) = &fleet {
            // Weak: the fleet's listener does not keep the economy alive.
            let heard = Arc::downgrade(&economy);
            fleet.hear_revocations(move |tag| {
                if let Some(economy) = heard.upgrade() {
                    economy.heard_revoked(tag);
                }
            });
        }
        Self {
            cognito,
            gate,
            tracing,
            limiter: Arc::new(Slots::new(config.max_concurrent_requests)),
            economy,
            fleet,
            ext_authz: Arc::new(config.ext_authz.clone()),
            callers: Arc::new(Callers::new(&config.callers.weights)),
            admin: Arc::new(config.callers.admin.clone()),
        }
    }

    /// What each identity counts as.
    pub(crate) fn callers(&self) -> &Arc<Callers> {
        &self.callers
    }

    /// The ext_authz settings.
    pub(crate) fn ext_authz(&self) -> &Arc<ExtAuthzConfig> {
        &self.ext_authz
    }

    /// The answer. Where it came from, the pool and the error go into
    /// `context`, for the call's observer.
    async fn call(
        &self,
        request: &Request<GetUserAuthFactorsRequest>,
        context: &Arc<CallContext>,
    ) -> Result<Answer, Error> {
        let deadline = deadline(request, context.arrived());
        let token = token::extract(&request.get_ref().access_token, request.metadata())?;
        self.answer_for(token, deadline, context).await
    }

    /// AdminGetUserAuthFactors' answer. Refused here, with no call to
    /// Cognito, unless `--admin-callers` names the caller, the pool is one
    /// served and Cognito would accept the username; then the same path as
    /// a token's, keyed by pool and username.
    async fn admin_call(
        &self,
        request: &Request<AdminGetUserAuthFactorsRequest>,
        context: &Arc<CallContext>,
    ) -> Result<Answer, Error> {
        let deadline = deadline(request, context.arrived());
        if !self.admin.allow(context.caller()) {
            return Err(Error::CallerNotAllowed);
        }
        let asked = request.get_ref();
        let pool = self
            .gate
            .served_pool(&asked.user_pool_id)
            .ok_or(Error::UserPoolNotAllowed)?
            .clone();
        context.set_pool(pool.clone());
        let user = Subject::User(pool.clone(), Username::parse(&asked.username)?);
        self.economize(user, Some(pool), None, deadline, context)
            .await
    }

    /// The answer for `token`, by `deadline`: the path every way in (the
    /// RPC, Envoy's ext_authz) shares.
    pub(crate) async fn answer_for(
        &self,
        token: AccessToken,
        deadline: Option<Instant>,
        context: &Arc<CallContext>,
    ) -> Result<Answer, Error> {
        // Before single flight: a refused token never starts or joins one.
        let checked = self.gate.check(&token, deadline).await?;
        context.set_verification(checked.verification);
        if let Some(pool) = &checked.pool {
            context.set_pool(pool.clone());
        }
        let subject = Subject::Token(token);
        self.economize(subject, checked.pool, checked.expires_at, deadline, context)
            .await
    }

    /// The answer for `subject` (of `pool`, if known, and known to expire
    /// at `expires_at`) by `deadline`, through the economy: the cache,
    /// refusal memory, single flight, the fleet, then Cognito.
    async fn economize(
        &self,
        subject: Subject,
        pool: Option<UserPoolId>,
        expires_at: Option<SystemTime>,
        deadline: Option<Instant>,
        context: &Arc<CallContext>,
    ) -> Result<Answer, Error> {
        // Read from the token itself only when this call leads (its outcome
        // may be remembered): no cost on a cache hit or for a follower. A
        // named user has no `exp`: `--cache-ttl` alone bounds its answer.
        let expires_at = || match expires_at {
            None if self.economy.remembers() => subject.token().and_then(unverified_expiry),
            expires_at => expires_at,
        };
        match self.economy.ticket(&subject, expires_at) {
            Ticket::Cached(answer) => {
                context.set_source(Source::Cache);
                Ok(answer)
            }
            Ticket::Remembered(refusal) => {
                context.set_source(Source::Memory);
                count_remembered(&refusal, "replica");
                Err(refusal)
            }
            // Boxed: the waits are large state machines that a cache hit,
            // the common case behind a mesh, should not move or carry.
            Ticket::Follow(flight, span, key) => {
                Box::pin(self.follow(flight, span, key, pool, deadline, context)).await
            }
            Ticket::Lead(leader) => {
                Box::pin(self.lead_and_wait(leader, subject, pool, deadline, context)).await
            }
        }
    }

    /// A follower's wait for the flight it joined, and its answer.
    async fn follow(
        &self,
        flight: watch::Receiver<Option<Outcome>>,
        span: FlightSpan,
        key: TokenKey,
        pool: Option<UserPoolId>,
        deadline: Option<Instant>,
        context: &Arc<CallContext>,
    ) -> Result<Answer, Error> {
        context.set_source(Source::Coalesced);
        let outcome = until(deadline, Wait::Follow(flight)).await;
        // A follower's span links to the upstream call it shared.
        if let Some(span) = span.get() {
            context.trace().span().add_link(span.clone(), Vec::new());
        }
        self.stale(Some(key), outcome, &pool, context)
    }

    /// The leader's flight, its wait, and its answer.
    async fn lead_and_wait(
        &self,
        leader: Leader,
        subject: Subject,
        pool: Option<UserPoolId>,
        deadline: Option<Instant>,
        context: &Arc<CallContext>,
    ) -> Result<Answer, Error> {
        let key = leader.key();
        let call = Call {
            expires_at: leader.token_expires(),
            subject,
            pool: pool.clone(),
            deadline,
        };
        let flight = self.lead(leader, call, context)?;
        let outcome = until(deadline, Wait::Lead(flight)).await;
        // The flight says where its answer came from; a caller that
        // gave up first was still waiting for Cognito.
        context.set_source(Source::Cognito);
        self.stale(key, outcome, &pool, context)
    }

    /// `outcome`, with its source `stale` (and counted) if it is a kept
    /// answer standing in for Cognito. A call whose deadline passed before
    /// its flight landed (`None`) gets the token's kept answer (`key`'s)
    /// if there is one, else `DEADLINE_EXCEEDED`: Cognito did not answer in
    /// time for it.
    fn stale(
        &self,
        key: Option<TokenKey>,
        outcome: Option<Result<Answer, Error>>,
        pool: &Option<UserPoolId>,
        context: &CallContext,
    ) -> Result<Answer, Error> {
        let outcome = match (outcome, key) {
            (Some(outcome), _) => outcome,
            (None, Some(key)) => self.economy.stale_at_deadline(key),
            (None, None) => Err(UpstreamError::deadline().into()),
        };
        if let Ok(answer) = &outcome
            && answer.kept_since.is_some()
        {
            context.set_stale();
            let region = self
                .cognito
                .region(pool.as_ref().map(UserPoolId::region))
                .cloned()
                .unwrap_or_else(|| Arc::from(""));
            let region = metrics::SharedString::from(region);
            metrics::counter!(metric_names::STALE_ANSWERS, "region" => region).increment(1);
        }
        outcome
    }

    /// Starts the flight this call leads and runs the call to Cognito in the
    /// call's trace. Without the fleet it takes a permit first (or sheds the
    /// call, and its flight with it); with the fleet, only once it knows this
    /// replica calls Cognito, so a follower waiting on another replica holds
    /// none.
    fn lead(
        &self,
        mut leader: Leader,
        call: Call,
        context: &Arc<CallContext>,
    ) -> Result<Flight, Error> {
        // The token's names in the fleet: a revocation told by another
        // replica names its tag.
        let names = self.fleet.as_ref().map(|fleet| {
            let names = fleet.names(&call.subject);
            leader.share_as(names.tag());
            (fleet.clone(), names)
        });
        // Redis away or its breaker open: the flight is a replica's alone,
        // at the cost of one check (and none of the fleet path's state).
        let usable = names.as_ref().is_some_and(|(fleet, _)| fleet.usable_now());
        let permit = match usable {
            true => None,
            false => match self.permit(context.caller()) {
                Ok(permit) => Some(permit),
                Err(err) => {
                    leader.abandon(Err(err.clone()));
                    return Err(err);
                }
            },
        };
        let expires_at = call.expires_at;
        let upstream = self.upstream(&leader, call, context);
        let context = Arc::clone(context);
        let service = self.clone();
        // Bounded by the call timeout (and a fleet follower by the leader's
        // lease); if this caller gives up first, the call finishes in the
        // background for the others.
        Ok(leader.run(async move {
            match (names, usable) {
                // Boxed: the fleet's path is the larger state machine by
                // far (45 KiB with it inline), and every flight, on the
                // fleet or not, would be built and moved at that size.
                (Some((fleet, names)), true) => {
                    Box::pin(
                        upstream.call_in(&fleet, &names, expires_at, &context, |caller| {
                            service.permit(caller)
                        }),
                    )
                    .await
                }
                (names, _) => upstream.alone(permit, names, expires_at, &context).await,
            }
        }))
    }

    /// The call to Cognito for the call's subject, in its pool's region,
    /// with its client span (which the flight's followers link to).
    fn upstream(&self, leader: &Leader, call: Call, context: &CallContext) -> Upstream {
        let region = self
            .cognito
            .region(call.pool.as_ref().map(UserPoolId::region))
            .cloned()
            .unwrap_or_else(|| Arc::from(""));
        // Cognito's operations have the names of the RPCs that make them.
        let operation = match &call.subject {
            Subject::Token(_) => METHOD,
            Subject::User(..) => ADMIN_METHOD,
        };
        let trace = self
            .tracing
            .client_span(context.trace(), operation, &region);
        let upstream_span = trace.span().span_context().clone();
        if upstream_span.is_valid() {
            leader.set_span(upstream_span);
        }
        Upstream {
            cognito: self.cognito.clone(),
            subject: call.subject,
            pool: call.pool,
            deadline: call.deadline,
            region,
            trace,
            kept_copy: leader.kept_copy(),
            caller: context.caller().clone(),
        }
    }

    /// A permit for one call to Cognito; refused at once, never queued: a
    /// caller that waited here would only add to the load that caused the
    /// refusal.
    fn permit(&self, caller: &Caller) -> Result<Slot, Error> {
        self.limiter.take(caller).ok_or_else(|| {
            metrics::counter!(metric_names::SHED).increment(1);
            Error::Overloaded
        })
    }
}

/// The flight's outcome; `None` if `deadline` passed first.
async fn until(deadline: Option<Instant>, wait: Wait) -> Option<Result<Answer, Error>> {
    match deadline {
        None => Some(wait.outcome().await),
        Some(deadline) => tokio::time::timeout_at(deadline.into(), wait.outcome())
            .await
            .ok(),
    }
}

/// What a flight's leader knows of the call it makes.
struct Call {
    subject: Subject,
    pool: Option<UserPoolId>,
    /// The token's `exp`, if known.
    expires_at: Option<SystemTime>,
    /// The leading caller's deadline: no attempt waits for its turn under
    /// the rate limit past it.
    deadline: Option<Instant>,
}

#[tonic::async_trait]
impl IdentityProviderService for FacadeService {
    async fn get_user_auth_factors(
        &self,
        request: Request<GetUserAuthFactorsRequest>,
    ) -> Result<Response<GetUserAuthFactorsResponse>, Status> {
        let context = CallContext::of(request.extensions());
        let result = self.call(&request, &context).await;
        answer(result, &context)
    }

    async fn admin_get_user_auth_factors(
        &self,
        request: Request<AdminGetUserAuthFactorsRequest>,
    ) -> Result<Response<AdminGetUserAuthFactorsResponse>, Status> {
        let context = CallContext::of(request.extensions());
        let result = self.admin_call(&request, &context).await;
        answer(result, &context).map(|response| response.map(Into::into))
    }
}

/// The caller's answer, marked with where it came from (the public
/// `x-cognito-facade-source` metadata); the request id and the error also go
/// to the call's context.
fn answer(
    result: Result<Answer, Error>,
    context: &CallContext,
) -> Result<Response<GetUserAuthFactorsResponse>, Status> {
    let source = context.source().metadata_value();
    match result {
        Ok(answer) => {
            let mut response = Response::new(answer.response);
            let metadata = response.metadata_mut();
            metadata.insert(SOURCE_METADATA, source);
            if let Some(given) = answer.kept_since {
                let age = SystemTime::now()
                    .duration_since(given)
                    .unwrap_or_default()
                    .as_secs();
                metadata.insert(AGE_METADATA, MetadataValue::from(age));
            }
            if let Some(id) = answer.request_id {
                if let Some(value) = metadata_value(&id) {
                    metadata.insert(REQUEST_ID_METADATA, value);
                }
                context.set_request_id(id);
            }
            Ok(response)
        }
        Err(err) => {
            let mut status = err.to_status();
            status.metadata_mut().insert(SOURCE_METADATA, source);
            context.set_error(err);
            Err(status)
        }
    }
}

/// A request id as ASCII metadata, or `None` if Cognito sent something that
/// cannot be one.
fn metadata_value(id: &str) -> Option<MetadataValue<tonic::metadata::Ascii>> {
    id.parse().ok()
}
