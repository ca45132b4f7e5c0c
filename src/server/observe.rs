//! The one observer of every call of the RPC service: a tower layer around
//! the gRPC routes (and the request policies, [`crate::server::policy`]) that sees
//! each call as the caller will. It starts the call's one clock and its
//! typed [`CallContext`], and once the answer is known writes the RPC
//! metrics, the server span and the call's one log line from the same
//! elapsed time, for every call: answered by the handler, refused before it
//! (415, oversize, unknown method), or abandoned by its caller.
//!
//! What only the handler knows (where the answer came from, the pool, the
//! error, Cognito's request id) reaches it through that context alone.

use std::{
    borrow::Cow,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Duration,
};

use metrics::{Counter, Gauge, Histogram};
use tonic::{Code, Status, codegen::http};
use tower::{Layer, Service};
use tracing::{Instrument as _, Level};

use crate::{
    base::caller::{Caller, Callers, MalformedXfcc, forwarded_identity},
    base::metric_names,
    base::wire::Source,
    base::wire::{
        ADMIN_METHOD, ADMIN_METHOD_PATH, METHOD, METHOD_PATH, SERVICE_NAME, SOURCE_METADATA,
    },
    error::{Error, ErrorChain, code_name},
    observability::traces::{self, Tracing},
    rpc::call::CallContext,
    server::{listener::ConnInfo, tls::Peer},
};

/// The method label of calls to methods the service does not have.
const UNKNOWN_METHOD: &str = "unknown";

/// The server span name of calls to methods the service does not have.
const UNKNOWN_METHOD_PATH: &str = "cognito.idp.v1.IdentityProviderService/unknown";

/// The layer; see the module docs.
#[derive(Debug, Clone)]
pub(crate) struct ObserveLayer {
    tracing: Tracing,
    metrics: Arc<RpcMetrics>,
    callers: Arc<Callers>,
    trust_forwarded: bool,
}

impl ObserveLayer {
    /// The observer, reading trace context and starting server spans with
    /// `tracing`, and telling `callers` apart (from a trusted
    /// `x-forwarded-client-cert` too with `trust_forwarded`).
    pub(crate) fn new(tracing: Tracing, callers: Arc<Callers>, trust_forwarded: bool) -> Self {
        Self {
            tracing,
            metrics: Arc::new(RpcMetrics::new(callers.named())),
            callers,
            trust_forwarded,
        }
    }
}

/// The metadata Envoy and Istio's sidecars name the client certificate in.
const FORWARDED_CLIENT_CERT: &str = "x-forwarded-client-cert";

/// Who is calling, as the connection or a trusted forwarded header names
/// it: the client certificate's identity (mTLS), else with
/// `trust_forwarded` the `x-forwarded-client-cert`'s, else nobody.
fn connected_caller<B>(
    request: &http::Request<B>,
    callers: &Callers,
    trust_forwarded: bool,
) -> Result<Caller, Error> {
    match request
        .extensions()
        .get::<ConnInfo>()
        .map(|info| &info.peer)
    {
        Some(Peer::Named(identity)) => return Ok(callers.caller(Some(identity))),
        Some(Peer::Nameless) => return Ok(callers.nameless()),
        Some(Peer::Uncertified) | None => {}
    }
    if !trust_forwarded {
        return Ok(Caller::anonymous());
    }
    let Some(header) = request.headers().get(FORWARDED_CLIENT_CERT) else {
        return Ok(Caller::anonymous());
    };
    let header = header
        .to_str()
        .map_err(|_| Error::MalformedForwardedClientCert("it is not visible ASCII"))?;
    let identity = forwarded_identity(header)
        .map_err(|MalformedXfcc(why)| Error::MalformedForwardedClientCert(why))?;
    Ok(callers.caller(Some(&identity)))
}

/// Envoy's ext_authz service and its one method, observed like the RPC.
const AUTHZ_SERVICE: &str = "envoy.service.auth.v3.Authorization";
const CHECK: &str = "Check";
const CHECK_PATH: &str = "envoy.service.auth.v3.Authorization/Check";

/// The methods a call can be labelled with (see [`rpc_method`]).
const METHODS: [&str; 4] = [METHOD, ADMIN_METHOD, CHECK, UNKNOWN_METHOD];

/// gRPC codes 0 (OK) to 16 (UNAUTHENTICATED).
const CODES: usize = 17;

/// The RPC metrics' handles, each resolved from the recorder once, on the
/// first call that uses its label set, then reused: resolving builds the key
/// (a label vector) and looks it up in the recorder's registry, on every call
/// otherwise (bench/PROFILE.md). One set per observer, so per server: in
/// tests, each server records into the recorder of the thread that first
/// uses a handle, as before. A series still appears in `/metrics` only once
/// a call has used it.
struct RpcMetrics {
    in_flight: OnceLock<Gauge>,
    /// By caller (its label's slot, [`Caller::label_slot`]), then method,
    /// code and source (index in [`Source::ALL`]); a caller's set made on
    /// its first call.
    requests: Box<[OnceLock<Box<Requests>>]>,
    /// How many callers `--caller-weight` names.
    named: usize,
    /// By method.
    duration: [OnceLock<Histogram>; METHODS.len()],
}

/// One caller's request counters, by method, code and source.
type Requests = [[[OnceLock<Counter>; Source::ALL.len()]; CODES]; METHODS.len()];

impl std::fmt::Debug for RpcMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcMetrics").finish_non_exhaustive()
    }
}

impl RpcMetrics {
    /// The handles for `named` named callers (and `anonymous` and `other`).
    fn new(named: usize) -> Self {
        Self {
            in_flight: OnceLock::new(),
            requests: (0..named + 2).map(|_| OnceLock::new()).collect(),
            named,
            duration: Default::default(),
        }
    }

    fn in_flight(&self) -> &Gauge {
        self.in_flight
            .get_or_init(|| metrics::gauge!(metric_names::RPC_IN_FLIGHT))
    }

    fn record(
        &self,
        method: &'static str,
        code: Code,
        source: Source,
        elapsed: Duration,
        caller: &Caller,
    ) {
        let m = METHODS
            .iter()
            .position(|&known| known == method)
            .unwrap_or(METHODS.len() - 1);
        let c = usize::try_from(code as i32).map_or(Code::Unknown as usize, |c| c.min(CODES - 1));
        let s = Source::ALL
            .iter()
            .position(|&known| known == source)
            .unwrap_or_default();
        let slot = caller.label_slot(self.named).min(self.requests.len() - 1);
        let requests = self.requests[slot].get_or_init(Box::default);
        requests[m][c][s]
            .get_or_init(|| {
                metrics::counter!(
                    metric_names::RPC_REQUESTS,
                    "method" => METHODS[m],
                    "code" => code_name(code),
                    "source" => source.as_str(),
                    "caller" => caller.label().to_owned()
                )
            })
            .increment(1);
        self.duration[m]
            .get_or_init(|| metrics::histogram!(metric_names::RPC_DURATION, "method" => METHODS[m]))
            .record(elapsed.as_secs_f64());
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Observed<S> {
        Observed {
            inner,
            tracing: self.tracing.clone(),
            metrics: Arc::clone(&self.metrics),
            callers: Arc::clone(&self.callers),
            trust_forwarded: self.trust_forwarded,
        }
    }
}

/// The service [`ObserveLayer`] wraps around the routes.
#[derive(Debug, Clone)]
pub(crate) struct Observed<S> {
    inner: S,
    tracing: Tracing,
    metrics: Arc<RpcMetrics>,
    callers: Arc<Callers>,
    trust_forwarded: bool,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, ResB> Service<http::Request<B>> for Observed<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // Only the RPC service's calls are observed, not health or reflection.
        let Some(method) = rpc_method(request.uri().path()) else {
            return Box::pin(self.inner.call(request));
        };
        let parent = self.tracing.extract(request.headers());
        let (service, name) = match method {
            METHOD => (SERVICE_NAME, METHOD_PATH),
            ADMIN_METHOD => (SERVICE_NAME, ADMIN_METHOD_PATH),
            CHECK => (AUTHZ_SERVICE, CHECK_PATH),
            _ => (SERVICE_NAME, UNKNOWN_METHOD_PATH),
        };
        let caller = connected_caller(&request, &self.callers, self.trust_forwarded);
        let trace = self.tracing.server_span(parent, name, service, method);
        let (caller, refused) = match caller {
            Ok(caller) => (caller, None),
            Err(err) => (Caller::anonymous(), Some(err)),
        };
        let call = Call::start(
            method,
            CallContext::arriving(trace, caller),
            Arc::clone(&self.metrics),
        );
        if let Some(err) = refused {
            // Refused before the RPC: the line and metrics still say so.
            let mut response = err.to_status().into_http();
            call.context.set_error(err);
            call.finish(&mut response);
            return Box::pin(std::future::ready(Ok(response)));
        }
        request.extensions_mut().insert(Arc::clone(&call.context));
        let answer = self.inner.call(request);
        // Only at `debug`: a span per call at `info` cost ~8 µs of CPU
        // (bench/PROFILE.md). It places the SDK's own debug and trace events
        // inside the call.
        let span = tracing::debug_span!("rpc", rpc.service = service, rpc.method = method);
        Box::pin(
            async move {
                let mut response = answer.await?;
                call.finish(&mut response);
                Ok(response)
            }
            .instrument(span),
        )
    }
}

/// One call being observed. Dropped unfinished (its caller gave up, or the
/// connection went away), it still writes its metrics and line, as
/// CANCELLED.
struct Call {
    method: &'static str,
    metrics: Arc<RpcMetrics>,
    context: Arc<CallContext>,
    finished: bool,
}

impl Call {
    fn start(method: &'static str, context: Arc<CallContext>, metrics: Arc<RpcMetrics>) -> Self {
        metrics.in_flight().increment(1.0);
        Self {
            method,
            metrics,
            context,
            finished: false,
        }
    }

    /// Reads the answer and the context (marking an answer nobody marked as
    /// local on the way) and writes the call's metrics and line.
    fn finish<B>(mut self, response: &mut http::Response<B>) {
        let code = final_code(response);
        let source = self.context.source();
        if !response.headers().contains_key(SOURCE_METADATA) {
            response.headers_mut().insert(
                SOURCE_METADATA,
                http::HeaderValue::from_static(source.as_str()),
            );
        }
        let elapsed = self.context.arrived().elapsed();
        let outcome = Outcome::of(code, &self.context, response);
        self.record(code, source, elapsed, &outcome);
        self.finished = true;
    }

    /// The metrics and the line, from one `elapsed`.
    fn record(&self, code: Code, source: Source, elapsed: Duration, outcome: &Outcome<'_>) {
        let caller = self.context.caller();
        self.metrics
            .record(self.method, code, source, elapsed, caller);
        let latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let trace = self.context.trace();
        let logged = caller.logged();
        traces::end_server_span(trace, code, outcome.reason(), source.as_str(), logged);
        let (trace_id, span_id) = traces::ids(trace);
        log_line(
            &Line {
                method: self.method,
                caller: logged,
                decision: self.context.decision(),
                code: code_name(code),
                source,
                pool_id: self.context.pool(),
                verification: self.context.verification(),
                trace_id: &trace_id,
                span_id: &span_id,
                latency_us,
            },
            outcome,
        );
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.finished {
            let outcome = Outcome::Other {
                message: Cow::Borrowed("the caller went away before the answer"),
            };
            self.record(
                Code::Cancelled,
                Source::Local,
                self.context.arrived().elapsed(),
                &outcome,
            );
        }
        self.metrics.in_flight().decrement(1.0);
    }
}

/// What the line says about how the call ended.
enum Outcome<'a> {
    /// A success, with Cognito's request id if there is one.
    Ok { request_id: &'a str },
    /// One of this service's documented errors.
    Error(&'a Error),
    /// A status from the gRPC layer itself (no ErrorInfo): an unknown method,
    /// undecodable protobuf, a non-gRPC content type.
    Other { message: Cow<'a, str> },
}

impl<'a> Outcome<'a> {
    /// The ErrorInfo reason, if the call failed with one.
    fn reason(&self) -> &'static str {
        match self {
            Self::Error(err) => err.status().1,
            Self::Ok { .. } | Self::Other { .. } => "",
        }
    }

    fn of<B>(code: Code, context: &'a CallContext, response: &http::Response<B>) -> Self {
        // An ext_authz Check denied for the token's fault answers OK (the
        // denial is in its message) and logs as the refusal it is.
        if code == Code::Ok
            && let Some(err) = context.error()
        {
            return Self::Error(err);
        }
        if code == Code::Ok {
            return Self::Ok {
                request_id: context.request_id(),
            };
        }
        match context.error() {
            Some(err) => Self::Error(err),
            // The answer's own `grpc-message`, as the caller reads it.
            None => Self::Other {
                message: Status::from_header_map(response.headers())
                    .map(|status| Cow::Owned(status.message().to_owned()))
                    .unwrap_or_default(),
            },
        }
    }
}

/// Writes the call's line: the same fields on every line, empty where they do
/// not apply. Warnings for our side's trouble (the cause chain in `error`),
/// info for everything else.
/// The fields every call line has whatever its outcome.
struct Line<'a> {
    method: &'static str,
    /// Who called (`anonymous`, or `other` for an identity unfit to log).
    caller: &'a str,
    /// An ext_authz Check's decision; empty for the RPC.
    decision: &'static str,
    code: &'static str,
    source: Source,
    pool_id: &'a str,
    /// `unverified` when the token's key set could not be had.
    verification: &'static str,
    trace_id: &'a str,
    span_id: &'a str,
    latency_us: u64,
}

fn log_line(line: &Line<'_>, outcome: &Outcome<'_>) {
    macro_rules! line {
        ($level:expr, $message:literal, $reason:expr, $request_id:expr, $aws_code:expr, $error:expr) => {
            tracing::event!(
                $level,
                rpc.method = line.method,
                caller = line.caller,
                decision = line.decision,
                grpc.code = line.code,
                reason = $reason,
                source = line.source.as_str(),
                pool_id = line.pool_id,
                verification = line.verification,
                trace_id = line.trace_id,
                span_id = line.span_id,
                latency_us = line.latency_us,
                aws_request_id = $request_id,
                aws_error_code = $aws_code,
                error = $error,
                $message
            )
        };
    }
    match outcome {
        Outcome::Ok { request_id } => line!(Level::INFO, "call finished", "", *request_id, "", ""),
        Outcome::Error(err @ Error::Upstream(up)) => {
            let reason = err.status().1;
            let request_id = up.request_id.as_deref().unwrap_or_default();
            let aws_code = up.aws_error_code.as_deref().unwrap_or_default();
            if up.kind.passes_message() {
                line!(Level::INFO, "call failed", reason, request_id, aws_code, "")
            } else {
                let chain = ErrorChain(*err).to_string();
                line!(
                    Level::WARN,
                    "call failed",
                    reason,
                    request_id,
                    aws_code,
                    chain.as_str()
                )
            }
        }
        Outcome::Error(err) => {
            let reason = err.status().1;
            // Token errors never quote the token; the others are fixed text.
            let text = err.to_string();
            line!(Level::INFO, "call refused", reason, "", "", text.as_str())
        }
        Outcome::Other { message } => {
            line!(Level::INFO, "call refused", "", "", "", message.as_ref())
        }
    }
}

/// The method label of a request path, or `None` for other services.
/// Anything under the service but the one method is `unknown`, so hostile
/// paths cannot grow the label set. Envoy's Check is `Check`.
fn rpc_method(path: &str) -> Option<&'static str> {
    if path.strip_prefix('/') == Some(CHECK_PATH) {
        return Some(CHECK);
    }
    let method = path
        .strip_prefix('/')?
        .strip_prefix(SERVICE_NAME)?
        .strip_prefix('/')?;
    Some(match method {
        METHOD => METHOD,
        ADMIN_METHOD => ADMIN_METHOD,
        _ => UNKNOWN_METHOD,
    })
}

/// The call's gRPC code. An error answer is trailers-only, its status in the
/// headers; a success carries `grpc-status: 0` in trailers after the message.
fn final_code<B>(response: &http::Response<B>) -> Code {
    let Some(status) = response.headers().get("grpc-status") else {
        return Code::Ok;
    };
    status
        .to_str()
        .ok()
        .and_then(|s| s.parse::<i32>().ok())
        .map_or(Code::Unknown, Code::from_i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_only_the_rpc_service() {
        assert_eq!(
            rpc_method("/cognito.idp.v1.IdentityProviderService/GetUserAuthFactors"),
            Some("GetUserAuthFactors")
        );
        assert_eq!(
            rpc_method("/cognito.idp.v1.IdentityProviderService/AdminGetUserAuthFactors"),
            Some("AdminGetUserAuthFactors")
        );
        assert_eq!(
            rpc_method("/cognito.idp.v1.IdentityProviderService/DropTables"),
            Some("unknown")
        );
        assert_eq!(rpc_method("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            rpc_method("/cognito.idp.v1.IdentityProviderServiceX/Get"),
            None
        );
        assert_eq!(rpc_method(""), None);
    }

    fn response_with_status(code: Option<&str>) -> http::Response<tonic::body::Body> {
        let mut response = http::Response::new(tonic::body::Body::default());
        if let Some(code) = code {
            response
                .headers_mut()
                .insert("grpc-status", code.parse().unwrap());
        }
        response
    }

    #[test]
    fn reads_the_final_code() {
        assert_eq!(final_code(&response_with_status(None)), Code::Ok);
        assert_eq!(
            final_code(&response_with_status(Some("16"))),
            Code::Unauthenticated
        );
        assert_eq!(final_code(&response_with_status(Some("x"))), Code::Unknown);
    }
}
