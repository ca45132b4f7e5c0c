//! GetUserAuthFactors end to end: answers, both token paths, validation.

use cognito_facade::proto::{AuthFactorType, MfaType};
use serde_json::json;
use tonic::{Code, metadata::MetadataValue};
use tonic_types::StatusExt as _;

use crate::helpers::{AWS_JSON, Reply, StandIn, TARGET, TOKEN, USERNAME, request, spawn_app};

#[tokio::test]
async fn answers_with_every_field_and_the_request_id() {
    let mut app = spawn_app().await;
    let response = app
        .client
        .get_user_auth_factors(request(TOKEN))
        .await
        .unwrap();
    assert_eq!(
        response.metadata().get("x-amzn-requestid").unwrap(),
        StandIn::request_id(1).as_str()
    );
    let body = response.into_inner();
    assert_eq!(body.username, USERNAME);
    assert_eq!(body.preferred_mfa_setting(), MfaType::SoftwareTokenMfa);
    assert_eq!(
        body.user_mfa_setting_list().collect::<Vec<_>>(),
        [
            MfaType::SmsMfa,
            MfaType::SoftwareTokenMfa,
            MfaType::EmailOtp
        ]
    );
    assert_eq!(
        body.configured_user_auth_factors().collect::<Vec<_>>(),
        [
            AuthFactorType::Password,
            AuthFactorType::WebAuthn,
            AuthFactorType::SoftwareToken,
            AuthFactorType::EmailOtp,
            AuthFactorType::SmsOtp,
        ]
    );

    // What reached Cognito: one awsJson1.1 call, the token, no credentials.
    let received = app.stand_in.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].target.as_deref(), Some(TARGET));
    assert_eq!(received[0].content_type.as_deref(), Some(AWS_JSON));
    assert_eq!(received[0].body, json!({ "AccessToken": TOKEN }));
    assert_eq!(received[0].authorization, None, "noAuth: nothing is signed");
}

#[tokio::test]
async fn absent_optional_fields_stay_absent() {
    let mut app = spawn_app().await;
    app.stand_in
        .always(Reply::Success(json!({ "Username": USERNAME })));
    let body = app
        .client
        .get_user_auth_factors(request(TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(body.username, USERNAME);
    assert_eq!(body.preferred_mfa_setting, None);
    assert!(body.user_mfa_setting_list.is_empty());
    assert!(body.configured_user_auth_factors.is_empty());
}

#[tokio::test]
async fn unknown_fields_are_ignored_and_unknown_values_become_unspecified() {
    let mut app = spawn_app().await;
    app.stand_in.always(Reply::Success(json!({
        "Username": USERNAME,
        "PreferredMfaSetting": "PASSKEY_MFA",
        "UserMFASettingList": ["SMS_MFA", "PASSKEY_MFA"],
        "ConfiguredUserAuthFactors": ["PASSWORD", "QUANTUM_KEY"],
        "SomethingAddedLater": { "nested": [1, 2, 3] },
    })));
    let body = app
        .client
        .get_user_auth_factors(request(TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        body.preferred_mfa_setting,
        Some(MfaType::Unspecified as i32)
    );
    assert_eq!(
        body.user_mfa_setting_list().collect::<Vec<_>>(),
        [MfaType::SmsMfa, MfaType::Unspecified]
    );
    assert_eq!(
        body.configured_user_auth_factors().collect::<Vec<_>>(),
        [AuthFactorType::Password, AuthFactorType::Unspecified]
    );
}

#[tokio::test]
async fn takes_the_token_from_bearer_metadata() {
    let mut app = spawn_app().await;
    let mut req = request("");
    req.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let body = app
        .client
        .get_user_auth_factors(req)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(body.username, USERNAME);
    assert_eq!(
        app.stand_in.received()[0].body,
        json!({ "AccessToken": TOKEN })
    );
}

#[tokio::test]
async fn accepts_the_largest_valid_token_in_metadata() {
    let mut app = spawn_app().await;
    let token = "a".repeat(cognito_facade::test_support::MAX_TOKEN_BYTES);
    let mut req = request("");
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    app.client.get_user_auth_factors(req).await.unwrap();
    assert_eq!(
        app.stand_in.received()[0].body,
        json!({ "AccessToken": token })
    );
}

/// A request with `field` in `access_token` and `authorization: <value>`.
fn with_authorization(
    field: &str,
    value: &'static str,
) -> tonic::Request<cognito_facade::proto::GetUserAuthFactorsRequest> {
    let mut req = request(field);
    req.metadata_mut()
        .insert("authorization", MetadataValue::from_static(value));
    req
}

/// Sends `req`, checks it is refused with `code` and `reason` before any call
/// to Cognito, and returns the status.
async fn refused(
    req: tonic::Request<cognito_facade::proto::GetUserAuthFactorsRequest>,
    code: Code,
    reason: &str,
) -> tonic::Status {
    let mut app = spawn_app().await;
    let status = app.client.get_user_auth_factors(req).await.unwrap_err();
    assert!(
        app.stand_in.received().is_empty(),
        "validation happens before any upstream call"
    );
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(status.get_details_error_info().unwrap().reason, reason);
    status
}

/// The field a `BadRequest` detail blames.
fn violated_field(status: &tonic::Status) -> String {
    status.get_details_bad_request().unwrap().field_violations[0]
        .field
        .clone()
}

#[tokio::test]
async fn no_token_is_unauthenticated() {
    refused(request(""), Code::Unauthenticated, "MISSING_ACCESS_TOKEN").await;
}

#[tokio::test]
async fn two_different_tokens_are_invalid_argument() {
    let req = with_authorization(TOKEN, "Bearer someone.else");
    refused(req, Code::InvalidArgument, "CONFLICTING_ACCESS_TOKENS").await;
}

#[tokio::test]
async fn a_token_outside_the_pattern_is_invalid_argument_with_a_field_violation() {
    for token in [
        "not a token",
        "tok+en/==",
        "tok\u{1}en",
        "tok\ren",
        "tökén",
        "токен",
    ] {
        let status = refused(
            request(token),
            Code::InvalidArgument,
            "INVALID_ACCESS_TOKEN",
        )
        .await;
        assert_eq!(violated_field(&status), "access_token");
        assert!(
            !status.message().contains(token),
            "the message never quotes the token"
        );
    }
    let req = with_authorization("", "Bearer tok+en");
    let status = refused(req, Code::InvalidArgument, "INVALID_ACCESS_TOKEN").await;
    assert_eq!(violated_field(&status), "authorization");
}

#[tokio::test]
async fn a_token_over_16_kib_is_invalid_argument() {
    let token = "a".repeat(cognito_facade::test_support::MAX_TOKEN_BYTES + 1);
    let status = refused(
        request(&token),
        Code::InvalidArgument,
        "INVALID_ACCESS_TOKEN",
    )
    .await;
    assert!(status.message().contains("16384"), "{}", status.message());
}

#[tokio::test]
async fn authorization_that_is_not_bearer_is_invalid_argument() {
    let req = with_authorization("", "Basic dXNlcjpwYXNz");
    let status = refused(
        req,
        Code::InvalidArgument,
        "MALFORMED_AUTHORIZATION_METADATA",
    )
    .await;
    assert_eq!(violated_field(&status), "authorization");
}

#[tokio::test]
async fn an_oversize_message_is_refused_without_an_upstream_call() {
    let mut app = spawn_app().await;
    let huge = "a".repeat(cognito_facade::test_support::MAX_REQUEST_BYTES + 1);
    let status = app
        .client
        .get_user_auth_factors(request(&huge))
        .await
        .unwrap_err();
    // tonic's decoder refuses it before it is buffered; the answer is the
    // documented RESOURCE_EXHAUSTED.
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "REQUEST_TOO_LARGE"
    );
    assert!(app.stand_in.received().is_empty());
}
