use super::*;
use crate::base::wire::Operation;
use UpstreamErrorKind as K;

const TOKEN: Operation = Operation::GetUserAuthFactors;
const ADMIN: Operation = Operation::AdminGetUserAuthFactors;

fn status_of(err: UpstreamError) -> Status {
    Error::from(err).to_status()
}

/// One test per row of the README's upstream table.
macro_rules! rows {
    ($($name:ident: $kind:expr, $aws_code:expr, $op:expr => $code:expr, $reason:literal;)*) => {$(
        #[test]
        fn $name() {
            let mut err = UpstreamError::new($kind);
            err.aws_error_code = $aws_code.map(str::to_owned);
            err.message = Some("Cognito says no".to_owned());
            err.request_id = Some("req-1".to_owned());
            if let Some(aws_code) = $aws_code {
                // A code the model does not list has no kind of its own.
                let kind = K::from_aws_code(aws_code, $op).unwrap_or(K::Unmodeled);
                assert_eq!(kind, $kind);
            }
            let status = status_of(err);
            assert_eq!(status.code(), $code);
            let info = status.get_details_error_info().expect("ErrorInfo");
            assert_eq!(info.reason, $reason);
            assert_eq!(info.domain, ERROR_DOMAIN);
            assert_eq!(info.metadata.get("aws_request_id").map(String::as_str), Some("req-1"));
            assert_eq!(
                info.metadata.get("aws_error_code").map(String::as_str),
                $aws_code
            );
            let passes = status.message() == "Cognito says no";
            assert_eq!(passes, $kind.passes_message(), "{}", status.message());
            assert_eq!(status.get_details_retry_info().is_some(), $code == Code::ResourceExhausted);
        }
    )*};
}

rows! {
    not_authorized: K::NotAuthorized, Some("NotAuthorizedException"), TOKEN => Code::Unauthenticated, "NOT_AUTHORIZED";
    invalid_parameter: K::InvalidParameter, Some("InvalidParameterException"), TOKEN => Code::InvalidArgument, "INVALID_PARAMETER";
    resource_not_found: K::ResourceNotFound, Some("ResourceNotFoundException"), TOKEN => Code::NotFound, "RESOURCE_NOT_FOUND";
    user_not_found: K::UserNotFound, Some("UserNotFoundException"), TOKEN => Code::NotFound, "USER_NOT_FOUND";
    user_not_confirmed: K::UserNotConfirmed, Some("UserNotConfirmedException"), TOKEN => Code::FailedPrecondition, "USER_NOT_CONFIRMED";
    password_reset_required: K::PasswordResetRequired, Some("PasswordResetRequiredException"), TOKEN => Code::FailedPrecondition, "PASSWORD_RESET_REQUIRED";
    operation_not_enabled: K::OperationNotEnabled, Some("OperationNotEnabledException"), TOKEN => Code::FailedPrecondition, "OPERATION_NOT_ENABLED";
    too_many_requests: K::TooManyRequests, Some("TooManyRequestsException"), TOKEN => Code::ResourceExhausted, "TOO_MANY_REQUESTS";
    forbidden: K::Forbidden, Some("ForbiddenException"), TOKEN => Code::PermissionDenied, "FORBIDDEN";
    internal_error: K::InternalError, Some("InternalErrorException"), TOKEN => Code::Unavailable, "COGNITO_INTERNAL_ERROR";
    unmodeled: K::Unmodeled, Some("SomethingNewException"), TOKEN => Code::Unknown, "UNMODELED_ERROR";
    unavailable: K::Unavailable, None::<&str>, TOKEN => Code::Unavailable, "UPSTREAM_UNAVAILABLE";
    unreachable: K::Unreachable, None::<&str>, TOKEN => Code::Unavailable, "UPSTREAM_UNREACHABLE";
    timeout: K::Timeout, None::<&str>, TOKEN => Code::DeadlineExceeded, "UPSTREAM_TIMEOUT";
    rate_limited: K::RateLimited, None::<&str>, TOKEN => Code::ResourceExhausted, "UPSTREAM_RATE_LIMITED";
    bad_response: K::BadResponse, None::<&str>, TOKEN => Code::Internal, "UPSTREAM_BAD_RESPONSE";
    request_construction: K::RequestConstruction, None::<&str>, TOKEN => Code::Internal, "REQUEST_CONSTRUCTION_FAILED";
    user_not_authorized: K::UserNotAuthorized, Some("NotAuthorizedException"), ADMIN => Code::FailedPrecondition, "USER_NOT_AUTHORIZED";
    admin_user_not_found: K::UserNotFound, Some("UserNotFoundException"), ADMIN => Code::NotFound, "USER_NOT_FOUND";
    service_access_denied: K::AccessDenied, Some("AccessDeniedException"), ADMIN => Code::Internal, "SERVICE_ACCESS_DENIED";
    service_credentials_unrecognized: K::UnrecognizedClient, Some("UnrecognizedClientException"), ADMIN => Code::Internal, "SERVICE_CREDENTIALS_UNRECOGNIZED";
    service_signature_invalid: K::InvalidSignature, Some("InvalidSignatureException"), ADMIN => Code::Internal, "SERVICE_SIGNATURE_INVALID";
    service_signature_incomplete: K::InvalidSignature, Some("IncompleteSignatureException"), ADMIN => Code::Internal, "SERVICE_SIGNATURE_INVALID";
    service_credentials_expired: K::ExpiredToken, Some("ExpiredTokenException"), ADMIN => Code::Internal, "SERVICE_CREDENTIALS_EXPIRED";
    service_signature_missing: K::MissingSignature, Some("MissingAuthenticationTokenException"), ADMIN => Code::Internal, "SERVICE_SIGNATURE_MISSING";
    credentials_unavailable: K::CredentialsUnavailable, None::<&str>, ADMIN => Code::Internal, "CREDENTIALS_UNAVAILABLE";
    credentials_source_failed: K::CredentialsSourceFailed, None::<&str>, ADMIN => Code::Unavailable, "CREDENTIALS_SOURCE_FAILED";
    // From the unsigned operation, a refusal of credentials is not the
    // service's: a proxy in between, say.
    token_access_denied: K::Unmodeled, Some("AccessDeniedException"), TOKEN => Code::Unknown, "UNMODELED_ERROR";
    token_unrecognized_client: K::Unmodeled, Some("UnrecognizedClientException"), TOKEN => Code::Unknown, "UNMODELED_ERROR";
}

#[test]
fn overload_is_resource_exhausted_with_retry_info() {
    let status = Error::Overloaded.to_status();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "OVERLOADED"
    );
    assert_eq!(
        status.get_details_retry_info().unwrap().retry_delay,
        Some(OVERLOAD_RETRY_DELAY)
    );
    let status = Error::RequestTooLarge.to_status();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "REQUEST_TOO_LARGE"
    );
}

#[test]
fn unmodeled_codes_have_no_kind() {
    for operation in [TOKEN, ADMIN] {
        assert_eq!(K::from_aws_code("SomethingNewException", operation), None);
        assert_eq!(K::from_aws_code("", operation), None);
    }
}

#[test]
fn reason_code_reaches_error_info() {
    let mut err = UpstreamError::new(K::InvalidParameter);
    err.reason_code = Some("INVALID_TOKEN_USE".into());
    let info = status_of(err).get_details_error_info().unwrap();
    assert_eq!(
        info.metadata.get("reason_code").map(String::as_str),
        Some("INVALID_TOKEN_USE")
    );
}

#[test]
fn missing_message_falls_back_to_generic() {
    let status = status_of(UpstreamError::new(K::UserNotFound));
    assert_eq!(status.message(), K::UserNotFound.generic_message());
}

#[test]
fn token_errors_carry_bad_request_where_a_field_is_at_fault() {
    let status = Error::from(TokenError::InvalidCharacters {
        origin: crate::token::TokenSource::Field,
    })
    .to_status();
    assert_eq!(status.code(), Code::InvalidArgument);
    let bad_request = status.get_details_bad_request().expect("BadRequest");
    assert_eq!(bad_request.field_violations[0].field, "access_token");
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "INVALID_ACCESS_TOKEN"
    );

    let status = Error::from(TokenError::Missing).to_status();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.get_details_bad_request().is_none());
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "MISSING_ACCESS_TOKEN"
    );
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    /// The operation's errors in AWS's own service model (botocore's
    /// extract, `tests/fixtures/`): the independent truth of which codes
    /// are modeled.
    fn modeled_in_aws_model() -> Vec<String> {
        errors_of(include_str!(
            "../../tests/fixtures/cognito-idp-GetUserAuthFactors.model.json"
        ))
    }

    /// The same for AdminGetUserAuthFactors.
    fn modeled_for_admin() -> Vec<String> {
        errors_of(include_str!(
            "../../tests/fixtures/cognito-idp-AdminGetUserAuthFactors.model.json"
        ))
    }

    fn errors_of(model: &str) -> Vec<String> {
        let model: serde_json::Value = serde_json::from_str(model).unwrap();
        model["operation"]["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|error| error["shape"].as_str().unwrap().to_owned())
            .collect()
    }

    /// AWS's refusals of a signed request (the common errors of every
    /// SigV4 service), modeled for the signed operation only.
    const CREDENTIAL_REFUSALS: [&str; 6] = [
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "IncompleteSignatureException",
        "ExpiredTokenException",
        "MissingAuthenticationTokenException",
    ];

    #[test]
    fn for_admin_exactly_its_models_errors_and_awss_credential_refusals_are_modeled() {
        let modeled = modeled_for_admin();
        assert_eq!(modeled.len(), 7, "{modeled:?}");
        for code in modeled
            .iter()
            .map(String::as_str)
            .chain(CREDENTIAL_REFUSALS)
        {
            let kind = K::from_aws_code(code, ADMIN);
            assert!(kind.is_some(), "{code} is modeled for admin");
            let service = CREDENTIAL_REFUSALS.contains(&code);
            assert_eq!(kind.unwrap().is_service_credentials(), service, "{code}");
            // From the unsigned operation a credential refusal is unmodeled.
            assert_eq!(K::from_aws_code(code, TOKEN).is_none(), service, "{code}");
        }
        // One table: a code the token RPC's model lists keeps its row.
        for code in modeled_in_aws_model() {
            assert!(K::from_aws_code(&code, ADMIN).is_some(), "{code}");
        }
    }

    #[test]
    fn exactly_the_models_errors_are_modeled_rows() {
        let modeled = modeled_in_aws_model();
        assert_eq!(modeled.len(), 10, "{modeled:?}");
        for code in &modeled {
            let kind = K::from_aws_code(code, TOKEN);
            assert!(
                kind.is_some_and(|kind| kind != K::Unmodeled),
                "{code} is in the model but maps to {kind:?}"
            );
        }
        let mut kinds: Vec<_> = modeled
            .iter()
            .filter_map(|c| K::from_aws_code(c, TOKEN))
            .collect();
        kinds.sort_by_key(|kind| format!("{kind:?}"));
        kinds.dedup();
        assert_eq!(kinds.len(), modeled.len(), "one row per modeled error");
    }

    proptest! {
        /// A code maps to a modeled row exactly when the AWS model lists
        /// it; any other code is unmodeled, never a panic, and keeps its
        /// name in ErrorInfo.
        #[test]
        fn only_the_models_codes_map_to_modeled_rows(
            code in prop_oneof![
                ".{0,80}",
                // Near misses of the model's names.
                prop::sample::select(modeled_in_aws_model()).prop_flat_map(|name| {
                    (Just(name), 0usize..4).prop_map(|(name, how)| match how {
                        0 => name.to_lowercase(),
                        1 => format!("{name} "),
                        2 => name.trim_end_matches("Exception").to_owned(),
                        _ => format!("com.amazonaws.cognito#{name}x"),
                    })
                }),
            ]
        ) {
            let modeled = modeled_in_aws_model().contains(&code);
            prop_assert_eq!(K::from_aws_code(&code, TOKEN).is_some(), modeled);
            if !modeled {
                let status = status_of(UpstreamError {
                    aws_error_code: Some(code.clone()),
                    ..UpstreamError::new(K::Unmodeled)
                });
                prop_assert_eq!(status.code(), Code::Unknown);
                let info = status.get_details_error_info().unwrap();
                prop_assert_eq!(info.metadata.get("aws_error_code"), Some(&code));
            }
        }
    }
}
