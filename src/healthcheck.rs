//! `cognito-facade healthcheck`: one grpc.health.v1 Check against a running
//! server, for container HEALTHCHECKs that have no other probe binary.

use tonic::transport::Endpoint;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::config::HealthcheckArgs;

/// Why the check could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum HealthcheckError {
    /// Connecting failed (nothing listening, refused, timed out).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address asked.
        addr: std::net::SocketAddr,
        /// Why.
        source: tonic::transport::Error,
    },
    /// The server answered the Check with an error status.
    #[error("Check failed: {0}")]
    Check(#[from] tonic::Status),
}

/// Asks `args.addr` for the status of `args.service`, within `args.timeout`.
pub async fn check(args: &HealthcheckArgs) -> Result<ServingStatus, HealthcheckError> {
    let timeout = *args.timeout;
    let channel = Endpoint::from_shared(format!("http://{}", args.addr))
        .map_err(|source| HealthcheckError::Connect {
            addr: args.addr,
            source,
        })?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .map_err(|source| HealthcheckError::Connect {
            addr: args.addr,
            source,
        })?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: args.service.clone(),
        })
        .await?;
    Ok(response.into_inner().status())
}
