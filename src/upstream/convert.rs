//! The SDK's output to the proto, and its errors to the one error table:
//! the only conversions from the SDK's types.

use super::*;

/// What GetUserAuthFactors' and AdminGetUserAuthFactors' outputs both hold
/// (the same four members in the model).
pub(super) trait FactorsOutput {
    fn username(&self) -> &str;
    fn preferred_mfa_setting(&self) -> Option<&str>;
    fn user_mfa_setting_list(&self) -> &[String];
    fn configured_user_auth_factors(&self) -> &[SdkAuthFactor];
}

/// Implements [`FactorsOutput`] with each output's own accessors.
macro_rules! factors_output {
    ($($output:ty),*) => {$(
        impl FactorsOutput for $output {
            fn username(&self) -> &str {
                self.username()
            }
            fn preferred_mfa_setting(&self) -> Option<&str> {
                self.preferred_mfa_setting()
            }
            fn user_mfa_setting_list(&self) -> &[String] {
                self.user_mfa_setting_list()
            }
            fn configured_user_auth_factors(&self) -> &[SdkAuthFactor] {
                self.configured_user_auth_factors()
            }
        }
    )*};
}

factors_output!(GetUserAuthFactorsOutput, AdminGetUserAuthFactorsOutput);

/// SDK output to proto, the one place that does it. Values this version does
/// not know become `*_UNSPECIFIED`, with a warning naming them.
pub(super) fn to_proto(output: &impl FactorsOutput) -> GetUserAuthFactorsResponse {
    GetUserAuthFactorsResponse {
        username: output.username().to_owned(),
        preferred_mfa_setting: output
            .preferred_mfa_setting()
            .map(|value| mfa_type(value, "preferred_mfa_setting") as i32),
        user_mfa_setting_list: output
            .user_mfa_setting_list()
            .iter()
            .map(|value| mfa_type(value, "user_mfa_setting_list") as i32)
            .collect(),
        configured_user_auth_factors: output
            .configured_user_auth_factors()
            .iter()
            .map(|factor| auth_factor_type(factor) as i32)
            .collect(),
    }
}

/// Cognito's MFA setting names (`SMS_MFA`, `EMAIL_OTP`, `SOFTWARE_TOKEN_MFA`).
pub(super) fn mfa_type(value: &str, field: &'static str) -> MfaType {
    match value {
        "SMS_MFA" => MfaType::SmsMfa,
        "EMAIL_OTP" => MfaType::EmailOtp,
        "SOFTWARE_TOKEN_MFA" => MfaType::SoftwareTokenMfa,
        unknown => {
            count_unknown(field, unknown);
            tracing::warn!(
                field,
                value = unknown,
                "Cognito sent an MFA type this version does not know; answering MFA_TYPE_UNSPECIFIED"
            );
            MfaType::Unspecified
        }
    }
}

/// Counts an enum value this version does not know. Values are short names
/// that Cognito adds rarely, so the label set stays small; values that are not
/// a plausible enum name are counted as `other`.
pub(super) fn count_unknown(field: &'static str, value: &str) {
    let plausible = value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    let value = if plausible {
        value.to_owned()
    } else {
        "other".to_owned()
    };
    metrics::counter!(metric_names::UNKNOWN_ENUM_VALUES, "field" => field, "value" => value)
        .increment(1);
}

/// The SDK's `AuthFactorType` (including its `Unknown` catch-all).
pub(super) fn auth_factor_type(factor: &SdkAuthFactor) -> AuthFactorType {
    match factor {
        SdkAuthFactor::Password => AuthFactorType::Password,
        SdkAuthFactor::EmailOtp => AuthFactorType::EmailOtp,
        SdkAuthFactor::SmsOtp => AuthFactorType::SmsOtp,
        SdkAuthFactor::WebAuthn => AuthFactorType::WebAuthn,
        SdkAuthFactor::SoftwareToken => AuthFactorType::SoftwareToken,
        // `AuthFactorType` is `#[non_exhaustive]`: values added after this SDK
        // version arrive as its `Unknown` variant.
        unknown => {
            count_unknown("configured_user_auth_factors", unknown.as_str());
            tracing::warn!(
                field = "configured_user_auth_factors",
                value = unknown.as_str(),
                "Cognito sent an auth factor this version does not know; answering AUTH_FACTOR_TYPE_UNSPECIFIED"
            );
            AuthFactorType::Unspecified
        }
    }
}

/// SDK error to domain error. Which row of the table an outcome lands in is
/// decided by [`UpstreamErrorKind`]; this only reads what the SDK knows.
///
/// Never log the SDK error with `Debug` (or `DisplayErrorContext`, which ends
/// in `Debug`): it holds the raw HTTP response, body and username included.
/// Its `Display` chain is safe. `operation` says what the codes mean;
/// `reason_code` reads an `InvalidParameterException`'s `reasonCode`.
pub(super) fn upstream_error<E>(
    err: SdkError<E, HttpResponse>,
    operation: Operation,
    reason_code: fn(&E) -> Option<&str>,
) -> UpstreamError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let request_id = err.request_id().map(str::to_owned);
    let mut up = match (&err, credentials_fault(&err)) {
        (SdkError::ServiceError(context), _) => {
            let service_err = context.err();
            let aws_code = service_err.code();
            let modeled =
                aws_code.and_then(|code| UpstreamErrorKind::from_aws_code(code, operation));
            let kind = match modeled {
                Some(kind) => kind,
                None => kind_of_unmodeled(aws_code.is_some(), context.raw().status()),
            };
            let mut up = UpstreamError::new(kind);
            up.aws_error_code = aws_code.map(str::to_owned);
            up.message = service_err.message().map(str::to_owned);
            up.reason_code = reason_code(service_err).map(Box::from);
            up
        }
        (SdkError::TimeoutError(_), _) => UpstreamError::new(UpstreamErrorKind::Timeout),
        (_, Some(credentials)) => UpstreamError::new(credentials),
        (SdkError::DispatchFailure(failure), _) => {
            match failure.as_connector_error().and_then(no_turn) {
                Some(retry_after) => UpstreamError::rate_limited(retry_after),
                None if failure.is_timeout() => UpstreamError::new(UpstreamErrorKind::Timeout),
                None => UpstreamError::new(UpstreamErrorKind::Unreachable),
            }
        }
        (SdkError::ResponseError(context), _) => UpstreamError::new(kind_of_unreadable(
            caused_by_io(&err),
            context.raw().status(),
        )),
        (SdkError::ConstructionFailure(_), _) => {
            UpstreamError::new(UpstreamErrorKind::RequestConstruction)
        }
        // `SdkError` is `#[non_exhaustive]`; a new failure mode is most likely a
        // transport one.
        _ => UpstreamError::new(UpstreamErrorKind::Unavailable),
    };
    up.request_id = request_id;
    up.source = Some(std::sync::Arc::new(err));
    up
}

/// A response whose body could not be read or parsed: the connection failing
/// under it (`io`) is an unreachable upstream, whatever the status said; a
/// 2xx with a broken body is a bad response; anything else an unavailable
/// upstream.
pub(super) fn kind_of_unreadable(
    io: bool,
    status: aws_smithy_runtime_api::http::StatusCode,
) -> UpstreamErrorKind {
    if io {
        UpstreamErrorKind::Unreachable
    } else if status.is_success() {
        UpstreamErrorKind::BadResponse
    } else {
        UpstreamErrorKind::Unavailable
    }
}

/// The retry-after of an attempt the rate limiter gave no turn.
pub(super) fn no_turn(err: &ConnectorError) -> Option<Duration> {
    std::error::Error::source(err)
        .and_then(|source| source.downcast_ref::<NoTurn>())
        .map(|no_turn| no_turn.0)
}

/// Why the default credential chain gave the request no credentials, if it
/// did not: none configured (or configured wrongly), or their source failing
/// or not answering in time ([`BoundedCredentials`]). The SDK reports either
/// as its own failure to build or send the request.
pub(super) fn credentials_fault(
    err: &(dyn std::error::Error + 'static),
) -> Option<UpstreamErrorKind> {
    use aws_credential_types::provider::error::CredentialsError;
    let found = std::iter::successors(Some(err), |err| err.source())
        .find_map(|err| err.downcast_ref::<CredentialsError>())?;
    Some(match found {
        CredentialsError::CredentialsNotLoaded(_) | CredentialsError::InvalidConfiguration(_) => {
            UpstreamErrorKind::CredentialsUnavailable
        }
        // Timed out, failed, or a failure this version does not name.
        _ => UpstreamErrorKind::CredentialsSourceFailed,
    })
}

/// The `reasonCode` of GetUserAuthFactors' `InvalidParameterException`.
pub(super) fn token_reason_code(err: &GetUserAuthFactorsError) -> Option<&str> {
    match err {
        GetUserAuthFactorsError::InvalidParameterException(invalid) => invalid.reason_code(),
        _ => None,
    }
}

/// The `reasonCode` of AdminGetUserAuthFactors' `InvalidParameterException`.
pub(super) fn admin_reason_code(err: &AdminGetUserAuthFactorsError) -> Option<&str> {
    match err {
        AdminGetUserAuthFactorsError::InvalidParameterException(invalid) => invalid.reason_code(),
        _ => None,
    }
}

/// Whether an I/O error (a reset, a connection closed mid-body) is anywhere
/// in `err`'s cause chain.
pub(super) fn caused_by_io(err: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(err), |err| err.source()).any(|err| err.is::<std::io::Error>())
}

/// An error without a modeled code: `has_code` is whether Cognito sent a
/// `__type` at all (a JSON error body).
pub(super) fn kind_of_unmodeled(
    has_code: bool,
    status: aws_smithy_runtime_api::http::StatusCode,
) -> UpstreamErrorKind {
    if status.is_success() {
        UpstreamErrorKind::BadResponse
    } else if status.is_server_error() || !has_code {
        UpstreamErrorKind::Unavailable
    } else {
        UpstreamErrorKind::Unmodeled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_runtime_api::http::StatusCode;

    fn status(code: u16) -> StatusCode {
        StatusCode::try_from(code).unwrap()
    }

    #[test]
    fn unmodeled_outcomes_follow_the_table() {
        assert_eq!(
            kind_of_unmodeled(true, status(400)),
            UpstreamErrorKind::Unmodeled
        );
        assert_eq!(
            kind_of_unmodeled(true, status(503)),
            UpstreamErrorKind::Unavailable
        );
        assert_eq!(
            kind_of_unmodeled(false, status(502)),
            UpstreamErrorKind::Unavailable
        );
        assert_eq!(
            kind_of_unmodeled(false, status(403)),
            UpstreamErrorKind::Unavailable
        );
        assert_eq!(
            kind_of_unmodeled(false, status(200)),
            UpstreamErrorKind::BadResponse
        );
    }

    #[test]
    fn unreadable_responses_follow_the_table() {
        assert_eq!(
            kind_of_unreadable(true, status(200)),
            UpstreamErrorKind::Unreachable
        );
        assert_eq!(
            kind_of_unreadable(false, status(200)),
            UpstreamErrorKind::BadResponse
        );
        assert_eq!(
            kind_of_unreadable(false, status(500)),
            UpstreamErrorKind::Unavailable
        );
    }

    #[test]
    fn an_io_error_is_found_anywhere_in_the_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("reading the body")]
        struct Wrapper(#[source] std::io::Error);
        let reset = Wrapper(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(caused_by_io(&reset));
        let parse = std::fmt::Error;
        assert!(!caused_by_io(&parse));
    }

    #[test]
    fn known_mfa_names_map_and_unknown_ones_do_not_fail() {
        assert_eq!(mfa_type("SMS_MFA", "f"), MfaType::SmsMfa);
        assert_eq!(mfa_type("EMAIL_OTP", "f"), MfaType::EmailOtp);
        assert_eq!(
            mfa_type("SOFTWARE_TOKEN_MFA", "f"),
            MfaType::SoftwareTokenMfa
        );
        assert_eq!(mfa_type("PASSKEY_MFA", "f"), MfaType::Unspecified);
    }

    #[test]
    fn every_auth_factor_maps() {
        for (name, expected) in [
            ("PASSWORD", AuthFactorType::Password),
            ("EMAIL_OTP", AuthFactorType::EmailOtp),
            ("SMS_OTP", AuthFactorType::SmsOtp),
            ("WEB_AUTHN", AuthFactorType::WebAuthn),
            ("SOFTWARE_TOKEN", AuthFactorType::SoftwareToken),
            ("QUANTUM_ENTANGLEMENT", AuthFactorType::Unspecified),
        ] {
            assert_eq!(
                auth_factor_type(&SdkAuthFactor::from(name)),
                expected,
                "{name}"
            );
        }
    }
}
