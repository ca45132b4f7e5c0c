//! Envoy's external authorization, `envoy.service.auth.v3.Authorization/Check`,
//! on the same port as the RPC: a mesh (Envoy, or Istio with `action:
//! CUSTOM`) asks about each HTTP request, and the facade answers through the
//! very path `GetUserAuthFactors` takes (verification, the economy, the
//! fleet, the quota, stale answers), then applies the route's policy from
//! `context_extensions` (`requirement`).
//!
//! Cognito's verdict on the token is the caller's (denied 401); a policy not
//! met is denied 403; trouble reaching Cognito is never dressed as either: it
//! is a gRPC error, so the operator's `failure_mode_allow` and
//! `status_on_error` decide.

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
};

use metrics::Counter;

use envoy_types::{
    ext_authz::v3::{
        CheckResponseExt as _, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
        pb::{Authorization, CheckRequest, CheckResponse, HeaderAppendAction, HttpStatusCode},
    },
    pb::{envoy::service::auth::v3::attribute_context::HttpRequest, google::rpc},
};
use tonic::{Code, Request, Response, Status};

use super::{
    call::deadline,
    call::{CallContext, Decision},
    requirement::{Policy, Unmet, factor_name, mfa_name},
    service::{ExtAuthzConfig, FacadeService},
};
use crate::{
    base::metric_names,
    error::{Error, UpstreamErrorKind},
    proto::GetUserAuthFactorsResponse,
    token::{self, TokenError},
    upstream::Answer,
};

/// The upstream request headers an allowed request gets (any the client
/// sent are replaced or removed).
pub(crate) const MFA_HEADER: &str = "x-cognito-mfa";
pub(crate) const PREFERRED_MFA_HEADER: &str = "x-cognito-preferred-mfa";
pub(crate) const AUTH_FACTORS_HEADER: &str = "x-cognito-auth-factors";

/// The Authorization service over the facade's call path.
#[derive(Debug, Clone)]
pub(crate) struct ExtAuthz {
    service: FacadeService,
    config: Arc<ExtAuthzConfig>,
    /// The decisions' counters, by [`Decision::index`], each resolved from
    /// the recorder on its first use, not on every Check (a lookup builds
    /// and hashes a label set).
    decisions: Arc<[OnceLock<Counter>; Decision::ALL.len()]>,
}

impl ExtAuthz {
    pub(crate) fn new(service: FacadeService) -> Self {
        let config = Arc::clone(service.ext_authz());
        Self {
            service,
            config,
            decisions: Arc::new(std::array::from_fn(|_| OnceLock::new())),
        }
    }

    /// Counts `decision`.
    fn count(&self, decision: Decision) {
        let counter = || metrics::counter!(metric_names::EXT_AUTHZ_DECISIONS, "decision" => decision.as_str());
        match self.decisions.get(decision.index()) {
            Some(slot) => slot.get_or_init(counter).increment(1),
            // A decision left out of `Decision::ALL` (a unit test holds the
            // two together): counted the slow way, never a panic.
            None => counter().increment(1),
        }
    }

    /// The decision and Envoy's answer for one request.
    async fn decide(
        &self,
        request: &Request<CheckRequest>,
        context: &Arc<CallContext>,
    ) -> (Decision, Result<CheckResponse, Status>) {
        let attributes = request.get_ref().attributes.as_ref();
        // Envoy's source principal (the downstream's certificate, as Envoy
        // verified it) names the caller, when it is set.
        let principal = attributes
            .and_then(|a| a.source.as_ref())
            .map(|source| source.principal.as_str())
            .filter(|principal| !principal.is_empty());
        if let Some(principal) = principal {
            context.set_principal(self.service.callers().caller(Some(principal)));
        }
        let extensions = attributes.map(|a| &a.context_extensions);
        let policy = match Policy::from_extensions(extensions.unwrap_or(&HashMap::new())) {
            Ok(policy) => policy,
            Err(wrong) => {
                tracing::warn!(
                    error = %wrong,
                    "ext_authz: the route's context_extensions are wrong; denied 500"
                );
                // The detail is the operator's: in the log, not to the client.
                let body = serde_json::json!({"error": "configuration"});
                return (
                    Decision::DeniedConfiguration,
                    Ok(denied(HttpStatusCode::InternalServerError, &body, None)),
                );
            }
        };
        let http = attributes
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let token = http.map_or(Err(TokenError::Missing), authorization);
        let outcome = match token {
            Ok(token) => {
                let deadline = deadline(request, context.arrived());
                self.service.answer_for(token, deadline, context).await
            }
            Err(err) => Err(Error::Token(err)),
        };
        match outcome {
            Ok(answer) => {
                if let Some(id) = &answer.request_id {
                    context.set_request_id(id.clone());
                }
                self.allowed_or_not(&answer, &policy)
            }
            Err(err) => refused(err, context),
        }
    }

    fn allowed_or_not(
        &self,
        answer: &Answer,
        policy: &Policy,
    ) -> (Decision, Result<CheckResponse, Status>) {
        let user = &answer.response;
        match policy.check(user) {
            Ok(()) => (Decision::Allowed, Ok(self.allowed(user))),
            Err(unmet) => {
                let body = unmet_body(&unmet);
                (
                    Decision::DeniedPolicy,
                    Ok(denied(HttpStatusCode::Forbidden, &body, None)),
                )
            }
        }
    }

    /// OK, with the user's factors for the upstream (replacing whatever the
    /// client sent under those names).
    fn allowed(&self, user: &GetUserAuthFactorsResponse) -> CheckResponse {
        let mut ok = OkHttpResponseBuilder::new();
        let mut set = |name: &str, value: String| {
            if value.is_empty() {
                ok.remove_header(name);
            } else {
                ok.add_header(
                    name,
                    value,
                    Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                    false,
                );
            }
        };
        set(
            MFA_HEADER,
            cognito_names(&user.user_mfa_setting_list, mfa_name),
        );
        set(
            PREFERRED_MFA_HEADER,
            user.preferred_mfa_setting
                .map(mfa_name)
                .unwrap_or_default()
                .to_owned(),
        );
        set(
            AUTH_FACTORS_HEADER,
            cognito_names(&user.configured_user_auth_factors, factor_name),
        );
        if let Some(header) = &self.config.username_header {
            // Only a value that is a valid header value as it is; otherwise
            // none (and never the client's).
            let username = Some(user.username.as_str())
                .filter(|name| name.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
                .unwrap_or_default();
            set(header, username.to_owned());
        }
        if self.config.remove_authorization {
            ok.remove_header("authorization");
        }
        let mut response = CheckResponse::with_status(Status::ok(""));
        response.set_http_response(ok.build());
        response
    }
}

/// The token of the request's `authorization: Bearer <token>` header, from
/// `headers` or, with Envoy's `encode_raw_headers`, from `header_map`. More
/// than one `authorization` header is malformed.
fn authorization(http: &HttpRequest) -> Result<token::AccessToken, TokenError> {
    if let Some(value) = http.headers.get("authorization") {
        return bearer(value);
    }
    let mut values = http
        .header_map
        .iter()
        .flat_map(|map| &map.headers)
        .filter(|header| header.key.eq_ignore_ascii_case("authorization"))
        .map(|header| match header.value.as_str() {
            "" => std::str::from_utf8(&header.raw_value).ok(),
            value => Some(value),
        });
    match (values.next(), values.next()) {
        (None, _) => Err(TokenError::Missing),
        (Some(Some(value)), None) => bearer(value),
        _ => Err(TokenError::MalformedAuthorization),
    }
}

/// The token of an `authorization: Bearer <token>` value, checked as the
/// RPC checks its own.
fn bearer(value: &str) -> Result<token::AccessToken, TokenError> {
    token::from_authorization(value)
}

/// A refusal: 401 for what Cognito (or the facade's own checks) said about
/// the token; a gRPC error for everything else, so the mesh's
/// failure mode decides.
fn refused(err: Error, context: &CallContext) -> (Decision, Result<CheckResponse, Status>) {
    let challenge = match &err {
        Error::Token(TokenError::Missing) => Some("Bearer"),
        Error::Token(_) | Error::Refused(_) => Some(r#"Bearer error="invalid_token""#),
        Error::Upstream(up) => match up.kind {
            UpstreamErrorKind::NotAuthorized
            | UpstreamErrorKind::InvalidParameter
            | UpstreamErrorKind::ResourceNotFound
            | UpstreamErrorKind::UserNotFound
            | UpstreamErrorKind::UserNotConfirmed
            | UpstreamErrorKind::PasswordResetRequired => Some(r#"Bearer error="invalid_token""#),
            // Not the user's fault: the operator's, or Cognito's, or the
            // way to it. (`UserNotAuthorized` is AdminGetUserAuthFactors'
            // alone, which a Check never makes.)
            UpstreamErrorKind::UserNotAuthorized
            | UpstreamErrorKind::OperationNotEnabled
            | UpstreamErrorKind::TooManyRequests
            | UpstreamErrorKind::Forbidden
            | UpstreamErrorKind::InternalError
            | UpstreamErrorKind::Unmodeled
            | UpstreamErrorKind::Unavailable
            | UpstreamErrorKind::Unreachable
            | UpstreamErrorKind::Timeout
            | UpstreamErrorKind::BadResponse
            | UpstreamErrorKind::RequestConstruction
            | UpstreamErrorKind::RateLimited
            | UpstreamErrorKind::AccessDenied
            | UpstreamErrorKind::UnrecognizedClient
            | UpstreamErrorKind::InvalidSignature
            | UpstreamErrorKind::ExpiredToken
            | UpstreamErrorKind::MissingSignature
            | UpstreamErrorKind::CredentialsUnavailable
            | UpstreamErrorKind::CredentialsSourceFailed => None,
        },
        Error::Overloaded
        | Error::RequestTooLarge
        | Error::RequestBytesExhausted
        | Error::RequestBodyTimeout
        | Error::MalformedForwardedClientCert(_)
        | Error::CallerNotAllowed
        | Error::UserPoolNotAllowed
        | Error::InvalidUsername(_) => None,
    };
    let status = err.to_status();
    let reason = err.status().1;
    context.set_error(err);
    match challenge {
        Some(challenge) => {
            let body = serde_json::json!({"error": "unauthenticated", "reason": reason});
            (
                Decision::DeniedUnauthenticated,
                Ok(denied(HttpStatusCode::Unauthorized, &body, Some(challenge))),
            )
        }
        None => (Decision::Error, Err(status)),
    }
}

/// A denial with `code`, a JSON body and, for 401, `www-authenticate`.
fn denied(
    code: HttpStatusCode,
    body: &serde_json::Value,
    challenge: Option<&str>,
) -> CheckResponse {
    let mut denied = DeniedHttpResponseBuilder::new();
    denied.set_http_status(code);
    denied.add_header(
        "content-type",
        "application/json",
        Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
        false,
    );
    if let Some(challenge) = challenge {
        denied.add_header(
            "www-authenticate",
            challenge,
            Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
            false,
        );
    }
    denied.set_body(body.to_string());
    let grpc_code = match code {
        HttpStatusCode::Unauthorized => Code::Unauthenticated,
        HttpStatusCode::Forbidden => Code::PermissionDenied,
        _ => Code::Internal,
    };
    let mut response = CheckResponse {
        status: Some(rpc::Status {
            code: grpc_code as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    response.set_http_response(denied.build());
    response
}

/// The 403 body: which requirement failed.
fn unmet_body(unmet: &Unmet) -> serde_json::Value {
    match unmet {
        Unmet::Mfa(any_of) => serde_json::json!({
            "error": "mfa_required",
            "requirement": "cognito-facade.require",
            "any_of": any_of,
        }),
        Unmet::Factor(any_of) => serde_json::json!({
            "error": "factor_required",
            "requirement": "cognito-facade.require-factor",
            "any_of": any_of,
        }),
    }
}

/// `list`'s values by their Cognito names (`name`), comma-separated;
/// values this version does not know are left out.
fn cognito_names(list: &[i32], name: fn(i32) -> &'static str) -> String {
    let mut names = String::new();
    for name in list
        .iter()
        .map(|&value| name(value))
        .filter(|n| !n.is_empty())
    {
        if !names.is_empty() {
            names.push(',');
        }
        names.push_str(name);
    }
    names
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let context = CallContext::of(request.extensions());
        let (decision, answer) = self.decide(&request, &context).await;
        context.set_decision(decision);
        self.count(decision);
        answer.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};

    use super::*;

    fn raw(headers: &[(&str, &[u8])]) -> HttpRequest {
        HttpRequest {
            header_map: Some(HeaderMap {
                headers: headers
                    .iter()
                    .map(|(key, value)| HeaderValue {
                        key: (*key).to_owned(),
                        raw_value: value.to_vec(),
                        ..Default::default()
                    })
                    .collect(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_token_comes_from_headers_or_from_envoys_raw_header_map() {
        let mut http = HttpRequest::default();
        http.headers
            .insert("authorization".to_owned(), "Bearer abc.def".to_owned());
        assert_eq!(authorization(&http).unwrap().expose(), "abc.def");
        let http = raw(&[("authorization", b"Bearer abc.def")]);
        assert_eq!(authorization(&http).unwrap().expose(), "abc.def");
        assert!(matches!(authorization(&raw(&[])), Err(TokenError::Missing)));
        for wrong in [
            raw(&[
                ("authorization", b"Bearer a.b"),
                ("authorization", b"Bearer c.d"),
            ]),
            raw(&[("authorization", b"Bearer \xff")]),
            raw(&[("authorization", b"Basic dXNlcg==")]),
        ] {
            assert!(authorization(&wrong).is_err(), "{wrong:?}");
        }
    }
}
