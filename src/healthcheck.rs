//! `cognito-facade healthcheck`: one grpc.health.v1 Check against a running
//! server, for container HEALTHCHECKs that have no other probe binary.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use tonic::transport::Endpoint;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Default time to wait for the answer, connecting included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the check could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum HealthcheckError {
    /// Connecting failed (nothing listening, refused, timed out).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address asked.
        addr: SocketAddr,
        /// Why.
        source: tonic::transport::Error,
    },
    /// The server answered the Check with an error status.
    #[error("Check failed: {0}")]
    Check(#[from] tonic::Status),
}

/// Where to reach a server that listens on `listen_addr` from the same host:
/// an unspecified address (`0.0.0.0`, `[::]`) is reached on loopback.
pub fn probe_addr(listen_addr: SocketAddr) -> SocketAddr {
    let ip = match listen_addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen_addr.port())
}

/// Asks the server at `addr` for the status of `service` (`""` for the whole
/// server), within `timeout`.
pub async fn check(
    addr: SocketAddr,
    service: &str,
    timeout: Duration,
) -> Result<ServingStatus, HealthcheckError> {
    let connect_error = |source| HealthcheckError::Connect { addr, source };
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(connect_error)?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .map_err(connect_error)?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?;
    Ok(response.into_inner().status())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_addresses_are_probed_on_loopback() {
        let probe = |addr: &str| probe_addr(addr.parse().unwrap()).to_string();
        assert_eq!(probe("0.0.0.0:50551"), "127.0.0.1:50551");
        assert_eq!(probe("[::]:50551"), "[::1]:50551");
        assert_eq!(probe("127.0.0.2:7"), "127.0.0.2:7");
        assert_eq!(probe("[::1]:7"), "[::1]:7");
    }
}
