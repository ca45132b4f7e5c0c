//! A Cognito user-pools stand-in on loopback that speaks the real wire
//! protocol (awsJson1.1: `X-Amz-Target`, `__type` error bodies,
//! `x-amzn-RequestId`), and checks AdminGetUserAuthFactors' SigV4 signature
//! with the AWS SDK's own signer, refusing a bad one as AWS does (`sigv4`).
//! Shared by the integration tests
//! (`tests/api/helpers.rs`) and the `cognito-standin` example binary; never
//! part of the release binary.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use tokio::net::TcpListener;

#[path = "sigv4.rs"]
pub(crate) mod sigv4;

/// The `X-Amz-Target` of GetUserAuthFactors.
pub(crate) const TARGET: &str = "AWSCognitoIdentityProviderService.GetUserAuthFactors";
/// The `X-Amz-Target` of AdminGetUserAuthFactors.
pub(crate) const ADMIN_TARGET: &str = "AWSCognitoIdentityProviderService.AdminGetUserAuthFactors";
/// The awsJson1.1 content type.
pub(crate) const AWS_JSON: &str = "application/x-amz-json-1.1";
/// The username the stand-in answers with by default.
pub(crate) const USERNAME: &str = "alice.example";

/// What the stand-in answers to one request.
#[derive(Debug, Clone)]
pub(crate) enum Reply {
    /// 200 with this JSON body.
    Success(Value),
    /// An awsJson1.1 error: status, `__type`, and the rest of the body.
    Error {
        status: u16,
        aws_type: String,
        body: Value,
    },
    /// An error named by the `x-amzn-ErrorType` header (`Code:namespace`),
    /// as some AWS front ends send it, with this JSON body.
    ErrorHeader {
        status: u16,
        error_type: &'static str,
        body: Value,
    },
    /// Any status, content type and body.
    Raw {
        status: u16,
        content_type: &'static str,
        body: String,
    },
    /// Waits, then answers.
    Delay(Duration, Box<Reply>),
}

impl Reply {
    /// A modeled error with a message.
    pub(crate) fn error(status: u16, aws_type: &str, message: &str) -> Self {
        Self::Error {
            status,
            aws_type: aws_type.to_owned(),
            body: json!({ "message": message }),
        }
    }

    /// Cognito's refusal of a revoked token.
    pub(crate) fn revoked() -> Self {
        Self::error(
            400,
            "NotAuthorizedException",
            "Access Token has been revoked",
        )
    }

    /// The usual success: a user with TOTP preferred and three factors.
    pub(crate) fn full_success() -> Self {
        Self::Success(json!({
            "Username": USERNAME,
            "PreferredMfaSetting": "SOFTWARE_TOKEN_MFA",
            "UserMFASettingList": ["SMS_MFA", "SOFTWARE_TOKEN_MFA", "EMAIL_OTP"],
            "ConfiguredUserAuthFactors": ["PASSWORD", "WEB_AUTHN", "SOFTWARE_TOKEN", "EMAIL_OTP", "SMS_OTP"],
        }))
    }
}

/// One request the stand-in received.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) target: Option<String>,
    pub(crate) content_type: Option<String>,
    pub(crate) authorization: Option<String>,
    pub(crate) body: Value,
    /// When it arrived.
    pub(crate) at: std::time::Instant,
}

#[derive(Debug)]
struct Shared {
    queue: VecDeque<Reply>,
    by_prefix: Vec<(String, Reply)>,
    /// Prefix, how many requests of each token it answers, the reply.
    first_by_prefix: Vec<(String, usize, Reply)>,
    /// Requests seen per token, for `first_by_prefix`.
    seen: HashMap<String, usize>,
    fallback: Reply,
    received: Vec<Received>,
    request_ids: u64,
    /// What `GET /<pool id>/.well-known/jwks.json` answers; 404 if unset.
    jwks: Option<Reply>,
    /// The paths of the JWKS requests received.
    jwks_requests: Vec<String>,
}

/// A Cognito stand-in on `127.0.0.1`: checks that requests are awsJson1.1
/// GetUserAuthFactors calls, records them, and answers from a queue of
/// replies, then a fallback.
#[derive(Debug, Clone)]
pub(crate) struct StandIn {
    pub(crate) endpoint: String,
    shared: Arc<Mutex<Shared>>,
}

impl StandIn {
    /// Starts on a free loopback port.
    pub(crate) async fn start() -> Self {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("binding a loopback port")
    }

    /// Starts on `addr`.
    pub(crate) async fn start_on(addr: SocketAddr) -> std::io::Result<Self> {
        let shared = Arc::new(Mutex::new(Shared {
            queue: VecDeque::new(),
            by_prefix: Vec::new(),
            first_by_prefix: Vec::new(),
            seen: HashMap::new(),
            fallback: Reply::full_success(),
            received: Vec::new(),
            request_ids: 0,
            jwks: None,
            jwks_requests: Vec::new(),
        }));
        let listener = TcpListener::bind(addr).await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let app = Router::new().fallback(handle).with_state(shared.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { endpoint, shared })
    }

    /// Answers tokens that start with `prefix` with `reply` (after the queue).
    pub(crate) fn on_token_prefix(&self, prefix: &str, reply: Reply) {
        let mut shared = self.shared.lock().unwrap();
        shared.by_prefix.push((prefix.to_owned(), reply));
    }

    /// Answers the first `count` requests of each token that starts with
    /// `prefix` with `reply` (after the queue); later ones as usual.
    pub(crate) fn first_of_token_prefix(&self, prefix: &str, count: usize, reply: Reply) {
        let mut shared = self.shared.lock().unwrap();
        shared
            .first_by_prefix
            .push((prefix.to_owned(), count, reply));
    }

    /// Answers every request (after the queue) with `reply`.
    pub(crate) fn always(&self, reply: Reply) {
        self.shared.lock().unwrap().fallback = reply;
    }

    /// Answers the next requests with `replies`, in order.
    pub(crate) fn then(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.lock().unwrap().queue.extend(replies);
    }

    /// Answers JWKS requests (`GET /<pool id>/.well-known/jwks.json`, as
    /// Cognito publishes them) with `reply`: `Reply::Success` holds the key
    /// set.
    pub(crate) fn serve_jwks(&self, reply: Reply) {
        self.shared.lock().unwrap().jwks = Some(reply);
    }

    /// The paths of the JWKS requests received so far.
    pub(crate) fn jwks_requests(&self) -> Vec<String> {
        self.shared.lock().unwrap().jwks_requests.clone()
    }

    /// Every request received so far.
    pub(crate) fn received(&self) -> Vec<Received> {
        self.shared.lock().unwrap().received.clone()
    }

    /// The request id of the `n`th response (1-based).
    pub(crate) fn request_id(n: u64) -> String {
        format!("{n:08x}-5ca1-4e00-8000-00000000c0de")
    }
}

async fn handle(
    State(shared): State<Arc<Mutex<Shared>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if method == Method::GET && uri.path().ends_with("/.well-known/jwks.json") {
        return jwks(&shared, &uri).await;
    }
    let received = Received {
        target: text("x-amz-target"),
        content_type: text("content-type"),
        authorization: text("authorization"),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        at: std::time::Instant::now(),
    };
    // IAM-authorised: AWS checks the signature before the operation runs,
    // and a refused request takes none of the replies set up for calls.
    let refused = (received.target.as_deref() == Some(ADMIN_TARGET))
        .then(|| sigv4::verify(&method, &uri, &headers, &body).err())
        .flatten();
    let well_formed = well_formed(&method, &uri, &received);
    let (reply, request_id) = next_reply(&mut shared.lock().unwrap(), received, refused);
    if !well_formed {
        let reply = Reply::error(
            400,
            "UnknownOperationException",
            "stand-in: not a GetUserAuthFactors or AdminGetUserAuthFactors call",
        );
        return respond(reply, &request_id).await;
    }
    respond(reply, &request_id).await
}

/// A pool's JWKS, as set (404 until one is).
async fn jwks(shared: &Mutex<Shared>, uri: &Uri) -> Response {
    let reply = {
        let mut shared = shared.lock().unwrap();
        shared.jwks_requests.push(uri.path().to_owned());
        shared.jwks.clone()
    };
    match reply {
        Some(reply) => respond(reply, "jwks").await,
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Whether the request is one real Cognito would take: a JSON POST to `/`
/// of either operation with its string members, so that a client that
/// drifts from the protocol fails the tests.
fn well_formed(method: &Method, uri: &Uri, received: &Received) -> bool {
    let is_string = |member: &str| received.body.get(member).is_some_and(Value::is_string);
    let posted = method == Method::POST
        && uri.path() == "/"
        && received.content_type.as_deref() == Some(AWS_JSON);
    posted
        && match received.target.as_deref() {
            Some(TARGET) => is_string("AccessToken"),
            Some(ADMIN_TARGET) => is_string("UserPoolId") && is_string("Username"),
            _ => false,
        }
}

/// Records `received` and picks its reply: a refusal of its signature, else
/// the next queued reply, a token's first replies, a prefix's reply, or the
/// fallback; with the request id it gets.
fn next_reply(shared: &mut Shared, received: Received, refused: Option<Reply>) -> (Reply, String) {
    shared.request_ids += 1;
    // A token's calls, or a named user's, by its username.
    let token = received.body["AccessToken"]
        .as_str()
        .or_else(|| received.body["Username"].as_str())
        .unwrap_or_default()
        .to_owned();
    shared.received.push(received);
    // Only the tokens a `first_of_token_prefix` names are counted.
    let first = shared
        .first_by_prefix
        .iter()
        .find(|(prefix, ..)| token.starts_with(prefix.as_str()))
        .map(|(_, count, reply)| (*count, reply.clone()));
    let first = first.and_then(|(count, reply)| {
        let seen = shared.seen.entry(token.clone()).or_default();
        *seen += 1;
        (*seen <= count).then_some(reply)
    });
    let by_prefix = shared
        .by_prefix
        .iter()
        .find(|(prefix, _)| token.starts_with(prefix.as_str()))
        .map(|(_, reply)| reply.clone());
    let reply = refused
        .or_else(|| shared.queue.pop_front())
        .or(first)
        .or(by_prefix)
        .unwrap_or_else(|| shared.fallback.clone());
    (reply, StandIn::request_id(shared.request_ids))
}

async fn respond(mut reply: Reply, request_id: &str) -> Response {
    while let Reply::Delay(delay, next) = reply {
        tokio::time::sleep(delay).await;
        reply = *next;
    }
    let mut error_type = None;
    let (status, content_type, body) = match reply {
        Reply::Success(body) => (200, AWS_JSON, body.to_string()),
        Reply::ErrorHeader {
            status,
            error_type: named,
            body,
        } => {
            error_type = Some(named);
            (status, AWS_JSON, body.to_string())
        }
        Reply::Error {
            status,
            aws_type,
            mut body,
        } => {
            body["__type"] = Value::String(aws_type);
            (status, AWS_JSON, body.to_string())
        }
        Reply::Raw {
            status,
            content_type,
            body,
        } => (status, content_type, body),
        Reply::Delay(..) => unreachable!("delays are unwrapped above"),
    };
    let mut response = (
        StatusCode::from_u16(status).unwrap(),
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (
                header::HeaderName::from_static("x-amzn-requestid"),
                request_id.to_owned(),
            ),
        ],
        body,
    )
        .into_response();
    if let Some(error_type) = error_type {
        response.headers_mut().insert(
            header::HeaderName::from_static("x-amzn-errortype"),
            header::HeaderValue::from_static(error_type),
        );
    }
    response
}
