//! The one mapping table: every way a call can fail, and the gRPC status, the
//! `google.rpc.ErrorInfo` reason and the details each one answers with.
//!
//! The README's error table documents the same rows; `tests/api/errors.rs`
//! checks that the two agree.
//!
//! Layer 3, above `token` and `base`. Its unit tests are in `tests.rs`.
//!
//! Files, lowest first: none besides this one.

use std::{
    collections::HashMap, error::Error as StdError, num::NonZeroU32, sync::Arc, time::Duration,
};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::base::wire::Operation;
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

/// Declares [`UpstreamErrorKind`] and its [`UpstreamErrorKind::ALL`] from one
/// list, so a new variant cannot be left out of `ALL` (and so out of the
/// README-table test that iterates it).
macro_rules! upstream_error_kinds {
    ($($(#[$doc:meta])* $kind:ident,)*) => {
        /// The kinds of upstream outcome that are not a success.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum UpstreamErrorKind {
            $($(#[$doc])* $kind,)*
        }

        impl UpstreamErrorKind {
            /// Every kind, in the README's order.
            pub const ALL: &'static [Self] = &[$(Self::$kind,)*];
        }
    };
}

/// What a call's outcome does to its token's kept answer
/// (`--stale-if-error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeptAnswer {
    /// Cognito is unavailable: the kept answer stands in.
    StandsIn,
    /// Cognito's definitive word: the outcome is returned and the kept
    /// answer goes.
    Goes,
    /// Neither: the outcome is returned, the kept answer stays.
    Stays,
}

upstream_error_kinds! {
    /// `NotAuthorizedException` from GetUserAuthFactors: the token is
    /// invalid, expired or revoked.
    NotAuthorized,
    /// `NotAuthorizedException` from AdminGetUserAuthFactors: Cognito says
    /// the user is not authorized (a disabled user, say); the caller's own
    /// credentials are not in question.
    UserNotAuthorized,
    /// `InvalidParameterException`.
    InvalidParameter,
    /// `ResourceNotFoundException`.
    ResourceNotFound,
    /// `UserNotFoundException`.
    UserNotFound,
    /// `UserNotConfirmedException`.
    UserNotConfirmed,
    /// `PasswordResetRequiredException`.
    PasswordResetRequired,
    /// `OperationNotEnabledException`.
    OperationNotEnabled,
    /// `TooManyRequestsException`, after the SDK's retries.
    TooManyRequests,
    /// `ForbiddenException` (WAF refused the request).
    Forbidden,
    /// `InternalErrorException`, after the SDK's retries.
    InternalError,
    /// An error code the model does not list, with a 4xx status.
    Unmodeled,
    /// A 5xx without a modeled code, or an error page that is not JSON.
    Unavailable,
    /// No HTTP response: connection refused, DNS, reset, other I/O.
    Unreachable,
    /// A connect, attempt or call timeout, or the caller's deadline.
    Timeout,
    /// A 2xx whose body is not a valid GetUserAuthFactors response.
    BadResponse,
    /// The SDK could not build the request (for example a bad endpoint).
    RequestConstruction,
    /// The fleet's upstream rate limit (`--upstream-rate-limit`) gave the
    /// attempt no turn in time; Cognito was not called.
    RateLimited,
    /// `AccessDeniedException`: IAM does not allow the service's own
    /// credentials the operation (AdminGetUserAuthFactors).
    AccessDenied,
    /// `UnrecognizedClientException`: AWS does not know the service's
    /// access key.
    UnrecognizedClient,
    /// `InvalidSignatureException` or `IncompleteSignatureException`: the
    /// service's signature does not verify (a wrong secret key, or a clock
    /// far off).
    InvalidSignature,
    /// `ExpiredTokenException`: the service's session credentials expired.
    ExpiredToken,
    /// `MissingAuthenticationTokenException`: the request reached AWS
    /// unsigned.
    MissingSignature,
    /// The default credential chain has no credentials for the service
    /// (none configured, or configured wrongly); Cognito was not called.
    CredentialsUnavailable,
    /// The credentials' source failed or did not answer in time (IMDS, the
    /// container endpoint, STS); Cognito was not called.
    CredentialsSourceFailed,
}

impl UpstreamErrorKind {
    /// The kind of an error code modeled for `operation`, or `None` for any
    /// other code. AWS's refusals of a signature or credentials are
    /// modeled only for the signed operation: from the unsigned one they
    /// are unmodeled (a proxy in between, say), not the service's
    /// misconfiguration.
    pub fn from_aws_code(code: &str, operation: Operation) -> Option<Self> {
        let signed = operation == Operation::AdminGetUserAuthFactors;
        let kind = match code {
            "NotAuthorizedException" if signed => Self::UserNotAuthorized,
            "NotAuthorizedException" => Self::NotAuthorized,
            "InvalidParameterException" => Self::InvalidParameter,
            "ResourceNotFoundException" => Self::ResourceNotFound,
            "UserNotFoundException" => Self::UserNotFound,
            "UserNotConfirmedException" => Self::UserNotConfirmed,
            "PasswordResetRequiredException" => Self::PasswordResetRequired,
            "OperationNotEnabledException" => Self::OperationNotEnabled,
            "TooManyRequestsException" => Self::TooManyRequests,
            "ForbiddenException" => Self::Forbidden,
            "InternalErrorException" => Self::InternalError,
            "AccessDeniedException" => Self::AccessDenied,
            "UnrecognizedClientException" => Self::UnrecognizedClient,
            "InvalidSignatureException" | "IncompleteSignatureException" => Self::InvalidSignature,
            "ExpiredTokenException" => Self::ExpiredToken,
            "MissingAuthenticationTokenException" => Self::MissingSignature,
            _ => return None,
        };
        (signed || !kind.is_service_credentials()).then_some(kind)
    }

    /// Whether a code is modeled for either operation (so it may be a
    /// metric label: an unmodeled one is free text).
    pub(crate) fn is_modeled_code(code: &str) -> bool {
        Self::from_aws_code(code, Operation::AdminGetUserAuthFactors).is_some()
    }

    /// Whether AWS refused the service's own signature or credentials:
    /// the service is misconfigured, not the caller at fault.
    pub fn is_service_credentials(self) -> bool {
        matches!(
            self,
            Self::AccessDenied
                | Self::UnrecognizedClient
                | Self::InvalidSignature
                | Self::ExpiredToken
                | Self::MissingSignature
                | Self::CredentialsUnavailable
                | Self::CredentialsSourceFailed
        )
    }

    /// The gRPC code and `ErrorInfo.reason` of this kind: the table itself.
    pub fn status(self) -> (Code, &'static str) {
        match self {
            Self::NotAuthorized => (Code::Unauthenticated, "NOT_AUTHORIZED"),
            Self::UserNotAuthorized => (Code::FailedPrecondition, "USER_NOT_AUTHORIZED"),
            Self::InvalidParameter => (Code::InvalidArgument, "INVALID_PARAMETER"),
            Self::ResourceNotFound => (Code::NotFound, "RESOURCE_NOT_FOUND"),
            Self::UserNotFound => (Code::NotFound, "USER_NOT_FOUND"),
            Self::UserNotConfirmed => (Code::FailedPrecondition, "USER_NOT_CONFIRMED"),
            Self::PasswordResetRequired => (Code::FailedPrecondition, "PASSWORD_RESET_REQUIRED"),
            Self::OperationNotEnabled => (Code::FailedPrecondition, "OPERATION_NOT_ENABLED"),
            Self::TooManyRequests => (Code::ResourceExhausted, "TOO_MANY_REQUESTS"),
            Self::Forbidden => (Code::PermissionDenied, "FORBIDDEN"),
            Self::InternalError => (Code::Unavailable, "COGNITO_INTERNAL_ERROR"),
            Self::Unmodeled => (Code::Unknown, "UNMODELED_ERROR"),
            Self::Unavailable => (Code::Unavailable, "UPSTREAM_UNAVAILABLE"),
            Self::Unreachable => (Code::Unavailable, "UPSTREAM_UNREACHABLE"),
            Self::Timeout => (Code::DeadlineExceeded, "UPSTREAM_TIMEOUT"),
            Self::BadResponse => (Code::Internal, "UPSTREAM_BAD_RESPONSE"),
            Self::RequestConstruction => (Code::Internal, "REQUEST_CONSTRUCTION_FAILED"),
            Self::RateLimited => (Code::ResourceExhausted, "UPSTREAM_RATE_LIMITED"),
            // The service's own credentials: not the caller's fault, and
            // not PERMISSION_DENIED, which says the caller may not ask.
            Self::AccessDenied => (Code::Internal, "SERVICE_ACCESS_DENIED"),
            Self::UnrecognizedClient => (Code::Internal, "SERVICE_CREDENTIALS_UNRECOGNIZED"),
            Self::InvalidSignature => (Code::Internal, "SERVICE_SIGNATURE_INVALID"),
            Self::ExpiredToken => (Code::Internal, "SERVICE_CREDENTIALS_EXPIRED"),
            Self::MissingSignature => (Code::Internal, "SERVICE_SIGNATURE_MISSING"),
            Self::CredentialsUnavailable => (Code::Internal, "CREDENTIALS_UNAVAILABLE"),
            Self::CredentialsSourceFailed => (Code::Unavailable, "CREDENTIALS_SOURCE_FAILED"),
        }
    }

    /// Whether the caller sees Cognito's own message. Only modeled client errors
    /// pass it through; for the rest the message is generic and the cause is
    /// logged.
    pub fn passes_message(self) -> bool {
        match self {
            Self::NotAuthorized
            | Self::InvalidParameter
            | Self::ResourceNotFound
            | Self::UserNotFound
            | Self::UserNotConfirmed
            | Self::PasswordResetRequired
            | Self::OperationNotEnabled
            | Self::TooManyRequests
            | Self::Forbidden => true,
            Self::UserNotAuthorized
            | Self::InternalError
            | Self::Unmodeled
            | Self::Unavailable
            | Self::Unreachable
            | Self::Timeout
            | Self::BadResponse
            | Self::RequestConstruction
            | Self::RateLimited
            | Self::AccessDenied
            | Self::UnrecognizedClient
            | Self::InvalidSignature
            | Self::ExpiredToken
            | Self::MissingSignature
            | Self::CredentialsUnavailable
            | Self::CredentialsSourceFailed => false,
        }
    }

    /// What this outcome does to a token's kept answer
    /// (`--stale-if-error`). Exhaustive: a new kind needs a decision.
    pub(crate) fn kept_answer(self) -> KeptAnswer {
        match self {
            // Cognito unavailable: its 5xx and internal errors, no answer or
            // a broken one, timeouts, account-wide throttling, the fleet's
            // own rate limit refusing the attempt, and the credentials'
            // source failing (Cognito out of reach for the signed call).
            Self::InternalError
            | Self::Unavailable
            | Self::Unreachable
            | Self::Timeout
            | Self::TooManyRequests
            | Self::RateLimited
            | Self::BadResponse
            | Self::CredentialsSourceFailed => KeptAnswer::StandsIn,
            // Cognito's word on the token, a modeled 4xx about it: a revoked
            // token is refused the first time Cognito says so.
            Self::NotAuthorized
            | Self::UserNotAuthorized
            | Self::InvalidParameter
            | Self::ResourceNotFound
            | Self::UserNotFound
            | Self::UserNotConfirmed
            | Self::PasswordResetRequired
            | Self::OperationNotEnabled => KeptAnswer::Goes,
            // Neither: a WAF rule (perhaps on this replica's own address), a
            // code this version cannot judge, or this replica's own trouble
            // building or signing the request.
            Self::Forbidden
            | Self::Unmodeled
            | Self::RequestConstruction
            | Self::AccessDenied
            | Self::UnrecognizedClient
            | Self::InvalidSignature
            | Self::ExpiredToken
            | Self::MissingSignature
            | Self::CredentialsUnavailable => KeptAnswer::Stays,
        }
    }

    /// Whether Cognito was unavailable rather than answering about the token
    /// (its 5xx, no answer or a broken one, a timeout, throttling, the
    /// fleet's rate limit): a later call may get another outcome. The same
    /// outcomes a kept answer stands in for; the README's retry column marks
    /// exactly these retryable for callers.
    pub fn is_transient(self) -> bool {
        self.kept_answer() == KeptAnswer::StandsIn
    }

    /// Whether this is Cognito's definitive word on the token, one that no
    /// later call can change, so it may be remembered (`--refusal-ttl`): a
    /// revoked, expired or invalid token stays refused; a deleted user or
    /// pool stays gone. A refusal someone can act on (the user confirms or
    /// resets a password, an admin enables the operation or fixes a WAF
    /// rule) is not, nor is anything about reaching Cognito.
    pub fn is_definitive(self) -> bool {
        match self {
            Self::NotAuthorized | Self::UserNotFound | Self::ResourceNotFound => true,
            // An administrator can enable the user again.
            Self::UserNotAuthorized
            | Self::InvalidParameter
            | Self::UserNotConfirmed
            | Self::PasswordResetRequired
            | Self::OperationNotEnabled
            | Self::TooManyRequests
            | Self::Forbidden
            | Self::InternalError
            | Self::Unmodeled
            | Self::Unavailable
            | Self::Unreachable
            | Self::Timeout
            | Self::BadResponse
            | Self::RequestConstruction
            | Self::RateLimited
            | Self::AccessDenied
            | Self::UnrecognizedClient
            | Self::InvalidSignature
            | Self::ExpiredToken
            | Self::MissingSignature
            | Self::CredentialsUnavailable
            | Self::CredentialsSourceFailed => false,
        }
    }

    /// The message callers see when Cognito's own is not passed through (or
    /// Cognito sent none).
    pub fn generic_message(self) -> &'static str {
        match self {
            Self::NotAuthorized => "the access token is not authorized",
            Self::UserNotAuthorized => {
                "Cognito says the user is not authorized (a disabled user, for example)"
            }
            Self::InvalidParameter => "Cognito refused a parameter",
            Self::ResourceNotFound => "Cognito could not find the resource",
            Self::UserNotFound => "the user does not exist",
            Self::UserNotConfirmed => "the user is not confirmed",
            Self::PasswordResetRequired => "the user must reset their password",
            Self::OperationNotEnabled => {
                "the operation is not enabled for this user pool or region"
            }
            Self::TooManyRequests => "Cognito is throttling requests; retry later",
            Self::Forbidden => "the user pool's web ACL refused the request",
            Self::InternalError => "Cognito reported an internal error",
            Self::Unmodeled => "Cognito returned an unrecognised error",
            Self::Unavailable => "Cognito is unavailable",
            Self::Unreachable => "Cognito could not be reached",
            Self::Timeout => "the call to Cognito timed out",
            Self::BadResponse => "Cognito returned a response that could not be read",
            Self::RequestConstruction => "the request to Cognito could not be built",
            Self::RateLimited => {
                "the fleet's rate limit for calls to Cognito is reached; retry later"
            }
            Self::AccessDenied => {
                "IAM does not allow this service's AWS credentials the operation; the service is misconfigured"
            }
            Self::UnrecognizedClient => {
                "AWS does not recognise this service's access key; the service is misconfigured"
            }
            Self::InvalidSignature => {
                "AWS refused this service's request signature; the service is misconfigured"
            }
            Self::ExpiredToken => {
                "this service's AWS session credentials have expired; the service is misconfigured"
            }
            Self::MissingSignature => {
                "the request reached AWS unsigned; the service is misconfigured"
            }
            Self::CredentialsUnavailable => {
                "this service has no AWS credentials (the default chain found none); the service is misconfigured"
            }
            Self::CredentialsSourceFailed => {
                "the source of this service's AWS credentials failed or did not answer in time; retry later"
            }
        }
    }
}

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
