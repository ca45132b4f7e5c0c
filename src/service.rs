//! The `cognito.idp.v1.IdentityProviderService` RPC: token in, Cognito's
//! answer (or a precise status) out, and one log line per call.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::Semaphore;

use tonic::{Request, Response, Status, metadata::MetadataValue};
use tracing::Instrument as _;

use crate::{
    cognito::{Answer, Cognito},
    economy::{Economy, EconomyConfig, Ticket, Wait},
    error::{Error, ErrorChain, UpstreamError, UpstreamErrorKind, code_name},
    metrics as names,
    proto::{
        GetUserAuthFactorsRequest, GetUserAuthFactorsResponse,
        identity_provider_service_server::IdentityProviderService,
    },
    server::SERVICE_NAME,
    token,
};

/// The method, as logged and as labelled in metrics.
pub const METHOD: &str = "GetUserAuthFactors";

/// Response metadata that carries Cognito's request id.
pub const REQUEST_ID_METADATA: &str = "x-amzn-requestid";

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

/// When a call arrived, stamped by [`stamp_arrival`] before the request body
/// is read, so the caller's deadline is measured from the same instant as
/// tonic's.
#[derive(Debug, Clone, Copy)]
struct Arrival(Instant);

/// A tonic interceptor that records when each call arrived.
pub fn stamp_arrival(mut request: Request<()>) -> Result<Request<()>, Status> {
    request.extensions_mut().insert(Arrival(Instant::now()));
    Ok(request)
}

/// The service implementation.
#[derive(Debug, Clone)]
pub struct FacadeService {
    cognito: Cognito,
    /// One permit per upstream call in flight; none left means shed.
    limiter: Arc<Semaphore>,
    /// Single flight and cache.
    economy: Arc<Economy>,
}

impl FacadeService {
    /// A service that answers through `cognito`, with at most
    /// `max_concurrent_requests` upstream calls in flight.
    pub fn new(cognito: Cognito, max_concurrent_requests: usize, economy: EconomyConfig) -> Self {
        Self {
            cognito,
            limiter: Arc::new(Semaphore::new(max_concurrent_requests)),
            economy: Economy::new(economy),
        }
    }

    async fn call(
        &self,
        request: Request<GetUserAuthFactorsRequest>,
        arrived: Instant,
    ) -> Result<Answer, Error> {
        let caller_timeout = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .and_then(parse_grpc_timeout);
        let token = token::extract(&request.get_ref().access_token, request.metadata())?;
        let wait = match self.economy.ticket(&token) {
            Ticket::Cached(answer) => return Ok(answer),
            Ticket::Follow(flight) => Wait::Follow(flight),
            Ticket::Lead(leader) => {
                // Refused at once, never queued: a caller that waited here
                // would only add to the load that caused the refusal.
                let Ok(permit) = Arc::clone(&self.limiter).try_acquire_owned() else {
                    metrics::counter!(names::SHED).increment(1);
                    leader.abandon(Err(Error::Overloaded));
                    return Err(Error::Overloaded);
                };
                let cognito = self.cognito.clone();
                // Bounded by the call timeout; if this caller gives up first,
                // the call finishes in the background for the others.
                Wait::Lead(leader.run(async move {
                    let started = Instant::now();
                    let result = cognito.get_user_auth_factors(&token).await;
                    record_upstream(&result, started.elapsed());
                    drop(permit);
                    result.map_err(Error::from)
                }))
            }
        };
        // A deadline too far away to represent is no deadline.
        let deadline =
            caller_timeout.and_then(|timeout| arrived.checked_add(upstream_budget(timeout)));
        match deadline {
            None => wait.outcome().await,
            Some(deadline) => tokio::time::timeout_at(deadline.into(), wait.outcome())
                .await
                .unwrap_or_else(|_| Err(UpstreamError::deadline().into())),
        }
    }
}

#[tonic::async_trait]
impl IdentityProviderService for FacadeService {
    async fn get_user_auth_factors(
        &self,
        request: Request<GetUserAuthFactorsRequest>,
    ) -> Result<Response<GetUserAuthFactorsResponse>, Status> {
        // The span names only the method, which the line that ends the call
        // carries too; it is there to place the SDK's own debug and trace
        // events inside a call, so it costs nothing unless those are on
        // (a span per call at `info` was ~8 µs of CPU: bench/PROFILE.md).
        // The outcome goes on that last line, not into the span: recording
        // fields later makes the formatter re-serialize them all each time.
        let span = tracing::debug_span!("rpc", rpc.service = SERVICE_NAME, rpc.method = METHOD);
        async move {
            let arrived = request
                .extensions()
                .get::<Arrival>()
                .map_or_else(Instant::now, |arrival| arrival.0);
            let result = self.call(request, arrived).await;
            let latency_us = u64::try_from(arrived.elapsed().as_micros()).unwrap_or(u64::MAX);
            match result {
                Ok(answer) => {
                    tracing::info!(
                        rpc.method = METHOD,
                        grpc.code = code_name(tonic::Code::Ok),
                        latency_us,
                        aws_request_id = answer.request_id.as_deref(),
                        "call finished"
                    );
                    let mut response = Response::new(answer.response);
                    if let Some(id) = answer.request_id.as_deref().and_then(metadata_value) {
                        response.metadata_mut().insert(REQUEST_ID_METADATA, id);
                    }
                    Ok(response)
                }
                Err(err) => {
                    log_failure(&err, latency_us);
                    Err(err.into())
                }
            }
        }
        .instrument(span)
        .await
    }
}

/// The upstream call metrics.
fn record_upstream(result: &Result<Answer, UpstreamError>, elapsed: Duration) {
    let outcome: metrics::SharedString = match result {
        Ok(_) => "ok".into(),
        Err(err) => match &err.aws_error_code {
            // Only modeled codes become labels: an unmodeled code is free
            // text from the upstream and could grow the label set.
            Some(code) if UpstreamErrorKind::from_aws_code(code).is_some() => code.clone().into(),
            _ => err.kind.status().1.into(),
        },
    };
    metrics::counter!(names::UPSTREAM_REQUESTS, "outcome" => outcome).increment(1);
    metrics::histogram!(names::UPSTREAM_DURATION).record(elapsed.as_secs_f64());
}

/// One line per failed call, with its code, reason and latency: warnings for
/// our side's trouble, info for the caller's.
fn log_failure(err: &Error, latency_us: u64) {
    let (code, reason) = err.status();
    let code = code_name(code);
    match err {
        Error::Token(_) => tracing::info!(
            rpc.method = METHOD,
            grpc.code = code,
            reason,
            latency_us,
            error = %err,
            "call refused"
        ),
        Error::Upstream(up) if up.kind.passes_message() => tracing::info!(
            rpc.method = METHOD,
            grpc.code = code,
            reason,
            latency_us,
            aws_request_id = up.request_id.as_deref(),
            aws_error_code = up.aws_error_code.as_deref(),
            "call failed"
        ),
        Error::Upstream(up) => tracing::warn!(
            rpc.method = METHOD,
            grpc.code = code,
            reason,
            latency_us,
            aws_request_id = up.request_id.as_deref(),
            error = %ErrorChain(err),
            "call failed"
        ),
        // Under overload a line per shed call would add to the trouble; the
        // shed counter tells the story.
        Error::Overloaded => {
            tracing::debug!(rpc.method = METHOD, grpc.code = code, reason, "call shed")
        }
        Error::RequestTooLarge => tracing::info!(
            rpc.method = METHOD,
            grpc.code = code,
            reason,
            latency_us,
            "call refused"
        ),
    }
}

/// A request id as ASCII metadata, or `None` if Cognito sent something that
/// cannot be one.
fn metadata_value(id: &str) -> Option<MetadataValue<tonic::metadata::Ascii>> {
    id.parse().ok()
}

/// Parses a `grpc-timeout` value: at most 8 digits and a unit (H, M, S, m, u,
/// n), per <https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md>.
/// Returns `None` for anything else; tonic ignores such values too.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
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
