use super::*;
use UpstreamErrorKind as K;

fn status_of(err: UpstreamError) -> Status {
    Error::from(err).to_status()
}

/// One test per row of the README's upstream table.
macro_rules! rows {
    ($($name:ident: $kind:expr, $aws_code:expr => $code:expr, $reason:literal;)*) => {$(
        #[test]
        fn $name() {
            let mut err = UpstreamError::new($kind);
            err.aws_error_code = $aws_code.map(str::to_owned);
            err.message = Some("Cognito says no".to_owned());
            err.request_id = Some("req-1".to_owned());
            if let Some(aws_code) = $aws_code {
                // A code the model does not list has no kind of its own.
                let kind = K::from_aws_code(aws_code).unwrap_or(K::Unmodeled);
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
    not_authorized: K::NotAuthorized, Some("NotAuthorizedException") => Code::Unauthenticated, "NOT_AUTHORIZED";
    invalid_parameter: K::InvalidParameter, Some("InvalidParameterException") => Code::InvalidArgument, "INVALID_PARAMETER";
    resource_not_found: K::ResourceNotFound, Some("ResourceNotFoundException") => Code::NotFound, "RESOURCE_NOT_FOUND";
    user_not_found: K::UserNotFound, Some("UserNotFoundException") => Code::NotFound, "USER_NOT_FOUND";
    user_not_confirmed: K::UserNotConfirmed, Some("UserNotConfirmedException") => Code::FailedPrecondition, "USER_NOT_CONFIRMED";
    password_reset_required: K::PasswordResetRequired, Some("PasswordResetRequiredException") => Code::FailedPrecondition, "PASSWORD_RESET_REQUIRED";
    operation_not_enabled: K::OperationNotEnabled, Some("OperationNotEnabledException") => Code::FailedPrecondition, "OPERATION_NOT_ENABLED";
    too_many_requests: K::TooManyRequests, Some("TooManyRequestsException") => Code::ResourceExhausted, "TOO_MANY_REQUESTS";
    forbidden: K::Forbidden, Some("ForbiddenException") => Code::PermissionDenied, "FORBIDDEN";
    internal_error: K::InternalError, Some("InternalErrorException") => Code::Unavailable, "COGNITO_INTERNAL_ERROR";
    unmodeled: K::Unmodeled, Some("SomethingNewException") => Code::Unknown, "UNMODELED_ERROR";
    unavailable: K::Unavailable, None::<&str> => Code::Unavailable, "UPSTREAM_UNAVAILABLE";
    unreachable: K::Unreachable, None::<&str> => Code::Unavailable, "UPSTREAM_UNREACHABLE";
    timeout: K::Timeout, None::<&str> => Code::DeadlineExceeded, "UPSTREAM_TIMEOUT";
    rate_limited: K::RateLimited, None::<&str> => Code::ResourceExhausted, "UPSTREAM_RATE_LIMITED";
    bad_response: K::BadResponse, None::<&str> => Code::Internal, "UPSTREAM_BAD_RESPONSE";
    request_construction: K::RequestConstruction, None::<&str> => Code::Internal, "REQUEST_CONSTRUCTION_FAILED";
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
    assert_eq!(K::from_aws_code("SomethingNewException"), None);
    assert_eq!(K::from_aws_code(""), None);
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
        let model: serde_json::Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/cognito-idp-GetUserAuthFactors.model.json"
        ))
        .unwrap();
        model["operation"]["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|error| error["shape"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn exactly_the_models_errors_are_modeled_rows() {
        let modeled = modeled_in_aws_model();
        assert_eq!(modeled.len(), 10, "{modeled:?}");
        for code in &modeled {
            let kind = K::from_aws_code(code);
            assert!(
                kind.is_some_and(|kind| kind != K::Unmodeled),
                "{code} is in the model but maps to {kind:?}"
            );
        }
        let mut kinds: Vec<_> = modeled.iter().filter_map(|c| K::from_aws_code(c)).collect();
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
            prop_assert_eq!(K::from_aws_code(&code).is_some(), modeled);
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
