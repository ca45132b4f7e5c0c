//! The only module that touches the AWS SDK: builds the Cognito clients
//! once, makes the GetUserAuthFactors and AdminGetUserAuthFactors calls, and
//! converts their output and errors.
//!
//! Layer 4, above `error`. `convert` turns the SDK's output into the proto
//! and its errors into the table; the pacing of attempts under the rate
//! limit, the attempts' interceptor and the client are here.
//!
//! Files, lowest first: `convert`, `clients`.

mod clients;
mod convert;

use aws_config::{
    BehaviorVersion, Region, environment::EnvironmentVariableRegionProvider,
    meta::region::RegionProviderChain, profile::ProfileFileRegionProvider, retry::RetryConfig,
    timeout::TimeoutConfig,
};
use aws_sdk_cognitoidentityprovider::{
    Client,
    error::{ProvideErrorMetadata, SdkError},
    operation::{
        RequestId as _,
        admin_get_user_auth_factors::{
            AdminGetUserAuthFactorsError, AdminGetUserAuthFactorsOutput,
        },
        get_user_auth_factors::{GetUserAuthFactorsError, GetUserAuthFactorsOutput},
    },
    types::AuthFactorType as SdkAuthFactor,
};
use aws_smithy_runtime_api::{
    box_error::BoxError,
    client::{
        http::{
            HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings,
            SharedHttpClient, SharedHttpConnector,
        },
        interceptors::{Intercept, context::FinalizerInterceptorContextRef},
        orchestrator::HttpRequest,
        result::ConnectorError,
        retries::RequestAttempts,
        runtime_components::RuntimeComponents,
    },
    http::Response as HttpResponse,
};
use aws_smithy_types::config_bag::ConfigBag;
use opentelemetry::{KeyValue, trace::TraceContextExt as _};

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use self::clients::{Clients, https_client, sdk_config};
use self::convert::{
    FactorsOutput, admin_reason_code, to_proto, token_reason_code, upstream_error,
};
use crate::{
    base::caller::Caller,
    base::expiring::{RandomError, TokenKeyer},
    base::metric_names,
    base::wire::Operation,
    error::{UpstreamError, UpstreamErrorKind},
    proto::{AuthFactorType, GetUserAuthFactorsResponse, MfaType},
    token::{AccessToken, user::Subject},
};

/// Default TCP+TLS connect timeout to Cognito: a regional endpoint connects in
/// tens of milliseconds; a second means it is not coming.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default timeout of one HTTP attempt; leaves room for a retry inside the
/// call timeout.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default bound on one upstream call, retries and backoff included. A
/// caller's shorter gRPC deadline wins.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Default attempts per upstream call (the AWS SDKs' standard retry mode).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Default initial retry backoff. The SDK doubles it per retry with full
/// jitter; its own default (1s) would spend most of a 5s call budget waiting.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(100);

/// How the service reaches Cognito.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// The default region (for tokens without a configured pool); `None`
    /// leaves it to the environment and the AWS profile.
    pub region: Option<String>,
    /// Endpoint URL override, for every region.
    pub endpoint: Option<String>,
    /// Endpoint URL overrides by region, ahead of [`Self::endpoint`].
    pub region_endpoints: BTreeMap<String, String>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Timeout of one attempt.
    pub attempt_timeout: Duration,
    /// Timeout of a whole call, retries included.
    pub call_timeout: Duration,
    /// Attempts per call.
    pub max_attempts: u32,
    /// Initial retry backoff.
    pub retry_backoff: Duration,
}

impl UpstreamConfig {
    /// The endpoint override that applies to `region`, if any.
    pub fn endpoint_for(&self, region: &str) -> Option<&str> {
        self.region_endpoints
            .get(region)
            .or(self.endpoint.as_ref())
            .map(String::as_str)
    }
}

impl Default for UpstreamConfig {
    /// The documented defaults, no region and no endpoint override.
    fn default() -> Self {
        Self {
            region: None,
            endpoint: None,
            region_endpoints: BTreeMap::new(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            retry_backoff: DEFAULT_RETRY_BACKOFF,
        }
    }
}

/// Why the Cognito client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// No region in the flags, the environment or the AWS profile.
    #[error(
        "no AWS region: pass --region <REGION> or set AWS_REGION (for example AWS_REGION=eu-west-1)"
    )]
    NoRegion,
    /// No key for the callers' MACs.
    #[error(transparent)]
    Random(#[from] RandomError),
}

/// Gives every HTTP attempt to Cognito (retries included, as Cognito counts
/// them) its turn under the upstream rate limit, and hears of Cognito's
/// throttling. Implemented above this layer (`crate::quota`); without a
/// limit there is none, and attempts go straight out.
pub trait AttemptPacer: fmt::Debug + Send + Sync + 'static {
    /// Waits for an attempt's turn in `region`; a turn that would come after
    /// the wait bound or too close to `deadline` (the caller's, or the end of
    /// the call timeout) is refused at once with the limiter's retry-after.
    /// The call is `caller`'s: while turns are short, they go round robin
    /// among the callers waiting.
    fn turn(&self, region: &Arc<str>, deadline: Instant, caller: &Caller) -> TurnFuture;

    /// Cognito answered an attempt in `region` with
    /// `TooManyRequestsException`; `caller` (64 bits of a keyed MAC of the
    /// token) tells one token's calls from another's (Cognito also
    /// throttles one user alone).
    fn throttled(&self, region: &Arc<str>, caller: u64);
}

/// An attempt's turn: `Err` carries the retry-after of a refused one.
pub(crate) type TurnFuture = Pin<Box<dyn Future<Output = Result<(), Duration>> + Send>>;

/// What the pacer needs to know of the call an attempt belongs to.
#[derive(Debug, Clone)]
struct PacedCall {
    /// Who is calling (the flight's leader's caller).
    who: Caller,
    /// The caller's deadline or the end of the call timeout, the sooner.
    deadline: Instant,
    /// 64 bits of a keyed MAC of the token (the crate's one, under a key of
    /// this process), held only for the call: tells a throttled user from a
    /// throttled account.
    caller: u64,
}

tokio::task_local! {
    /// The call being made, for [`PacedConnector`] and [`Attempts`]: the SDK
    /// hands them only the HTTP request (or its outcome), in the caller's
    /// task.
    static PACED_CALL: PacedCall;
}

/// An attempt the rate limiter gave no turn: the connector's error, turned
/// back into [`UpstreamErrorKind::RateLimited`] by [`upstream_error`]. The
/// SDK does not retry a connector's "user" error.
#[derive(Debug, thiserror::Error)]
#[error("no turn under the upstream rate limit; one is expected in {0:?}")]
struct NoTurn(Duration);

/// The SDK's HTTPS client (rustls on aws-lc), each attempt first taking its
/// turn from the pacer.
#[derive(Debug)]
struct PacedClient {
    inner: SharedHttpClient,
    region: Arc<str>,
    pacer: Arc<dyn AttemptPacer>,
}

impl HttpClient for PacedClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(PacedConnector {
            inner: self.inner.http_connector(settings, components),
            region: Arc::clone(&self.region),
            pacer: Arc::clone(&self.pacer),
        })
    }
}

#[derive(Debug)]
struct PacedConnector {
    inner: SharedHttpConnector,
    region: Arc<str>,
    pacer: Arc<dyn AttemptPacer>,
}

impl HttpConnector for PacedConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        // Outside a paced call (it cannot happen), an attempt gets the
        // default call timeout to find its turn in.
        let turn = PACED_CALL
            .try_with(|call| self.pacer.turn(&self.region, call.deadline, &call.who))
            .unwrap_or_else(|_| {
                let deadline = Instant::now() + DEFAULT_CALL_TIMEOUT;
                self.pacer
                    .turn(&self.region, deadline, &Caller::anonymous())
            });
        let inner = self.inner.clone();
        HttpConnectorFuture::new(async move {
            turn.await
                .map_err(|retry_after| ConnectorError::user(Box::new(NoTurn(retry_after))))?;
            inner.call(request).await
        })
    }
}

/// A GetUserAuthFactors answer, ready for the caller.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The response message.
    pub response: GetUserAuthFactorsResponse,
    /// Cognito's request id (`x-amzn-RequestId`), if it sent one.
    pub request_id: Option<String>,
    /// For an answer from the fleet's cache: when it stops being fresh, so
    /// a replica's own cache keeps it no longer. `None`: fresh from Cognito.
    pub fresh_until: Option<std::time::SystemTime>,
    /// For a kept answer served while Cognito is unavailable
    /// (`--stale-if-error`): when Cognito gave it. `None`: not stale.
    pub kept_since: Option<std::time::SystemTime>,
    /// For an answer from the fleet (its cache or another replica's flight):
    /// when Cognito gave it. `None`: fresh from Cognito, now.
    pub given_at: Option<std::time::SystemTime>,
}

/// The Cognito user-pools clients, one per region, built once at start-up
/// and shared by every call (cheap to clone; each pools its connections).
#[derive(Debug, Clone)]
pub struct Cognito {
    /// The client for tokens without a configured pool (opaque mode).
    default: Option<RegionalClient>,
    /// The client of each region a configured pool lives in.
    by_region: Arc<HashMap<String, RegionalClient>>,
    /// With AdminGetUserAuthFactors on, the client of each pool's region
    /// that signs with the service's own credentials (the default chain).
    signed: Arc<HashMap<String, RegionalClient>>,
    /// With a pacer (a rate limit), what tells the callers apart.
    paced: Option<TokenKeyer>,
    /// The bound of a whole call (`--call-timeout`).
    call_timeout: Duration,
}

#[derive(Debug, Clone)]
struct RegionalClient {
    region: Arc<str>,
    client: Client,
}

impl Cognito {
    /// Builds a client for the default region (the flag, then aws-config's
    /// standard chain: env vars, profile files) and one for each region in
    /// `pool_regions`, with `config`'s overrides. Without pools, a default
    /// region is required. GetUserAuthFactors is `noAuth` in the model, so
    /// its clients load no credentials, and the region chain deliberately
    /// skips the instance metadata service: start-up never waits on the
    /// network. With `signed` (AdminGetUserAuthFactors on), each pool's
    /// region also gets a client that signs with the default credential
    /// chain, which loads credentials on the first call, not here. With a
    /// `pacer`, every HTTP attempt takes its turn from it.
    pub async fn from_config(
        config: &UpstreamConfig,
        pool_regions: &BTreeSet<String>,
        signed: bool,
        pacer: Option<Arc<dyn AttemptPacer>>,
    ) -> Result<Self, SetupError> {
        let default_region = RegionProviderChain::first_try(config.region.clone().map(Region::new))
            .or_else(EnvironmentVariableRegionProvider::new())
            .or_else(ProfileFileRegionProvider::new())
            .region()
            .await;
        // The credential chain's own calls (STS for web identity) go to the
        // default region, else a pool's.
        let Some(region) = default_region
            .clone()
            .or_else(|| pool_regions.first().cloned().map(Region::new))
        else {
            return Err(SetupError::NoRegion);
        };
        let shared = sdk_config(config, region.clone(), false).await;
        let with_credentials = if signed {
            Some(sdk_config(config, region, true).await)
        } else {
            None
        };
        let maker = Clients {
            config,
            // One connection pool for every region, as the SDK's own client.
            inner: pacer.as_ref().map(|_| https_client()),
            pacer,
        };
        Ok(Self {
            paced: match &maker.pacer {
                Some(_) => Some(TokenKeyer::random()?),
                None => None,
            },
            call_timeout: config.call_timeout,
            default: default_region.map(|region| maker.client(&shared, region.as_ref())),
            by_region: Arc::new(maker.each(&shared, pool_regions)),
            signed: Arc::new(match &with_credentials {
                Some(signing) => maker.each(signing, pool_regions),
                None => HashMap::new(),
            }),
        })
    }

    /// The region a call for `pool_region` (or, for `None`, a token without
    /// a configured pool) goes to.
    pub fn region(&self, pool_region: Option<&str>) -> Option<&Arc<str>> {
        self.client(pool_region).map(|c| &c.region)
    }

    fn client(&self, pool_region: Option<&str>) -> Option<&RegionalClient> {
        match pool_region {
            Some(region) => self.by_region.get(region),
            None => self.default.as_ref(),
        }
    }

    /// Calls GetUserAuthFactors with `token`, in the region of its pool
    /// (`pool_region`) or, for `None`, the default region: [`Self::factors`]
    /// for a token's owner (the benchmarks' way in to the SDK alone).
    pub async fn get_user_auth_factors(
        &self,
        token: &AccessToken,
        pool_region: Option<&str>,
        deadline: Option<Instant>,
        caller: &Caller,
    ) -> Result<Answer, UpstreamError> {
        let subject = Subject::Token(token.clone());
        self.factors(&subject, pool_region, deadline, caller).await
    }

    /// Asks Cognito for `subject`'s factors: GetUserAuthFactors with a
    /// token, in the region of its pool (`pool_region`) or, for `None`, the
    /// default region; AdminGetUserAuthFactors, signed, for a user named by
    /// pool and username. Under a rate limit, no attempt waits for its turn
    /// past `deadline`.
    pub(crate) async fn factors(
        &self,
        subject: &Subject,
        pool_region: Option<&str>,
        deadline: Option<Instant>,
        caller: &Caller,
    ) -> Result<Answer, UpstreamError> {
        // Validated configuration builds a client for every pool's region
        // (signing ones with AdminGetUserAuthFactors on) and a default one
        // whenever there are no pools.
        let unbuilt = || UpstreamError::new(UpstreamErrorKind::RequestConstruction);
        match subject {
            Subject::Token(token) => {
                let regional = self.client(pool_region).ok_or_else(unbuilt)?;
                let send = regional
                    .client
                    .get_user_auth_factors()
                    .access_token(token.expose())
                    .send();
                let output = self.paced(send, subject, deadline, caller).await;
                answer(output.map_err(|err| {
                    upstream_error(err, Operation::GetUserAuthFactors, token_reason_code)
                })?)
            }
            Subject::User(pool, username) => {
                let regional = self.signed.get(pool.region()).ok_or_else(unbuilt)?;
                let send = regional
                    .client
                    .admin_get_user_auth_factors()
                    .user_pool_id(pool.as_str())
                    .username(username.expose())
                    .send();
                let output = self.paced(send, subject, deadline, caller).await;
                answer(output.map_err(|err| {
                    upstream_error(err, Operation::AdminGetUserAuthFactors, admin_reason_code)
                })?)
            }
        }
    }

    /// `send`, each attempt under the rate limit (if there is one) as
    /// `caller`'s call for `subject`, none waiting past `deadline`.
    async fn paced<T>(
        &self,
        send: impl Future<Output = T>,
        subject: &Subject,
        deadline: Option<Instant>,
        caller: &Caller,
    ) -> T {
        let Some(callers) = &self.paced else {
            return send.await;
        };
        let timeout = Instant::now() + self.call_timeout;
        let call = PacedCall {
            who: caller.clone(),
            deadline: deadline.map_or(timeout, |deadline| deadline.min(timeout)),
            caller: callers.key(subject.keyed()).short(),
        };
        PACED_CALL.scope(call, send).await
    }
}

/// Cognito's answer, ready for the caller. The model requires a username of
/// 1 to 128 characters; the SDK lets an absent one through as "".
fn answer<O: FactorsOutput + aws_sdk_cognitoidentityprovider::operation::RequestId>(
    output: O,
) -> Result<Answer, UpstreamError> {
    let request_id = output.request_id().map(str::to_owned);
    if output.username().is_empty() {
        let mut err = UpstreamError::new(UpstreamErrorKind::BadResponse);
        err.request_id = request_id;
        return Err(err);
    }
    Ok(Answer {
        request_id,
        response: to_proto(&output),
        fresh_until: None,
        kept_since: None,
        given_at: None,
    })
}

/// Watches each HTTP attempt of a call: tells the pacer (if any) of
/// Cognito's throttling, and records the attempt (its number and HTTP
/// status) on the client span the call runs in, if one is recording:
/// retries show as one event each.
#[derive(Debug)]
struct Attempts {
    region: Arc<str>,
    pacer: Option<Arc<dyn AttemptPacer>>,
}

impl Intercept for Attempts {
    fn name(&self) -> &'static str {
        "Attempts"
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(pacer) = &self.pacer
            && throttled(context)
        {
            let caller = PACED_CALL.try_with(|call| call.caller).unwrap_or_default();
            pacer.throttled(&self.region, caller);
        }
        let trace = opentelemetry::Context::current();
        let span = trace.span();
        if !span.is_recording() {
            return Ok(());
        }
        let attempt = cfg.load::<RequestAttempts>().map_or(1, |a| a.attempts());
        let mut attributes = vec![KeyValue::new("attempt", i64::from(attempt))];
        match context.response() {
            Some(response) => {
                let status = KeyValue::new(
                    "http.response.status_code",
                    i64::from(response.status().as_u16()),
                );
                span.set_attribute(status.clone());
                attributes.push(status);
            }
            None => attributes.push(KeyValue::new("error.type", "no HTTP response")),
        }
        if attempt > 1 {
            span.set_attribute(KeyValue::new(
                "http.request.resend_count",
                i64::from(attempt - 1),
            ));
        }
        span.add_event("attempt", attributes);
        Ok(())
    }
}

/// Whether an attempt ended in Cognito's `TooManyRequestsException`.
fn throttled(context: &FinalizerInterceptorContextRef<'_>) -> bool {
    let Some(Err(err)) = context.output_or_error() else {
        return false;
    };
    let Some(err) = err.as_operation_error() else {
        return false;
    };
    matches!(
        err.downcast_ref::<GetUserAuthFactorsError>(),
        Some(GetUserAuthFactorsError::TooManyRequestsException(_))
    ) || matches!(
        err.downcast_ref::<AdminGetUserAuthFactorsError>(),
        Some(AdminGetUserAuthFactorsError::TooManyRequestsException(_))
    )
}
