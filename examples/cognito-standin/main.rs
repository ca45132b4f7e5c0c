//! `cognito-standin`: a local Cognito user-pools stand-in for demos and for
//! the example clients, so a full round trip needs no AWS account.
//!
//! Every token gets a user with MFA and sign-in factors, except tokens that
//! start with one of these prefixes:
//! - `revoked.`: NotAuthorizedException ("Access Token has been revoked")
//! - `throttled.`: TooManyRequestsException ("Rate exceeded")
//! - `unknown.`: UserNotFoundException ("User does not exist.")
//! - `flaky.`: InternalErrorException (500) to the first 3 requests of each
//!   token (the service's 3 attempts, so its call fails), then the user
//! - `slow.`: the user, after 3 s
//!
//! AdminGetUserAuthFactors answers the same way by username, once the
//! request's SigV4 signature verifies under AWS's documented example key pair
//! (`AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE`,
//! `AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY`, in the
//! service's environment); otherwise it refuses it as AWS does.
//!
//! Usage: `cargo run --example cognito-standin -- [ADDR] [DELAY]` (default
//! `127.0.0.1:9229`, no delay; a DELAY such as `1s` holds every answer that
//! long); point the service at it with `--cognito-endpoint http://ADDR`.

// The tests use parts of the stand-in that this binary does not.
#[allow(dead_code)]
mod standin;

use std::{net::SocketAddr, time::Duration};

use standin::{Reply, StandIn};

const DEFAULT_ADDR: &str = "127.0.0.1:9229";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .as_deref()
        .unwrap_or(DEFAULT_ADDR)
        .parse()?;
    let stand_in = StandIn::start_on(addr).await?;
    if let Some(delay) = std::env::args().nth(2) {
        let delay = humantime::parse_duration(&delay)?;
        stand_in.always(Reply::Delay(delay, Box::new(Reply::full_success())));
    }
    stand_in.on_token_prefix("revoked.", Reply::revoked());
    stand_in.on_token_prefix(
        "throttled.",
        Reply::error(400, "TooManyRequestsException", "Rate exceeded"),
    );
    stand_in.on_token_prefix(
        "unknown.",
        Reply::error(400, "UserNotFoundException", "User does not exist."),
    );
    stand_in.first_of_token_prefix(
        "flaky.",
        3,
        Reply::error(500, "InternalErrorException", "Internal error"),
    );
    stand_in.on_token_prefix(
        "slow.",
        Reply::Delay(Duration::from_secs(3), Box::new(Reply::full_success())),
    );
    eprintln!("cognito-standin: listening on {}", stand_in.endpoint);
    tokio::signal::ctrl_c().await?;
    Ok(())
}
