//! The upstream table's rows: every outcome of a Cognito call that is not a
//! success, what each AWS error code means for each operation, and each
//! row's status, message, retry and memory.

use tonic::Code;

use crate::base::wire::Operation;

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
