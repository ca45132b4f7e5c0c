//! The one mapping table: every way a call can fail, and the gRPC status, the
//! `google.rpc.ErrorInfo` reason and the details each one answers with.
//!
//! The README's error table documents the same rows; `tests/api/errors.rs`
//! checks that the two agree.
//!
//! Layer 3, above `token` and `base`. Its unit tests are in `tests.rs`.
//!
//! Files, lowest first: `kinds` (Cognito's outcomes, the upstream table's
//! rows), then this one.

mod kinds;

pub(crate) use self::kinds::KeptAnswer;
pub use self::kinds::UpstreamErrorKind;

use std::{
    collections::HashMap, error::Error as StdError, num::NonZeroU32, sync::Arc, time::Duration,
};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::token::{
    Refusal, TokenError,
    user::{USERNAME_FIELD, UsernameError},
};

/// The `ErrorInfo.domain` of every error this service returns.
pub const ERROR_DOMAIN: &str = "cognito-idp.amazonaws.com";

/// How long a throttled caller is told to wait (`google.rpc.RetryInfo`).
/// Cognito sends no `Retry-After`; one second matches the SDK's base backoff
/// scale for throttling errors.
pub const THROTTLE_RETRY_DELAY: Duration = Duration::from_secs(1);

/// The canonical name of a gRPC code, as logs and the README spell it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// How long a shed caller is told to wait (`google.rpc.RetryInfo`): long
/// enough for in-flight calls (tens of milliseconds each) to drain.
pub(crate) const OVERLOAD_RETRY_DELAY: Duration = Duration::from_millis(250);

/// An upstream call that did not succeed, with what Cognito said about it.
/// Cheap to clone: every waiter of a coalesced call gets its own copy.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind:?} (aws_error_code={aws_error_code:?}, aws_request_id={request_id:?})")]
pub struct UpstreamError {
    /// Which row of the table it is.
    pub kind: UpstreamErrorKind,
    /// Cognito's message, if it sent one.
    pub message: Option<String>,
    /// Cognito's error code (`__type`), if it sent one.
    pub aws_error_code: Option<String>,
    /// Cognito's request id, if a response arrived.
    pub request_id: Option<String>,
    /// `InvalidParameterException.reasonCode`, if present.
    pub reason_code: Option<Box<str>>,
    /// For [`UpstreamErrorKind::RateLimited`]: when the limiter expects a
    /// turn to be free, in ms (kept small: every waiter holds a copy).
    pub retry_after_ms: Option<NonZeroU32>,
    /// For a refusal read from the fleet's memory: the Unix second after
    /// which the fleet no longer remembers it, so no replica keeps it
    /// longer (kept small: every waiter holds a copy).
    pub remembered_until_s: Option<NonZeroU32>,
    /// The underlying cause, for logs only.
    #[source]
    pub source: Option<Arc<dyn StdError + Send + Sync>>,
}

impl UpstreamError {
    /// An error of `kind` with nothing else known.
    pub fn new(kind: UpstreamErrorKind) -> Self {
        Self {
            kind,
            message: None,
            aws_error_code: None,
            request_id: None,
            reason_code: None,
            retry_after_ms: None,
            remembered_until_s: None,
            source: None,
        }
    }

    /// The rate limiter gave the call no turn; one is expected after
    /// `retry_after`.
    pub fn rate_limited(retry_after: Duration) -> Self {
        let mut err = Self::new(UpstreamErrorKind::RateLimited);
        let ms = retry_after.as_micros().div_ceil(1000).max(1);
        err.retry_after_ms = NonZeroU32::new(u32::try_from(ms).unwrap_or(u32::MAX));
        err
    }

    /// How long the caller should wait before retrying, where that is known:
    /// Cognito's throttling, or the limiter's own estimate (at least 1 ms).
    pub fn retry_delay(&self) -> Option<Duration> {
        match self.kind {
            UpstreamErrorKind::TooManyRequests => Some(THROTTLE_RETRY_DELAY),
            UpstreamErrorKind::RateLimited => {
                Some(self.retry_after_ms.map_or(THROTTLE_RETRY_DELAY, |ms| {
                    Duration::from_millis(ms.get().into())
                }))
            }
            _ => None,
        }
    }

    /// The caller's deadline ran out before Cognito answered.
    pub fn deadline() -> Self {
        Self::new(UpstreamErrorKind::Timeout)
    }
}

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request carried no usable access token.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The token was refused here, without a call to Cognito.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// Cognito did not answer with a success.
    #[error("upstream: {0}")]
    Upstream(#[from] UpstreamError),
    /// Too many upstream calls in flight (`--max-concurrent-requests`).
    #[error("too many calls in flight; retry later")]
    Overloaded,
    /// The request message is larger than the server decodes.
    #[error(
        "the request message is larger than {} bytes",
        crate::base::wire::MAX_REQUEST_BYTES
    )]
    RequestTooLarge,
    /// No room for a new request body in its connection's share
    /// (`--max-connection-request-bytes`) or the budget
    /// (`--max-request-bytes-in-flight`).
    #[error("too many request bytes in flight; retry later")]
    RequestBytesExhausted,
    /// The request's body did not arrive whole within
    /// `--request-body-timeout`.
    #[error("the request's body did not arrive whole in time")]
    RequestBodyTimeout,
    /// `--trust-forwarded-client-cert` is on and the call's
    /// `x-forwarded-client-cert` cannot be read.
    #[error("x-forwarded-client-cert names no caller as Envoy writes it: {0}")]
    MalformedForwardedClientCert(&'static str),
    /// AdminGetUserAuthFactors from a caller that `--admin-callers` does not
    /// name.
    #[error(
        "this caller may not call AdminGetUserAuthFactors: the service's --admin-callers does not name it"
    )]
    CallerNotAllowed,
    /// AdminGetUserAuthFactors for a pool that is not one of
    /// `--user-pool-id`.
    #[error("the user pool is not one this service serves")]
    UserPoolNotAllowed,
    /// AdminGetUserAuthFactors with a username Cognito would refuse.
    #[error(transparent)]
    InvalidUsername(#[from] UsernameError),
}

impl Error {
    /// Whether this is Cognito's definitive word on the token (a refusal
    /// that replaces its kept answer): every copy of the token's answer,
    /// on every replica and in the fleet, goes.
    pub(crate) fn revokes(&self) -> bool {
        matches!(self, Self::Upstream(up) if up.kind.kept_answer() == KeptAnswer::Goes)
    }

    /// The gRPC code and `ErrorInfo.reason` of this error.
    pub fn status(&self) -> (Code, &'static str) {
        match self {
            Self::Token(err) => token_status(err),
            Self::Refused(refusal) => refusal_status(*refusal),
            Self::Upstream(err) => err.kind.status(),
            Self::Overloaded => (Code::ResourceExhausted, "OVERLOADED"),
            Self::RequestTooLarge => (Code::ResourceExhausted, "REQUEST_TOO_LARGE"),
            Self::RequestBytesExhausted => (Code::ResourceExhausted, "REQUEST_BYTES_EXHAUSTED"),
            Self::RequestBodyTimeout => (Code::DeadlineExceeded, "REQUEST_BODY_TIMEOUT"),
            Self::MalformedForwardedClientCert(_) => {
                (Code::InvalidArgument, "MALFORMED_FORWARDED_CLIENT_CERT")
            }
            Self::CallerNotAllowed => (Code::PermissionDenied, "CALLER_NOT_ALLOWED"),
            Self::UserPoolNotAllowed => (Code::PermissionDenied, "USER_POOL_NOT_ALLOWED"),
            Self::InvalidUsername(_) => (Code::InvalidArgument, "INVALID_USERNAME"),
        }
    }
}

/// The gRPC code and reason of each way a token can be unusable.
pub(crate) fn token_status(err: &TokenError) -> (Code, &'static str) {
    match err {
        TokenError::Missing => (Code::Unauthenticated, "MISSING_ACCESS_TOKEN"),
        TokenError::Conflicting => (Code::InvalidArgument, "CONFLICTING_ACCESS_TOKENS"),
        TokenError::MalformedAuthorization => {
            (Code::InvalidArgument, "MALFORMED_AUTHORIZATION_METADATA")
        }
        TokenError::TooLong { .. } | TokenError::InvalidCharacters { .. } => {
            (Code::InvalidArgument, "INVALID_ACCESS_TOKEN")
        }
    }
}

/// The gRPC code and reason of each local refusal: the token's own faults are
/// UNAUTHENTICATED, as Cognito's refusal is; a valid token this facade does
/// not serve is PERMISSION_DENIED.
pub(crate) fn refusal_status(refusal: Refusal) -> (Code, &'static str) {
    match refusal {
        Refusal::Malformed => (Code::Unauthenticated, "TOKEN_MALFORMED"),
        Refusal::AlgorithmNotAllowed => (Code::Unauthenticated, "TOKEN_ALGORITHM_NOT_ALLOWED"),
        Refusal::KeyUnknown => (Code::Unauthenticated, "TOKEN_KEY_UNKNOWN"),
        Refusal::SignatureInvalid => (Code::Unauthenticated, "TOKEN_SIGNATURE_INVALID"),
        Refusal::NotAccess => (Code::Unauthenticated, "TOKEN_NOT_ACCESS"),
        Refusal::Expired => (Code::Unauthenticated, "TOKEN_EXPIRED"),
        Refusal::ScopeMissing => (Code::Unauthenticated, "TOKEN_SCOPE_MISSING"),
        Refusal::PoolNotAllowed => (Code::PermissionDenied, "USER_POOL_NOT_ALLOWED"),
        Refusal::ClientNotAllowed => (Code::PermissionDenied, "CLIENT_NOT_ALLOWED"),
    }
}

impl Error {
    /// The status the caller gets: code, message and `google.rpc` details.
    pub fn to_status(&self) -> Status {
        let (code, reason) = self.status();
        let mut metadata = HashMap::new();
        let (message, mut details) = match self {
            Error::Token(token_err) => {
                let mut details = ErrorDetails::new();
                if let Some(field) = token_err.field() {
                    details.add_bad_request_violation(field, token_err.to_string());
                }
                (token_err.to_string(), details)
            }
            Error::Upstream(up) => {
                if let Some(aws_code) = &up.aws_error_code {
                    metadata.insert("aws_error_code".to_owned(), aws_code.clone());
                }
                if let Some(id) = &up.request_id {
                    metadata.insert("aws_request_id".to_owned(), id.clone());
                }
                if let Some(reason_code) = &up.reason_code {
                    metadata.insert("reason_code".to_owned(), reason_code.to_string());
                }
                let message = match (&up.message, up.kind.passes_message()) {
                    (Some(message), true) if !message.is_empty() => message.clone(),
                    _ => up.kind.generic_message().to_owned(),
                };
                let mut details = ErrorDetails::new();
                if let Some(delay) = up.retry_delay() {
                    details.set_retry_info(Some(delay));
                }
                (message, details)
            }
            Error::Refused(refusal) => (refusal.to_string(), ErrorDetails::new()),
            Error::Overloaded | Error::RequestBytesExhausted => {
                let mut details = ErrorDetails::new();
                details.set_retry_info(Some(OVERLOAD_RETRY_DELAY));
                (self.to_string(), details)
            }
            Error::RequestTooLarge
            | Error::RequestBodyTimeout
            | Error::CallerNotAllowed
            | Error::UserPoolNotAllowed => (self.to_string(), ErrorDetails::new()),
            Error::InvalidUsername(_) => {
                let mut details = ErrorDetails::new();
                details.add_bad_request_violation(USERNAME_FIELD, self.to_string());
                (self.to_string(), details)
            }
            Error::MalformedForwardedClientCert(_) => {
                let mut details = ErrorDetails::new();
                details.add_bad_request_violation("x-forwarded-client-cert", self.to_string());
                (self.to_string(), details)
            }
        };
        details.set_error_info(reason, ERROR_DOMAIN, metadata);
        Status::with_error_details(code, message, details)
    }
}

/// Displays an error and its sources, `: `-separated, using only `Display`
/// (never `Debug`, which for SDK errors includes the raw response).
#[derive(Debug)]
pub(crate) struct ErrorChain<'a>(pub &'a (dyn StdError + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(err) = source {
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
