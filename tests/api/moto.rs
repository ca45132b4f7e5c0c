//! Tokens from a real, independent token issuer: moto's Cognito in server
//! mode (PyPI `moto[server]`, pinned, installed into `target/` by this test
//! on first use and started on loopback). A pool, an app client and a user
//! are created, the user signs in with USER_PASSWORD_AUTH, and the tokens
//! moto returns meet the facade's local verification against moto's JWKS.
//! moto does not implement GetUserAuthFactors (it answers HTTP 500), so the
//! full success goes to the stand-in, which then publishes moto's keys.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use aws_sdk_cognitoidentityprovider::{
    Client,
    config::{BehaviorVersion, Credentials, Region},
    types::{AuthFlowType, ExplicitAuthFlowsType, MessageActionType},
};
use cognito_facade::config::TokenConfig;
use serde_json::Value;
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::{
    helpers::{KilledOnDrop, Reply, StandIn, python_venv, request, spawn_app_with, test_config},
    jwt::tamper,
};

/// The moto release the test pins.
const MOTO: &str = "moto[server]==5.2.5\n";
const REGION: &str = "us-east-1";

/// `moto_server` from a virtualenv under `target/`, made on first use.
fn moto_server() -> PathBuf {
    python_venv("moto-venv", MOTO).join("moto_server")
}

/// moto's server on a free loopback port; killed when dropped.
struct Moto {
    _child: KilledOnDrop,
    addr: SocketAddr,
}

impl Moto {
    fn start() -> Self {
        let server = moto_server();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = KilledOnDrop(
            Command::new(server)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "moto never listened on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            _child: child,
            addr,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// What a sign-in at moto produced.
struct SignedIn {
    pool: String,
    access_token: String,
    id_token: String,
}

/// Creates a pool, an app client and a confirmed user, and signs in.
async fn sign_in(moto: &Moto) -> SignedIn {
    let config = aws_sdk_cognitoidentityprovider::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(moto.endpoint())
        .credentials_provider(Credentials::new("testing", "testing", None, None, "moto"))
        .build();
    let cognito = Client::from_conf(config);
    let pool = cognito
        .create_user_pool()
        .pool_name("facade-test")
        .send()
        .await
        .unwrap()
        .user_pool
        .and_then(|p| p.id)
        .unwrap();
    let client_id = cognito
        .create_user_pool_client()
        .user_pool_id(&pool)
        .client_name("facade-test-app")
        .explicit_auth_flows(ExplicitAuthFlowsType::AllowUserPasswordAuth)
        .explicit_auth_flows(ExplicitAuthFlowsType::AllowRefreshTokenAuth)
        .send()
        .await
        .unwrap()
        .user_pool_client
        .and_then(|c| c.client_id)
        .unwrap();
    let (user, password) = ("moto-user", "Correct-Horse-9-Battery");
    cognito
        .admin_create_user()
        .user_pool_id(&pool)
        .username(user)
        .temporary_password("Temporary-Pass-1")
        .message_action(MessageActionType::Suppress)
        .send()
        .await
        .unwrap();
    cognito
        .admin_set_user_password()
        .user_pool_id(&pool)
        .username(user)
        .password(password)
        .permanent(true)
        .send()
        .await
        .unwrap();
    let result = cognito
        .initiate_auth()
        .auth_flow(AuthFlowType::UserPasswordAuth)
        .client_id(&client_id)
        .auth_parameters("USERNAME", user)
        .auth_parameters("PASSWORD", password)
        .send()
        .await
        .unwrap()
        .authentication_result
        .unwrap();
    SignedIn {
        pool,
        access_token: result.access_token.unwrap(),
        id_token: result.id_token.unwrap(),
    }
}

/// `GET path` from moto over HTTP/1.1; the JSON body.
async fn get_json(addr: SocketAddr, path: &str) -> Value {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    serde_json::from_str(response.split_once("\r\n\r\n").unwrap().1).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_a_real_issuer_verify_and_forgeries_do_not() {
    let moto = tokio::task::spawn_blocking(Moto::start).await.unwrap();
    let signed_in = sign_in(&moto).await;
    let pool = signed_in.pool.clone();
    let tokens = || TokenConfig {
        pools: vec![pool.parse().expect("moto's pool id is a pool id")],
        ..TokenConfig::default()
    };

    // 1. Everything at moto: the keys come from moto's own JWKS endpoint.
    let stand_in = StandIn::start().await;
    let mut config = test_config(&moto.endpoint());
    config.upstream.region = None;
    config.upstream.max_attempts = 1;
    config.tokens = tokens();
    let mut app = spawn_app_with(stand_in, config).await;
    let reason_of = |status: tonic::Status| {
        (
            status.code(),
            status.get_details_error_info().expect("ErrorInfo").reason,
        )
    };
    // The access token verifies locally: it reaches moto, which does not
    // implement GetUserAuthFactors.
    let status = app
        .client
        .get_user_auth_factors(request(&signed_in.access_token))
        .await
        .unwrap_err();
    let (code, reason) = reason_of(status);
    assert!(
        reason.starts_with("UPSTREAM_") || reason == "COGNITO_INTERNAL_ERROR",
        "verified locally, then moto's HTTP 500: {code:?} {reason}"
    );
    // The ID token of the same sign-in is not an access token.
    let status = app
        .client
        .get_user_auth_factors(request(&signed_in.id_token))
        .await
        .unwrap_err();
    assert_eq!(
        reason_of(status),
        (Code::Unauthenticated, "TOKEN_NOT_ACCESS".to_owned())
    );
    // One character of the payload changed: the signature fails.
    let status = app
        .client
        .get_user_auth_factors(request(&tamper(&signed_in.access_token)))
        .await
        .unwrap_err();
    assert_eq!(
        reason_of(status),
        (Code::Unauthenticated, "TOKEN_SIGNATURE_INVALID".to_owned())
    );
    app.shut_down();

    // 2. moto's keys, published by the stand-in, which answers the call.
    let moto_jwks = get_json(moto.addr, &format!("/{pool}/.well-known/jwks.json")).await;
    let stand_in = StandIn::start().await;
    stand_in.serve_jwks(Reply::Success(moto_jwks));
    let mut config = test_config(&stand_in.endpoint);
    config.upstream.region = None;
    config.tokens = tokens();
    let mut app = spawn_app_with(stand_in, config).await;
    let answer = app
        .client
        .get_user_auth_factors(request(&signed_in.access_token))
        .await
        .expect("moto's access token verifies and Cognito answers");
    assert_eq!(answer.into_inner().username, crate::helpers::USERNAME);
    for forged in [signed_in.id_token.clone(), tamper(&signed_in.access_token)] {
        app.client
            .get_user_auth_factors(request(&forged))
            .await
            .unwrap_err();
    }
    assert_eq!(
        app.stand_in.received().len(),
        1,
        "refused tokens never reach Cognito"
    );
    app.shut_down();
}
